"""Vanilla vs FCR vs oracle on real prompts with the real model, one process, one engine.

    python benchmarks/serve_compare.py --count 128 --out benchmarks/serve/smollm2_val128

Runs, in order: vanilla (input order, batch 16, limit 512); fcr with the oracle lengths (vanilla's own greedy
lengths from this run); fcr with a real predictor (default: a TF-IDF ridge fitted on the paper's *Vicuna*
train labels, the only labels we have now, so it predicts another model's lengths); optional more rows.
Writes <out>.json (every run's metrics, per-request lengths and predictions) after each run and <out>.md.
Greedy outputs of every scheduled run are compared with vanilla's, request by request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_tools.io import Request, read_requests  # noqa: E402
from data_tools.labels import label  # noqa: E402
from serving.report import table  # noqa: E402
from serving.runner import RunOptions, RunResult, run  # noqa: E402
from serving.scheduler import RecomputeMode, ScheduleConfig, Strategy  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "sequence-scheduling"
COLUMNS = [
    "run",
    "samples_per_s",
    "tokens_per_s",
    "effective_token_ratio",
    "failure_ratio",
    "recompute_share",
    "latency_p50_s",
    "latency_p99_s",
    "predictor_share",
    "total_s",
    "same_as_vanilla",
]


def paper_ridge(train_path: Path, length_path: Path):  # -> fitted sklearn pipeline
    """TF-IDF + ridge on the paper's train prompts -> its label (max of 4 Vicuna samples, rounded up to 50)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    prompts = {request.id: request.prompt for request in read_requests(train_path).requests}
    rows = json.loads(length_path.read_text())
    keys = ("L_t0.0", "L_t0.3", "L_t0.5", "L_t0.7")
    ids = [row["id"] for row in rows if row["id"] in prompts]
    targets = [label([row[key] for key in keys]) for row in rows if row["id"] in prompts]
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), Ridge(alpha=3.0))
    model.fit([prompts[key] for key in ids], targets)
    return model


def summary(name: str, result: RunResult, vanilla: RunResult | None) -> dict[str, object]:
    row: dict[str, object] = {"run": name, **result.metrics.row()}
    if vanilla is not None:
        same = sum(
            mine.token_ids == theirs.token_ids for mine, theirs in zip(result.records, vanilla.records, strict=True)
        )
        row["same_as_vanilla"] = f"{same}/{len(result.records)}"
    else:
        row["same_as_vanilla"] = "-"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--offset", type=int, default=0, help="skip this many validation prompts first")
    parser.add_argument("--limit", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see ../shared/ENVIRONMENT.md)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "serve" / "smollm2_val128")
    parser.add_argument(
        "--runs",
        default="vanilla,oracle,ridge",
        help="comma list of: vanilla, oracle, ridge, ridge-continue, oracle-continue, perception",
    )
    args = parser.parse_args()

    import torch

    from lengthpred.perception import PerceptionPredictor
    from serving.engine import HFEngine

    torch.set_num_threads(args.threads)
    requests: list[Request] = read_requests(SHARED / "alpaca-val-10k.json").requests[
        args.offset : args.offset + args.count
    ]
    engine = HFEngine.from_spec("smollm2")
    base = ScheduleConfig(limit=args.limit)
    options = RunOptions(progress=True)
    report: dict[str, object] = {
        "command": " ".join(sys.argv),
        "model": "smollm2 (SmolLM2-135M-Instruct fp32, CPU)",
        "torch_threads": args.threads,
        "prompts": f"alpaca-val-10k.json[{args.offset}:{args.offset + args.count}]",
        "config": {"limit": args.limit, "bin_width": base.bin_width, "batch_size": base.batch_size, "vbs": base.vbs},
        "runs": [],
        "lengths": {},
    }
    out_json, out_md = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    out_json.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out_json.write_text(json.dumps(report, indent=1) + "\n")
        out_md.write_text(
            f"`{report['command']}`\n\n{report['model']}, {report['prompts']}, limit {args.limit}, "
            f"torch threads {args.threads}\n\n" + table(report["runs"], COLUMNS) + "\n"  # type: ignore[arg-type]
        )

    vanilla = run(engine, requests, None, replace(base, strategy=Strategy.VANILLA), options)
    report["runs"].append(summary("vanilla", vanilla, None))  # type: ignore[union-attr]
    oracle = [record.num_tokens for record in vanilla.records]
    report["lengths"]["vanilla_greedy"] = oracle  # type: ignore[index]
    report["ids"] = [request.id for request in requests]
    save()
    print(table(report["runs"], COLUMNS), flush=True)  # type: ignore[arg-type]

    predictions: dict[str, tuple[list[int], float]] = {"oracle": (oracle, 0.0)}
    for name in args.runs.split(","):
        name = name.strip()
        if name == "vanilla" or not name:
            continue
        source = name.removesuffix("-continue")
        if source not in predictions:
            if source == "ridge":
                fit_started = time.perf_counter()
                model = paper_ridge(SHARED / "alpaca-train-10k.json", SHARED / "alpaca-train-10k-length.json")
                report["ridge_fit_s"] = time.perf_counter() - fit_started
                started = time.perf_counter()
                values = [max(0, round(float(v))) for v in model.predict([r.prompt for r in requests])]
                predictions[source] = (values, time.perf_counter() - started)
            elif source == "perception":
                predictor = PerceptionPredictor(engine)
                started = time.perf_counter()
                values = predictor.predict([r.prompt for r in requests])
                predictions[source] = (values, time.perf_counter() - started)
                report["perception_unparsed"] = predictor.unparsed
            else:
                raise SystemExit(f"unknown run {name!r}")
            report["lengths"][source] = predictions[source][0]  # type: ignore[index]
        values, predictor_s = predictions[source]
        mode = RecomputeMode.CONTINUE if name.endswith("-continue") else RecomputeMode.SCRATCH
        result = run(
            engine,
            requests,
            values,
            replace(base, strategy=Strategy.FCR, recompute=mode),
            options,
            predictor_s=predictor_s,
        )
        report["runs"].append(summary(f"fcr+{name}", result, vanilla))  # type: ignore[union-attr]
        save()
        print(table(report["runs"], COLUMNS), flush=True)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
