"""What ``rabbit-serve classify`` reads and writes: the images under its arguments, one
record per image (JSON lines or CSV), and which images an output file already holds, for
``--resume``. Pure functions apart from :func:`collect`, which walks the file system.

Every image is written as one ``write`` of whole lines and flushed, so a run killed at
any moment leaves complete records and at most one partial last line, which
:func:`completed` finds and ``--resume`` cuts off before appending (in CSV the last
image's rows, as whole lines there do not prove a whole image).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from rabbit_serve.client_core import Classification, RabbitServeError

# What the service decodes (README: JPEG, PNG, WebP, GIF, BMP, TIFF).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
FORMATS = ("jsonl", "csv")
CSV_HEADER = ("path", "rank", "class_id", "label", "score", "status", "error")


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def collect(paths: Sequence[str], recursive: bool) -> list[str]:
    """The images to classify, each once, in a stable order: a file argument as given
    (whatever its suffix), a folder's image files sorted by name, its subfolders too
    with ``recursive``. A path that does not exist raises ``FileNotFoundError``."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found.extend(_walk(path, recursive))
        elif os.path.exists(path):
            found.append(path)
        else:
            raise FileNotFoundError(path)
    seen: set[str] = set()
    unique = []
    for path in found:
        key = os.path.normpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _walk(folder: str, recursive: bool) -> list[str]:
    if not recursive:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.is_file() and is_image(e.name))
        return [os.path.join(folder, name) for name in names]
    out: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        out.extend(os.path.join(root, name) for name in sorted(files) if is_image(name))
    return out


def record(
    path: str, result: Classification | None, error: RabbitServeError | None
) -> dict[str, Any]:
    """``{"path", "predictions": [...]}`` or ``{"path", "error": {"status", "message"}}``;
    ``status`` is None when there was no HTTP answer (unreadable file, no connection)."""
    if error is not None or result is None:
        status = error.status if error is not None else None
        message = error.message if error is not None else "no result"
        return {"path": path, "error": {"status": status, "message": message}}
    return {
        "path": path,
        "predictions": [p.model_dump() for p in result.predictions],
    }


def render(entry: dict[str, Any], fmt: str) -> str:
    """One image's lines in ``fmt``: a JSON line, or one CSV row per prediction (one
    row with ``status`` and ``error`` for a failure)."""
    if fmt == "jsonl":
        return orjson.dumps(entry).decode() + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if "error" in entry:
        error = entry["error"]
        status = "" if error["status"] is None else error["status"]
        writer.writerow([entry["path"], "", "", "", "", status, error["message"]])
    else:
        for rank, p in enumerate(entry["predictions"], start=1):
            writer.writerow([entry["path"], rank, p["class_id"], p["label"], p["score"], "", ""])
    return buffer.getvalue()


def header(fmt: str) -> str:
    if fmt == "jsonl":
        return ""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(CSV_HEADER)
    return buffer.getvalue()


@dataclass(frozen=True)
class Held:
    """What an output file holds: the paths it has a record for, how many of them are
    failures, and how many of its bytes are whole records (the rest is a line cut short
    by a kill, to be dropped)."""

    paths: frozenset[str]
    failed: int
    valid_bytes: int


def completed(data: bytes, fmt: str) -> Held:
    """Read an output file written by this tool (see :func:`render`)."""
    end = data.rfind(b"\n") + 1  # a last line without its newline was cut short
    if fmt == "csv":
        return _completed_csv(data[:end].decode())
    paths: set[str] = set()
    failed: set[str] = set()
    for line in data[:end].splitlines():
        if line.strip():
            entry = orjson.loads(line)
            paths.add(entry["path"])
            if "error" in entry:
                failed.add(entry["path"])
    return Held(frozenset(paths), len(failed), end)


def _csv_rows(text: str) -> Iterator[tuple[list[str], str]]:
    """Each CSV row with its exact text (a quoted field may span lines)."""
    pulled: list[str] = []

    def lines() -> Iterator[str]:
        # The reader pulls exactly the lines of each row, so what it pulled since the
        # last row is that row's text.
        for line in io.StringIO(text):
            pulled.append(line)
            yield line

    for row in csv.reader(lines()):
        raw = "".join(pulled)
        pulled.clear()
        yield row, raw


def _csv_failed(row: list[str]) -> bool:
    return bool(row[5] or row[6])


def _completed_csv(text: str) -> Held:
    """An image is several rows in CSV, so whole lines do not prove a whole image: the
    last image's rows are dropped and it is classified again (one image per resume)."""
    rows = _csv_rows(text)
    first = next(rows, None)
    if first is None:
        return Held(frozenset(), 0, 0)
    if tuple(first[0]) != CSV_HEADER:
        raise ValueError(f"not a rabbit-serve CSV: its header is {first[0]!r}")
    starts: dict[str, int] = {}  # where each image's first row begins, in characters
    failed: set[str] = set()
    last, offset = None, len(first[1])
    for row, raw in rows:
        if row and row[0] != last:
            last = row[0]
            starts[last] = offset
        if row and _csv_failed(row):
            failed.add(row[0])
        offset += len(raw)
    if last is None:
        return Held(frozenset(), 0, len(text.encode()))
    valid = len(text[: starts.pop(last)].encode())
    failed.discard(last)
    return Held(frozenset(starts), len(failed), valid)


def without_failures(data: bytes, fmt: str) -> bytes:
    """The whole records of an output file, less its failures: ``--retry-failed``
    rewrites the file with this, so those images are classified again, still once."""
    text = data[: data.rfind(b"\n") + 1].decode()
    if fmt == "jsonl":
        lines = text.splitlines(keepends=True)
        return "".join(x for x in lines if x.strip() and "error" not in orjson.loads(x)).encode()
    rows = list(_csv_rows(text))
    kept = [raw for i, (row, raw) in enumerate(rows) if i == 0 or not (row and _csv_failed(row))]
    return "".join(kept).encode()


def pending(paths: Iterable[str], held: Held) -> list[str]:
    """The paths still to do, in order."""
    return [p for p in paths if p not in held.paths]
