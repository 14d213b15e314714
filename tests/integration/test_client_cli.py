"""The Python client and the ``rabbit-serve`` command against the running service: real
classifications, the errors each status becomes, and a bulk run killed with SIGKILL and
resumed, after which every image is in the output exactly once."""

from __future__ import annotations

import csv
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from PIL import Image

from rabbit_serve.client import (
    AsyncClient,
    Client,
    RequestRejected,
    RetryPolicy,
    TimedOut,
    Unauthorized,
    Unavailable,
)
from tests.images import CAT_CLASSES, ESPRESSO, IMAGES_DIR, sample
from tests.integration.conftest import CLOCK_SLACK_S, NOBROKER_API_KEYS, SLOW_SPELL_S

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FOLDER_IMAGES = 240  # half cats, half espresso


def cli(*args: str) -> list[str]:
    # The module rather than the console script: the test needs no reinstall of the venv.
    return [sys.executable, "-m", "rabbit_serve.cli", *args]


def clean_env() -> dict[str, str]:
    # The command reads its defaults from RABBIT_SERVE_URL / RABBIT_SERVE_API_KEY.
    return {k: v for k, v in os.environ.items() if not k.startswith("RABBIT_SERVE_")}


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=clean_env()
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """240 distinct JPEGs in two subfolders: the two sample photos at many sizes."""
    root = tmp_path_factory.mktemp("images")
    for name, photo in (("cat", "chelsea.jpg"), ("coffee", "coffee.jpg")):
        base = Image.open(IMAGES_DIR / photo).convert("RGB")
        (root / name).mkdir()
        for i in range(FOLDER_IMAGES // 2):
            width = 160 + 2 * i
            image = base.resize((width, width * base.height // base.width))
            image.save(root / name / f"{name}_{i:03d}.jpg", quality=85)
    return root


def expected_class_ok(path: str, class_id: int) -> bool:
    return class_id in CAT_CLASSES if "/cat/" in path else class_id == ESPRESSO


def test_classify_takes_a_path_bytes_or_a_pil_image(main_url):
    with Client(main_url) as client:
        by_path = client.classify(IMAGES_DIR / "chelsea.jpg", top_k=3)
        by_bytes = client.classify(sample("coffee.jpg"), top_k=1)
        by_pil = client.classify(Image.open(IMAGES_DIR / "chelsea.jpg"), top_k=2)
    assert by_path.predictions[0].class_id in CAT_CLASSES and len(by_path.predictions) == 3
    assert by_path.model == "efficientnet-lite0" and by_path.batch_size >= 1
    top = by_bytes.predictions[0]
    assert (top.class_id, top.label) == (ESPRESSO, "espresso") and 0.5 < top.score <= 1
    assert len(by_bytes.predictions) == 1
    assert by_pil.predictions[0].class_id in CAT_CLASSES and len(by_pil.predictions) == 2


def test_bad_input_is_a_rejection_with_the_services_reason(main_url):
    with Client(main_url) as client:
        with pytest.raises(RequestRejected, match="not an image") as caught:
            client.classify(b"not an image")
        assert caught.value.status == 422
        with pytest.raises(RequestRejected, match="top_k") as caught:
            client.classify(sample("coffee.jpg"), top_k=0)
        assert caught.value.status == 422
        with pytest.raises(FileNotFoundError):
            client.classify(IMAGES_DIR / "no-such-photo.jpg")


async def test_async_classify_many_keeps_order_and_reports_each_failure(main_url, folder):
    paths = sorted((folder / "cat").iterdir())[:10] + sorted((folder / "coffee").iterdir())[:10]
    images: list = [*paths, b"not an image", folder / "missing.jpg"]
    async with AsyncClient(main_url) as client:
        outcomes = await client.classify_many(images, top_k=1, concurrency=4)
    assert [o.index for o in outcomes] == list(range(len(images)))
    for outcome, path in zip(outcomes[: len(paths)], paths, strict=True):
        assert outcome.error is None, outcome.error
        assert expected_class_ok(str(path), outcome.result.predictions[0].class_id), path
    assert outcomes[-2].error.status == 422 and outcomes[-2].result is None
    assert outcomes[-1].error.status is None and "cannot read" in outcomes[-1].error.message


def test_sync_classify_many(main_url):
    with Client(main_url) as client:
        outcomes = client.classify_many([sample("coffee.jpg")] * 6, top_k=1, concurrency=3)
    assert [o.result.predictions[0].class_id for o in outcomes] == [ESPRESSO] * 6


def test_no_answer_within_timeout_is_timed_out(orphan_app):
    started = time.monotonic()
    with Client(orphan_app.url) as client, pytest.raises(TimedOut) as caught:
        client.classify(sample("coffee.jpg"))
    elapsed = time.monotonic() - started
    assert caught.value.status == 504 and "TIMEOUT" in caught.value.message
    timeout = orphan_app.settings.timeout
    assert timeout - CLOCK_SLACK_S <= elapsed <= timeout + SLOW_SPELL_S, elapsed


def test_keys_and_a_broker_that_is_gone(nobroker_app):
    with Client(nobroker_app.url) as client, pytest.raises(Unauthorized):
        client.classify(sample("coffee.jpg"))
    # A valid key meets the missing broker: 503, retried after Retry-After, then reported.
    retry = RetryPolicy(max_attempts=2, base_delay=0.1, max_delay=1.0)
    started = time.monotonic()
    with Client(nobroker_app.url, NOBROKER_API_KEYS[0], retry=retry) as client:
        with pytest.raises(Unavailable) as caught:
            client.classify(sample("coffee.jpg"))
    assert caught.value.status == 503
    assert time.monotonic() - started >= 0.8  # waited for Retry-After: 1 (less jitter)


def test_health_and_model_answer_in_one_line(main_url, nobroker_app):
    health = run_cli("health", "--url", main_url)
    assert (health.returncode, health.stdout) == (0, "ok\n"), health.stderr
    down = run_cli("health", "--url", nobroker_app.url)
    assert down.returncode == 1 and down.stdout.startswith("unavailable: ")
    assert len(down.stdout.splitlines()) == 1
    model = run_cli("model", "--url", main_url)
    assert model.returncode == 0, model.stderr
    assert model.stdout.startswith("efficientnet-lite0 classes=1000 provider=")
    assert len(model.stdout.splitlines()) == 1
    full = orjson.loads(run_cli("model", "--url", main_url, "--json").stdout)
    assert full["name"] == "efficientnet-lite0" and full["num_classes"] == 1000
    refused = run_cli("model", "--url", nobroker_app.url)
    assert refused.returncode == 1 and refused.stdout.startswith("error: 401")


def read_records(out: Path, fmt: str) -> list[dict]:
    """The output as JSON-lines records, whichever format it was written in; a CSV
    image's rows must be together, ranked 1, 2, 3..."""
    if fmt == "jsonl":
        return [orjson.loads(line) for line in out.read_text().splitlines()]
    records: list[dict] = []
    with out.open(newline="") as f:
        for row in csv.DictReader(f):
            if not records or records[-1]["path"] != row["path"]:
                records.append({"path": row["path"], "predictions": []})
            predictions = records[-1]["predictions"]
            assert row["status"] == "" and int(row["rank"]) == len(predictions) + 1, row
            predictions.append({"class_id": int(row["class_id"]), "label": row["label"]})
    return records


# What a write cut short by the kill would leave: part of one more record.
CUT_RECORD = {"jsonl": '{"path": "{folder}/cat/cat_0', "csv": "{folder}/cat/cat_000.jpg,2,28"}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_killed_run_resumes_and_writes_every_image_exactly_once(main_url, folder, tmp_path, fmt):
    out = tmp_path / f"results.{fmt}"
    args = ("classify", str(folder), "--recursive", "--url", main_url, "--top-k", "3")
    lines_per_image = 1 if fmt == "jsonl" else 3
    first = subprocess.Popen(
        cli(*args, "--out", str(out), "--concurrency", "4"),
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 40 * lines_per_image:
                break
            time.sleep(0.01)
        assert first.poll() is None, "the first run ended before it could be killed"
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    written = out.read_bytes().count(b"\n")
    assert 40 <= written // lines_per_image < FOLDER_IMAGES, written
    with out.open("a") as f:
        f.write(CUT_RECORD[fmt].replace("{folder}", str(folder)))
    resumed = run_cli(*args, "--out", str(out), "--resume", "--concurrency", "8")
    assert resumed.returncode == 0, resumed.stderr
    assert "skipped, already in the output" in resumed.stderr
    records = read_records(out, fmt)
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)) == FOLDER_IMAGES
    assert set(paths) == {str(p) for p in folder.rglob("*.jpg")}
    for record in records:
        predictions = record["predictions"]
        assert len(predictions) == 3
        assert expected_class_ok(record["path"], predictions[0]["class_id"]), record
    # Resuming a finished run changes nothing (CSV: its last image is done once more).
    before = out.read_bytes()
    again = run_cli(*args, "--out", str(out), "--resume")
    assert again.returncode == 0 and read_records(out, fmt) == records
    assert f"classified {0 if fmt == 'jsonl' else 1} images" in again.stderr
    if fmt == "jsonl":
        assert out.read_bytes() == before


def test_failures_are_recorded_counted_and_exit_non_zero(main_url, tmp_path):
    (tmp_path / "good.jpg").write_bytes(sample("coffee.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("not an image, and not picked up from a folder")
    out = tmp_path / "out.csv"
    result = run_cli(
        "classify", str(tmp_path), "--url", main_url, "--out", str(out), "--top-k", "2"
    )
    assert result.returncode == 1
    assert "1 ok, 1 failed" in result.stderr and "broken.jpg: 422" in result.stderr
    rows = out.read_text().splitlines()
    assert rows[0] == "path,rank,class_id,label,score,status,error"
    good = [r.split(",") for r in rows[1:] if r.startswith(f"{tmp_path}/good.jpg,")]
    assert [r[1] for r in good] == ["1", "2"]
    assert good[0][2:4] == [str(ESPRESSO), "espresso"]
    (broken,) = [r for r in rows[1:] if "broken.jpg" in r]
    assert broken.split(",")[5] == "422"
    # A plain --resume keeps the failure (exit 1 again); --retry-failed classifies it
    # again, and it is still in the output once.
    args = ("classify", str(tmp_path), "--url", main_url, "--out", str(out), "--top-k", "2")
    assert run_cli(*args, "--resume").returncode == 1
    (tmp_path / "broken.jpg").write_bytes(sample("chelsea.jpg"))
    fixed = run_cli(*args, "--resume", "--retry-failed")
    assert fixed.returncode == 0, fixed.stderr
    records = read_records(out, "csv")
    assert sorted(r["path"] for r in records) == [f"{tmp_path}/broken.jpg", f"{tmp_path}/good.jpg"]
    assert all(len(r["predictions"]) == 2 for r in records)


def test_records_go_to_stdout_without_out(main_url):
    result = run_cli("classify", str(IMAGES_DIR / "chelsea.jpg"), "--url", main_url, "--top-k", "1")
    assert result.returncode == 0, result.stderr
    (record,) = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert record["path"].endswith("chelsea.jpg")
    assert record["predictions"][0]["class_id"] in CAT_CLASSES


def test_a_terminal_gets_a_progress_bar_with_rate_and_eta(main_url, folder, tmp_path):
    # Standard error on a pseudo-terminal, as in an interactive shell.
    master, terminal = pty.openpty()
    run = subprocess.Popen(
        cli("classify", str(folder / "cat"), "--url", main_url, "--out", str(tmp_path / "o.jsonl")),
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert run.wait(timeout=120) == 0, shown
    text = shown.decode()
    assert "\r[" in text and "img/s" in text and "ETA" in text
    assert f"{FOLDER_IMAGES // 2}/{FOLDER_IMAGES // 2}" in text
    assert f"classified {FOLDER_IMAGES // 2} images: {FOLDER_IMAGES // 2} ok, 0 failed" in text
