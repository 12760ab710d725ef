"""Compare two `seqsched bench` reports row by row: a real-model run and its length replay (or any two runs).

    .venv/bin/python benchmarks/replay/compare.py outputs/replay-check/real.json outputs/replay-check/replay.json

Prints, per row both have: samples/s of each, their ratio, and whether the work was the same (batches, row-steps,
generated tokens: a faithful replay runs exactly the real run's batches). Exit 0 when every ratio is within
--tolerance (default 10%) and the work is the same, else 1. --out FILE.md also writes the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seqsched.tables import table

SAME_WORK = ("batches", "row_steps", "generated_tokens")


def compare(real: dict, replay: dict, tolerance: float) -> tuple[list[dict], bool]:
    """One row per table row both reports have; ok when all are within tolerance and did the same work."""
    replayed = {row["strategy"]: row for row in replay["table"]}
    rows, ok = [], True
    for row in real["table"]:
        other = replayed.get(row["strategy"])
        if other is None:
            continue
        ratio = other["samples_per_s"] / row["samples_per_s"] if row["samples_per_s"] else float("nan")
        same = all(row[key] == other[key] for key in SAME_WORK)
        within = abs(ratio - 1) <= tolerance
        ok = ok and same and within
        rows.append(
            {
                "strategy": row["strategy"],
                "real_samples_per_s": row["samples_per_s"],
                "replay_samples_per_s": other["samples_per_s"],
                "replay_over_real": ratio,
                "within": "yes" if within else "NO",
                "real_total_s": row["total_s"],
                "replay_total_s": other["total_s"],
                "same_work": "yes" if same else f"NO ({', '.join(f'{k} {row[k]}/{other[k]}' for k in SAME_WORK)})",
            }
        )
    return rows, ok and bool(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real", type=Path)
    parser.add_argument("replay", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    real, replay = (json.loads(path.read_text()) for path in (args.real, args.replay))
    rows, ok = compare(real, replay, args.tolerance)
    text = (
        f"real: {real.get('command')} ({real.get('machine')}, {real.get('prompts')} prompts)\n"
        f"replay: {replay.get('command')}\n\n{table(rows)}\n\n"
        f"{'PASS' if ok else 'FAIL'}: every row within {args.tolerance:.0%} and the same work\n"
    )
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
