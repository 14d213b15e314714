"""The table of docs/reliability.md from a run's FAULTS_REPORT (JSON lines).

FAULTS_REPORT=/tmp/faults.jsonl make test-faults
.venv/bin/python -m tests.faults.table /tmp/faults.jsonl
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

HEADER = (
    "| scenario | sent | answered by class | lost | duplicated | time to recover |\n"
    "|---|---:|---|---:|---:|---|"
)
# Per scenario, the figure that says how long recovery took, in order of preference.
RECOVERY_KEYS = (
    "recovery_s",
    "first_200_after_kill_s",
    "first_200_after_start_app_s",
    "serve_restarted_consumer_s",
)


def recovery(row: dict[str, Any]) -> str:
    for key in RECOVERY_KEYS:
        if key in row and row[key] is None:
            return "never"  # infinity, which JSON cannot hold
        value = row.get(key)
        if isinstance(value, (int, float)):
            return "never" if value == float("inf") else f"{value:g} s ({key})"
    return "n/a"


def line(row: dict[str, Any]) -> str:
    classes = ", ".join(f"{k}: {v}" for k, v in sorted((row.get("by_class") or {}).items()))
    lost = f"{row['lost']}"
    if row.get("accepted_tasks"):
        lost += f" + {row.get('lost_tasks', 0)}/{row['accepted_tasks']} webhook tasks"
    duplicated = f"{row.get('duplicated', 0)}"
    if row.get("duplicate_bound"):
        duplicated += f" (≤ {row['duplicate_bound']})"
    return (
        f"| {row['label']} | {row['sent']} | {classes} | {lost} | {duplicated} | {recovery(row)} |"
    )


def main(path: str) -> None:
    print(HEADER)
    with open(path, "rb") as rows:
        for raw in rows:
            row = orjson.loads(raw)
            if "sent" in row and "by_class" in row:
                print(line(row))


if __name__ == "__main__":
    main(sys.argv[1])
