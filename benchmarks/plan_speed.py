"""How long `seqsched plan` takes on a large trace (the contract: 1,000,000 lines in well under 10 s).

    python benchmarks/plan_speed.py --lines 1000000 [--out benchmarks/serve/plan_speed.json]

Writes a synthetic trace (predicted and true lengths drawn like the paper's validation labels: a
log-normal around 100 tokens, true = predicted x noise), then times the CLI in a fresh process, end to end
(start-up, reading, planning, recompute, simulation, writing), and checks the plan against the contract.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_trace(path: Path, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(lines):
            predicted = min(1000, int(rng.lognormvariate(4.6, 0.8)))
            true = max(1, int(predicted * rng.lognormvariate(0.0, 0.35)))
            handle.write(f'{{"id": "r{index}", "predicted": {predicted}, "true": {true}}}\n')


def check(plan_path: Path, lines: int, limit: int) -> dict[str, int]:
    plan = json.loads(plan_path.read_text())
    initial = [batch for batch in plan["batches"] if batch["phase"] == "initial"]
    recompute = [batch for batch in plan["batches"] if batch["phase"] == "recompute"]
    ids = [i for batch in initial for i in batch["ids"]]
    assert len(ids) == len(set(ids)) == lines, "every request exactly once in the initial phase"
    for batch in plan["batches"]:
        assert len(batch["ids"]) == 1 or len(batch["ids"]) * batch["max_new_tokens"] <= 12800
        assert batch["max_new_tokens"] <= limit
    return {
        "initial_batches": len(initial),
        "recompute_batches": len(recompute),
        "recomputed": sum(len(batch["ids"]) for batch in recompute),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--strategy", default="fcr")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        trace, plan = Path(folder) / "trace.jsonl", Path(folder) / "plan.json"
        write_trace(trace, args.lines)
        command = [
            sys.executable,
            "-m",
            "seqsched_cli",
            "plan",
            "--lengths",
            str(trace),
            "--strategy",
            args.strategy,
            "--limit",
            "512",
            "--out",
            str(plan),
        ]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
        result = {
            "lines": args.lines,
            "strategy": args.strategy,
            "seconds": round(seconds, 2),
            "trace_mb": round(trace.stat().st_size / 2**20, 1),
            "plan_mb": round(plan.stat().st_size / 2**20, 1),
            **check(plan, args.lines, 512),
        }
    print(done.stdout.strip())
    print(json.dumps(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
