"""Write a predictor's lengths for the shared validation records 0..1999 as a committed, lengths-only file (the
GPU replay bench's `oracle:FILE` predictor: 0..999 are served, 1000..1999 tune the policy), and score it.

    .venv/bin/python benchmarks/gpu/predict.py outputs/issue18/head-train10k/predictor \
        --out benchmarks/gpu/predictions-head-val-0-2000.jsonl

The file holds {id, predicted} only (no labels, no prompts); OUT.json beside it holds the scores on both slices
against the paper's greedy length (L_t0.0, what the replay serves) and against the max over its four samples
(what the predictor was trained on, the predictor tables' target).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from seqsched.files import write_json, write_jsonl
from seqsched.requests import read_requests

REPO = Path(__file__).resolve().parents[2]

SHARED = REPO.parent / "shared" / "data" / "sequence-scheduling"
SAMPLES = ("L_t0.0", "L_t0.3", "L_t0.5", "L_t0.7")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictor", type=Path, help="a saved predictor folder (seqsched train's output_dir/...)")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu" / "predictions-head-val-0-2000.jsonl")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from lengthpred.artifact import load_saved
    from lengthpred.evaluate import compute_metrics

    torch.set_num_threads(args.threads)
    requests = read_requests(args.shared / "alpaca-val-10k.json").requests[: args.records]
    lengths = {str(row["id"]): row for row in json.loads((args.shared / "alpaca-val-10k-length.json").read_text())}
    predictor = load_saved(args.predictor)
    started = time.perf_counter()
    predicted = [max(0, round(float(value))) for value in predictor.predict([r.prompt for r in requests])]
    seconds = time.perf_counter() - started
    write_jsonl(args.out, ({"id": r.id, "predicted": value} for r, value in zip(requests, predicted, strict=True)))
    scores = {}
    for name, (start, end) in {"served_0_1000": (0, 1000), "tune_1000_2000": (1000, 2000)}.items():
        part = range(start, min(end, len(requests)))
        guesses = [predicted[i] for i in part]
        greedy = [lengths[requests[i].id]["L_t0.0"] for i in part]
        longest = [max(lengths[requests[i].id][key] for key in SAMPLES) for i in part]
        scores[name] = {
            "vs_greedy_L_t0.0": compute_metrics(guesses, greedy).__dict__,
            "vs_max_of_4_samples": compute_metrics(guesses, longest).__dict__,
        }
    report = {
        "predictor": str(args.predictor),
        "records": len(requests),
        "predict_s": seconds,
        "file": str(args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out),
        "scores": scores,
    }
    write_json(args.out.with_suffix(".json"), report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
