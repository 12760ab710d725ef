"""Beyond the paper, measured on the tiny test model: continue-from-prefix recompute, a margin and bin width
chosen from validation errors, and VBS from the engine's measured step cost — each against the paper's FCR.

    python benchmarks/beyond_tiny.py --out benchmarks/serve/beyond_tiny

The tiny model (tests/tiny_model.py) answers "repeat apple 7 times" with seven words, so its lengths follow
the prompt. Lengths are scaled down from the paper's (limit 64 instead of 512, bins of 8 instead of 50).
Each config runs --repeats times (the median-time run is reported; the machine is shared).
Predictor: TF-IDF + ridge fitted on the tiny model's own greedy lengths of 600 training prompts; the margin
and VBS are tuned on 300 other prompts; every run serves the same 400 test prompts. Each row also shows the
simulator's predicted time (serving.simulate with the step cost measured here) next to the measured one.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_tools.io import Request  # noqa: E402
from serving.report import table  # noqa: E402
from serving.runner import RunResult, run  # noqa: E402
from serving.scheduler import RecomputeMode, ScheduleConfig, Strategy  # noqa: E402
from serving.simulate import simulate  # noqa: E402
from serving.tuning import tune_margin, tune_vbs  # noqa: E402

COLUMNS = [
    "run",
    "samples_per_s",
    "predicted_samples_per_s",
    "effective_token_ratio",
    "failure_ratio",
    "recompute_share",
    "row_steps",
    "total_s",
    "same_as_vanilla",
]


def requests_of(prompts: list[str], tag: str) -> list[Request]:
    return [Request(id=f"{tag}{index}", prompt=prompt) for index, prompt in enumerate(prompts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "serve" / "beyond_tiny")
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3, help="runs per config; the median-time run is reported")
    args = parser.parse_args()

    import torch
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    from serving.costmodel import fit, measure
    from serving.engine import HFEngine
    from tests.tiny_model import build_tiny_model, synthetic_prompts

    torch.set_num_threads(1)
    engine = HFEngine.from_spec(str(build_tiny_model()))
    base = ScheduleConfig(
        strategy=Strategy.FCR,
        limit=64,
        bin_width=8,
        batch_size=16,
        vbs={8: 128, 16: 64, 24: 32, 32: 16, 40: 16, 48: 16},
    )
    vanilla_cfg = replace(base, strategy=Strategy.VANILLA)

    def lengths(requests: list[Request]) -> list[int]:
        return [record.num_tokens for record in run(engine, requests, None, vanilla_cfg).records]

    train = requests_of(synthetic_prompts(600, seed=100), "train")
    tune = requests_of(synthetic_prompts(300, seed=200), "tune")
    test = requests_of(synthetic_prompts(args.test, seed=300), "test")
    model = make_pipeline(TfidfVectorizer(token_pattern=r"\w+"), Ridge(alpha=1.0))
    model.fit([r.prompt for r in train], lengths(train))

    def predict(requests: list[Request]) -> list[int]:
        return [max(0, round(float(value))) for value in model.predict([r.prompt for r in requests])]

    tune_true, tune_pred = lengths(tune), predict(tune)
    samples = measure(engine, batch_sizes=(1, 8, 32, 128), prompt_lengths=(16, 48), steps=12)
    cost = fit(samples)
    margin = tune_margin(tune_pred, tune_true, base, cost, bin_widths=(4, 8, 16), margin_tokens=(0, 2, 4, 8, 12))
    vbs = tune_vbs(tune_pred, tune_true, base, cost, sizes=(4, 8, 16, 32, 64, 128, 256))
    both = tune_vbs(tune_pred, tune_true, margin.config, cost, sizes=(4, 8, 16, 32, 64, 128, 256))

    test_pred = predict(test)
    vanilla = run(engine, test, None, vanilla_cfg)
    test_true = [record.num_tokens for record in vanilla.records]
    configs: list[tuple[str, ScheduleConfig, list[int] | None]] = [
        ("vanilla", vanilla_cfg, None),
        ("fcr (paper)", base, test_pred),
        ("fcr + continue", replace(base, recompute=RecomputeMode.CONTINUE), test_pred),
        ("fcr + tuned margin/bins", margin.config, test_pred),
        ("fcr + tuned vbs", vbs.config, test_pred),
        ("fcr + margin + vbs + continue", replace(both.config, recompute=RecomputeMode.CONTINUE), test_pred),
        ("fcr oracle", base, test_true),
    ]
    rows = []
    for name, cfg, predicted in configs:
        # The machine is shared: repeat each run and keep the median one (row-steps do not vary between repeats).
        repeats = [vanilla] if predicted is None else []
        repeats += [run(engine, test, predicted, cfg) for _ in range(args.repeats - len(repeats))]
        result: RunResult = sorted(repeats, key=lambda r: r.metrics.total_s)[len(repeats) // 2]
        simulated = simulate(predicted or [0] * len(test), test_true, cfg, cost, prompt_tokens=16).summary()
        same = sum(a.token_ids == b.token_ids for a, b in zip(result.records, vanilla.records, strict=True))
        rows.append(
            {
                "run": name,
                **result.metrics.row(),
                "predicted_samples_per_s": simulated["samples_per_s"],
                "same_as_vanilla": f"{same}/{len(test)}",
            }
        )
        print(table(rows, COLUMNS), flush=True)
    error = [p - t for p, t in zip(test_pred, test_true, strict=True)]
    document = {
        "command": " ".join(sys.argv),
        "model": "tests/tiny_model.py (2-layer Llama, 64 hidden), torch threads 1",
        "repeats": args.repeats,
        "base_config": {"limit": base.limit, "bin_width": base.bin_width, "vbs": base.vbs, "batch_size": 16},
        "predictor": "TF-IDF + ridge on 600 training prompts' greedy lengths",
        "predictor_mae_test": sum(abs(e) for e in error) / len(error),
        "predictor_under_rate_test": sum(e < 0 for e in error) / len(error),
        "step_cost": cost.__dict__,
        "tuned_margin": {
            "bin_width": margin.config.bin_width,
            "margin_tokens": margin.config.margin_tokens,
            "margin_ratio": margin.config.margin_ratio,
            "predicted_gain": margin.gain,
        },
        "tuned_vbs": {"vbs": vbs.config.vbs, "batch_size": vbs.config.batch_size, "predicted_gain": vbs.gain},
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(f"`{document['command']}`\n\n" + table(rows, COLUMNS) + "\n")


if __name__ == "__main__":
    main()
