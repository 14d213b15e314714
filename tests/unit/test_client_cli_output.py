"""What ``rabbit-serve classify`` walks, writes and resumes from: the pure bookkeeping."""

from __future__ import annotations

import csv
import io

import orjson
import pytest

from rabbit_serve import cli_output
from rabbit_serve.client_core import Classification, Prediction, RequestRejected, Unavailable

RESULT = Classification(
    id="r",
    model="m",
    predictions=[
        Prediction(class_id=967, label="espresso", score=0.9),
        Prediction(class_id=968, label="cup, mug", score=0.05),
    ],
    batch_size=1,
    timings_ms={},
)


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_collect_walks_folders_sorted_files_as_given_and_each_once(tmp_path):
    for name in ["b.jpg", "a.PNG", "notes.txt", "sub/c.webp", "sub/deeper/d.tiff"]:
        touch(tmp_path / name)
    top = str(tmp_path)
    given = touch(tmp_path / "other" / "raw.bin")
    flat = cli_output.collect([top, str(given), f"{top}/./b.jpg"], recursive=False)
    assert flat == [f"{top}/a.PNG", f"{top}/b.jpg", str(given)]
    deep = cli_output.collect([top], recursive=True)
    assert deep == [
        f"{top}/a.PNG",
        f"{top}/b.jpg",
        f"{top}/sub/c.webp",
        f"{top}/sub/deeper/d.tiff",
    ]


def test_collect_refuses_a_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli_output.collect([str(tmp_path / "missing")], recursive=False)


def test_records_carry_predictions_or_the_error():
    ok = cli_output.record("a.jpg", RESULT, None)
    assert ok == {
        "path": "a.jpg",
        "predictions": [
            {"class_id": 967, "label": "espresso", "score": 0.9},
            {"class_id": 968, "label": "cup, mug", "score": 0.05},
        ],
    }
    bad = cli_output.record("b.jpg", None, RequestRejected("not an image", 422))
    assert bad == {"path": "b.jpg", "error": {"status": 422, "message": "not an image"}}
    lost = cli_output.record("c.jpg", None, Unavailable("cannot reach x"))
    assert lost["error"] == {"status": None, "message": "cannot reach x"}


def test_jsonl_is_one_line_per_image():
    text = cli_output.render(cli_output.record("a\nb.jpg", RESULT, None), "jsonl")
    assert text.count("\n") == 1 and orjson.loads(text)["path"] == "a\nb.jpg"


def test_csv_is_one_row_per_prediction_and_one_per_failure():
    ok = cli_output.render(cli_output.record("a.jpg", RESULT, None), "csv")
    bad = cli_output.render(cli_output.record("b.jpg", None, RequestRejected("x, y", 422)), "csv")
    rows = list(csv.reader(io.StringIO(cli_output.header("csv") + ok + bad)))
    assert rows == [
        list(cli_output.CSV_HEADER),
        ["a.jpg", "1", "967", "espresso", "0.9", "", ""],
        ["a.jpg", "2", "968", "cup, mug", "0.05", "", ""],
        ["b.jpg", "", "", "", "", "422", "x, y"],
    ]


def three_images(fmt):
    return [
        cli_output.render(cli_output.record("a.jpg", RESULT, None), fmt),
        cli_output.render(cli_output.record("b.jpg", None, RequestRejected("bad", 422)), fmt),
        cli_output.render(cli_output.record("c.jpg", RESULT, None), fmt),
    ]


def test_jsonl_holds_every_whole_line_and_drops_a_cut_one():
    lines = three_images("jsonl")
    whole = "".join(lines).encode()
    held = cli_output.completed(whole, "jsonl")
    assert held.paths == {"a.jpg", "b.jpg", "c.jpg"} and held.failed == 1
    assert held.valid_bytes == len(whole)
    # Killed in the middle of the last write: c.jpg is not held, its part is cut.
    held = cli_output.completed(whole[:-7], "jsonl")
    assert held.paths == {"a.jpg", "b.jpg"} and held.failed == 1
    assert held.valid_bytes == len("".join(lines[:2]).encode())
    assert cli_output.pending(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], held) == ["c.jpg", "d.jpg"]


@pytest.mark.parametrize("cut", [0, 7, 40])
def test_csv_drops_the_last_images_rows_since_they_may_be_partial(cut):
    # c.jpg's two rows: cut inside the second, at the row boundary (only one of its two
    # rows left, all lines whole), or not at all. Each way c.jpg is done again.
    lines = three_images("csv")
    assert lines[2].count("\n") == 2
    whole = (cli_output.header("csv") + "".join(lines)).encode()
    second_row = len(lines[2].splitlines(keepends=True)[1].encode())
    data = whole[: len(whole) - (second_row if cut == 40 else cut)]
    held = cli_output.completed(data, "csv")
    assert held.paths == {"a.jpg", "b.jpg"} and held.failed == 1
    assert held.valid_bytes == len((cli_output.header("csv") + "".join(lines[:2])).encode())


def test_a_failure_last_in_a_csv_is_done_again_too():
    lines = three_images("csv")[:2]
    data = (cli_output.header("csv") + "".join(lines)).encode()
    held = cli_output.completed(data, "csv")
    assert held.paths == {"a.jpg"} and held.failed == 0


def test_completed_of_nothing_holds_nothing():
    for fmt in cli_output.FORMATS:
        assert cli_output.completed(b"", fmt) == cli_output.Held(frozenset(), 0, 0)
    # Only part of the CSV header survived: nothing valid, the header is written again.
    assert cli_output.completed(b"path,ra", "csv").valid_bytes == 0
    header = cli_output.header("csv").encode()
    assert cli_output.completed(header, "csv") == cli_output.Held(frozenset(), 0, len(header))


def test_a_csv_that_is_not_ours_is_refused():
    with pytest.raises(ValueError, match="header"):
        cli_output.completed(b"name,value\nx,1\n", "csv")


@pytest.mark.parametrize("fmt", cli_output.FORMATS)
def test_without_failures_keeps_every_result_and_drops_the_failures(fmt):
    a, b, c = three_images(fmt)
    cut = "partial"  # a line cut short goes too
    data = (cli_output.header(fmt) + a + b + c + cut).encode()
    assert cli_output.without_failures(data, fmt) == (cli_output.header(fmt) + a + c).encode()


def test_a_label_or_path_that_says_error_is_not_a_failure():
    entry = cli_output.record('error".jpg', RESULT, None)
    line = cli_output.render(entry, "jsonl")
    assert cli_output.without_failures(line.encode(), "jsonl") == line.encode()
