"""The key ring: API_KEYS plus a key file that is re-read, off the event loop, as it changes."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from ingress import keys as keys_module
from ingress.keys import RELOAD_PERIOD_S, KeyRing, parse_keys


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_file_is_one_key_a_line_without_blanks_comments_or_repeats():
    text = "# rotated 2026-12\nnew-key\n\n  old-key  \r\nnew-key\n#off-key\n"
    assert parse_keys(text) == ("new-key", "old-key")
    assert parse_keys("") == ()


def test_keys_are_on_with_either_source_even_if_the_file_is_empty(tmp_path):
    empty = tmp_path / "keys"
    empty.write_text("")
    assert not KeyRing(()).enabled
    assert KeyRing(("a",)).enabled
    assert KeyRing((), str(empty)).enabled


async def test_the_file_is_re_read_once_a_period_and_static_keys_stay(tmp_path):
    path = tmp_path / "keys"
    path.write_text("old\n")
    clock = Clock()
    ring = KeyRing(("static",), str(path), clock=clock)
    assert await ring.current() == ("static", "old")
    path.write_text("new\n")
    clock.now = RELOAD_PERIOD_S - 0.01
    assert await ring.current() == ("static", "old")  # not looked at again yet
    clock.now = RELOAD_PERIOD_S
    assert await ring.current() == ("static", "new")


async def test_a_same_length_rewrite_is_seen_whatever_the_mtime(tmp_path):
    path = tmp_path / "keys"
    path.write_text("key-aaaa\n")
    clock = Clock()
    ring = KeyRing((), str(path), clock=clock)
    assert await ring.current() == ("key-aaaa",)
    stat = path.stat()
    path.write_text("key-bbbb\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as on a coarse-mtime fs
    clock.now = RELOAD_PERIOD_S
    assert await ring.current() == ("key-bbbb",)


async def test_a_missing_or_unreadable_file_holds_no_keys_and_says_so(tmp_path, caplog):
    path = tmp_path / "keys"
    path.write_text("k1\n")
    clock = Clock()
    ring = KeyRing(("static",), str(path), clock=clock)
    assert await ring.current() == ("static", "k1")
    path.unlink()  # deleting the file revokes its keys: fail closed
    clock.now = RELOAD_PERIOD_S
    with caplog.at_level("WARNING", logger="rabbit_serve.ingress"):
        assert await ring.current() == ("static",)
    assert "cannot be read" in caplog.text and "k1" not in caplog.text
    path.write_bytes(b"\xff\xfe not utf-8")
    clock.now = 2 * RELOAD_PERIOD_S
    assert await ring.current() == ("static",)
    path.write_text("k2\n")
    clock.now = 3 * RELOAD_PERIOD_S
    assert await ring.current() == ("static", "k2")


async def test_the_file_is_read_on_a_worker_thread_once_for_many_waiting_requests(
    tmp_path, monkeypatch
):
    path = tmp_path / "keys"
    path.write_text("k\n")
    reads: list[int] = []
    real = keys_module.parse_keys

    def spy(text: str) -> tuple[str, ...]:
        reads.append(threading.get_ident())
        return real(text)

    monkeypatch.setattr(keys_module, "parse_keys", spy)
    ring = KeyRing((), str(path))
    answers = await asyncio.gather(*[ring.current() for _ in range(50)])
    assert answers == [("k",)] * 50
    assert len(reads) == 1 and reads[0] != threading.get_ident()


@pytest.mark.parametrize("static", [(), ("s",)])
async def test_without_a_file_nothing_is_read(static):
    ring = KeyRing(static)
    assert await ring.current() == static
