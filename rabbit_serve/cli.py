"""The ``rabbit-serve`` command: ``classify`` a folder of images, ``health``, ``model``.

``classify`` sends every image through :class:`~rabbit_serve.client.AsyncClient` (the
same ``POST /v1/classify`` as any client), writes one record per image as it finishes
(see :mod:`rabbit_serve.cli_output`) and, with ``--resume``, skips the images the output
already holds, so a killed run continues where it stopped. Exit status: 0 when every
image has predictions, 1 when any failed, 2 for a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TextIO

import orjson

from rabbit_serve import cli_output
from rabbit_serve.cli_progress import Progress
from rabbit_serve.client import AsyncClient, Client, RabbitServeError

DEFAULT_URL = "http://127.0.0.1:8000"
# Failures listed by path in the summary; the output file has them all.
LISTED_FAILURES = 10
OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    pass


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("RABBIT_SERVE_URL", DEFAULT_URL),
        help="the service (default: $RABBIT_SERVE_URL or %(default)s)",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("RABBIT_SERVE_API_KEY"),
        help="API key, when the service has keys on (default: $RABBIT_SERVE_API_KEY)",
    )
    top = argparse.ArgumentParser(
        prog="rabbit-serve",
        description="Classify images with a rabbit-serve service; ask its health and model.",
    )
    commands = top.add_subparsers(dest="command", required=True)
    classify = commands.add_parser(
        "classify", parents=[common], help="classify images and folders of images"
    )
    classify.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    classify.add_argument("--top-k", type=int, default=None, help="predictions per image")
    classify.add_argument(
        "--concurrency", type=int, default=16, help="requests open at once (default 16)"
    )
    classify.add_argument("--out", help="output file (default: standard output)")
    classify.add_argument(
        "--format", choices=cli_output.FORMATS, help="jsonl (default; csv for --out *.csv)"
    )
    classify.add_argument(
        "--resume", action="store_true", help="skip the images --out already holds"
    )
    classify.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: classify the images that failed in --out again",
    )
    classify.add_argument("--recursive", "-r", action="store_true", help="walk subfolders")
    for name, text in (("health", "is the service ready"), ("model", "the model it serves")):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("--json", action="store_true", help="the full answer as JSON")
    return top


def output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    return "csv" if args.out and args.out.lower().endswith(".csv") else "jsonl"


def open_output(args: argparse.Namespace, fmt: str) -> tuple[TextIO, cli_output.Held]:
    """The stream to append records to, and what it already holds (for ``--resume``)."""
    empty = cli_output.Held(frozenset(), 0, 0)
    if args.out is None:
        if args.resume:
            raise UsageError("--resume needs --out: there is no file to resume")
        sys.stdout.write(cli_output.header(fmt))
        return sys.stdout, empty
    exists = os.path.exists(args.out) and os.path.getsize(args.out) > 0
    if exists and not args.resume:
        # Never overwrite a long run's results by forgetting a flag.
        raise UsageError(f"{args.out} exists: pass --resume to continue it, or remove it")
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed goes with --resume")
    held = empty
    if exists:
        with open(args.out, "rb") as f:
            data = f.read()
        try:
            held = cli_output.completed(data, fmt)  # also: is the file ours at all
            if args.retry_failed and held.failed:
                data = cli_output.without_failures(data, fmt)
                replace(args.out, data)
                held = cli_output.completed(data, fmt)
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{args.out} is not {fmt} written by rabbit-serve: {exc}") from exc
        # Drop a last line cut short by a kill before appending after it.
        os.truncate(args.out, held.valid_bytes)
    stream = open(args.out, "a", encoding="utf-8")  # closed by run_classify
    if held.valid_bytes == 0:
        stream.write(cli_output.header(fmt))
    return stream, held


def replace(path: str, data: bytes) -> None:
    """Write a copy, then rename it over ``path``: a kill leaves the old file or the new."""
    temporary = f"{path}.rewrite"
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


async def classify(
    args: argparse.Namespace, paths: list[str], stream: TextIO, held: cli_output.Held
) -> int:
    fmt = output_format(args)
    todo = cli_output.pending(paths, held)
    skipped = len(paths) - len(todo)
    progress = Progress(len(todo), sys.stderr, tty=sys.stderr.isatty())
    failures: list[str] = []  # the first LISTED_FAILURES, for the summary
    failed = 0
    async with AsyncClient(
        args.url, args.api_key, max_connections=max(1, args.concurrency)
    ) as client:
        outcomes = client.iter_classify(todo, args.top_k, concurrency=args.concurrency)
        async for outcome in outcomes:
            path = str(outcome.image)
            entry = cli_output.record(path, outcome.result, outcome.error)
            # One write of whole lines, flushed: a kill leaves complete records (plus at
            # most one partial line, cut on --resume). A few hundred bytes into the page
            # cache, so it stays on the loop rather than costing a thread hop per image.
            stream.write(cli_output.render(entry, fmt))
            stream.flush()
            if outcome.error is not None:
                failed += 1
                if len(failures) < LISTED_FAILURES:
                    failures.append(f"  {path}: {outcome.error}")
            progress.step(outcome.error is not None)
    print(progress.finish(skipped), file=sys.stderr)
    earlier = held.failed
    if failed or earlier:
        more = failed - len(failures)
        lines = ["failed:", *failures] + ([f"  ... and {more} more"] if more > 0 else [])
        if earlier:
            lines.append(f"  {earlier} failed in an earlier run (in {args.out})")
        print("\n".join(lines), file=sys.stderr)
        return FAILED
    return OK


def run_classify(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    try:
        paths = cli_output.collect(args.paths, args.recursive)
    except FileNotFoundError as exc:
        raise UsageError(f"no such file or folder: {exc}") from exc
    stream, held = open_output(args, output_format(args))
    try:
        return asyncio.run(classify(args, paths, stream, held))
    finally:
        if stream is not sys.stdout:
            stream.close()


def health(args: argparse.Namespace) -> int:
    """``ok``, or ``unavailable: <reason>`` / ``unreachable: <why>`` and exit status 1."""
    with Client(args.url, args.api_key, timeout=10) as client:
        try:
            answer = client.health()
        except RabbitServeError as exc:
            print(f"unreachable: {exc.message}")
            return FAILED
    if args.json:
        print(answer.model_dump_json(exclude_none=True))
    else:
        print("ok" if answer.status == "ok" else f"unavailable: {answer.reason}")
    return OK if answer.status == "ok" else FAILED


def model(args: argparse.Namespace) -> int:
    """``<name> classes=<n> provider=<p> sha256=<hex>``."""
    with Client(args.url, args.api_key, timeout=10) as client:
        try:
            info = client.model()
        except RabbitServeError as exc:
            print(f"error: {exc}")
            return FAILED
    if args.json:
        print(orjson.dumps(info.model_dump(mode="json")).decode())
    else:
        print(
            f"{info.name} classes={info.num_classes} provider={info.provider} sha256={info.sha256}"
        )
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {"classify": run_classify, "health": health, "model": model}
    try:
        return commands[args.command](args)
    except UsageError as exc:
        print(f"rabbit-serve: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("interrupted: rerun with --resume to continue", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
