"""The progress bar and the plain lines of ``rabbit-serve classify``, on a fake clock."""

from __future__ import annotations

import io

import pytest

from rabbit_serve import cli_progress
from rabbit_serve.cli_progress import Progress, Rate


@pytest.mark.parametrize(
    "seconds,text",
    [(None, "?"), (float("inf"), "?"), (0, "0:00"), (61.4, "1:01"), (3723, "1:02:03")],
)
def test_duration(seconds, text):
    assert cli_progress.duration(seconds) == text


def test_the_bar_shows_count_percentage_rate_eta_and_failures():
    line = cli_progress.bar_line(done=120, total=200, failed=1, rate=40.0)
    assert line.startswith("[" + "#" * 14 + "." * 10 + "]")
    assert "120/200" in line and "60%" in line and "40.0 img/s" in line
    assert "ETA 0:02" in line and line.endswith("1 failed")
    assert "failed" not in cli_progress.bar_line(1, 2, 0, 1.0)
    assert "ETA ?" in cli_progress.bar_line(0, 10, 0, 0.0)


def test_rate_counts_only_the_recent_window():
    rate = Rate(window=10)
    for t in range(20):
        rate.add(float(t))  # one per second
    assert rate.per_second(19.0) == pytest.approx(1.1)  # 11 in the window of 10 s
    assert rate.per_second(25.0) == pytest.approx(0.5)  # 20..25 s: none finished
    assert rate.per_second(100.0) == 0.0  # stalled
    fresh = Rate(window=10)
    assert fresh.per_second(5.0) == 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_the_bar_redrawn_in_place():
    out, clock = io.StringIO(), Clock()
    progress = Progress(3, out, tty=True, clock=clock)
    for failed in (False, True, False):
        clock.now += 1
        progress.step(failed)
    text = out.getvalue()
    assert text.count("\r") == 3 and "\n" not in text and "3/3" in text
    summary = progress.finish(skipped=5)
    assert out.getvalue().endswith("\n")
    assert summary.startswith("classified 3 images: 2 ok, 1 failed, in 0:03")
    assert summary.endswith("5 skipped, already in the output")


def test_a_pipe_gets_a_plain_line_every_few_seconds_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    progress = Progress(100, out, tty=False, clock=clock)
    for _ in range(100):
        clock.now += 0.5  # 50 s in all: a line at the first image, then every 5 s
        progress.step(False)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("100/100 images, 0 failed")
