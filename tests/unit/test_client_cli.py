"""``rabbit-serve``'s usage errors, answered before any request is sent (exit status 2)."""

from __future__ import annotations

import pytest

from rabbit_serve import cli


def test_resume_needs_an_output_file(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert cli.main(["classify", str(tmp_path), "--resume"]) == cli.USAGE
    assert "--resume needs --out" in capsys.readouterr().err


def test_an_existing_output_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"x")
    out = tmp_path / "out.jsonl"
    out.write_text('{"path": "a.jpg", "predictions": []}\n')
    assert cli.main(["classify", str(tmp_path), "--out", str(out)]) == cli.USAGE
    assert "pass --resume" in capsys.readouterr().err
    assert out.read_text() == '{"path": "a.jpg", "predictions": []}\n'


def test_a_missing_path_is_refused_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    code = cli.main(["classify", str(tmp_path / "nope"), "--out", str(out)])
    assert code == cli.USAGE and not out.exists()
    assert "no such file or folder" in capsys.readouterr().err


def test_a_foreign_csv_is_not_resumed(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"x")
    out = tmp_path / "out.csv"
    out.write_text("name,value\n")
    assert cli.main(["classify", str(tmp_path), "--out", str(out), "--resume"]) == cli.USAGE
    assert "not csv written by rabbit-serve" in capsys.readouterr().err
    assert out.read_text() == "name,value\n"


@pytest.mark.parametrize("value", ["0", "-3"])
def test_concurrency_must_be_positive(tmp_path, value, capsys):
    assert cli.main(["classify", str(tmp_path), "--concurrency", value]) == cli.USAGE
    assert "--concurrency" in capsys.readouterr().err


def test_the_format_follows_the_output_name_unless_given():
    parse = cli.parser().parse_args
    assert cli.output_format(parse(["classify", "x", "--out", "r.CSV"])) == "csv"
    assert cli.output_format(parse(["classify", "x", "--out", "r.jsonl"])) == "jsonl"
    assert cli.output_format(parse(["classify", "x"])) == "jsonl"
    assert cli.output_format(parse(["classify", "x", "--out", "r.csv", "--format", "jsonl"])) == (
        "jsonl"
    )


def test_health_and_model_say_unreachable_in_one_line(capsys):
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    assert cli.main(["health", "--url", "http://127.0.0.1:1"]) == cli.FAILED
    assert cli.main(["model", "--url", "http://127.0.0.1:1"]) == cli.FAILED
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("unreachable: cannot reach") and lines[1].startswith("error: ")


def test_retry_failed_goes_with_resume(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert cli.main(["classify", str(tmp_path), "--out", str(out), "--retry-failed"]) == 2
    assert "--retry-failed goes with --resume" in capsys.readouterr().err
