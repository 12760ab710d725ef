"""Sweep the probe's features and head by 5-fold cross-validation on the own *training* lengths only.

Reads SmolLM2's hidden states of every layer (last prompt token and prompt mean) once for the training set and
the held-out set into a cache, then scores feature/head variants by 5-fold CV on the training set (never on the
held-out set, which is scored once per chosen variant with --held_out).

    python benchmarks/predictors/probe_sweep.py dump --train outputs/bench/own-train \
        --held_out outputs/bench/own-held-out
    python benchmarks/predictors/probe_sweep.py cv --variants NAME[,NAME...] [--held_out]
    python benchmarks/predictors/probe_sweep.py curve --fractions 0.25,0.5,1.0
    python benchmarks/predictors/probe_sweep.py sampled --sampled outputs/label4/train-k4-0-999
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

CACHE = Path("outputs/probe-sweep")
THREADS = 1


def dump(train: str, held_out: str) -> None:
    import torch

    from lengthpred.data import load_length_data
    from lengthpred.probe import ProbeConfig, ProbePooling, ProbePredictor, read_features
    from seqsched.model_specs import shared_model

    torch.set_num_threads(2)
    config = ProbeConfig(layers=tuple(range(1, 31)), pooling=ProbePooling.BOTH, feature_batch_size=16)
    loaded = shared_model(config.model)
    predictor = ProbePredictor(head=None, config=config, model=loaded.model, tokenizer=loaded.tokenizer)
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    CACHE.mkdir(parents=True, exist_ok=True)
    for name, path in (("train", train), ("held_out", held_out)):
        data = load_length_data(path)
        ids = predictor.prompt_ids(data.prompts)
        started = time.perf_counter()
        features = read_features(loaded.model, ids, config, pad)
        print(name, features.shape, f"{time.perf_counter() - started:.1f} s")
        # (rows, layers, 2, 576): layer index 1..30, pooling last/mean
        features = features.reshape(len(ids), 30, 2, -1).astype(np.float16)
        np.savez(
            CACHE / f"{name}.npz",
            features=features,
            greedy=np.array(data.greedy_lengths),
            max_length=np.array(data.max_lengths),
            prompt_tokens=np.array([len(row) for row in ids]),
        )


def select(features: np.ndarray, layers: list[int], pooling: str) -> np.ndarray:
    parts = []
    for layer in layers:
        if pooling in ("last", "both"):
            parts.append(features[:, layer - 1, 0])
        if pooling in ("mean", "both"):
            parts.append(features[:, layer - 1, 1])
    return np.concatenate(parts, axis=1).astype(np.float32)


def score(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    from lengthpred.evaluate import compute_metrics

    return compute_metrics(predicted.tolist(), true.tolist()).rounded(without=("count", "mean_true"))


def fit_predict(x_train, y_train, x_test, variant: dict) -> np.ndarray:
    import torch

    from lengthpred.probe import ProbeCombine, ProbeConfig, fit_probe, quantile_points

    layers = variant["layers"]
    config = replace(
        ProbeConfig(),
        layers=tuple(layers),
        combine=ProbeCombine(variant.get("combine", "average")),
        seeds=variant.get("seeds", 2),
        hidden=variant.get("hidden", 0),
        dropout=variant.get("dropout", 0.1),
        bin_width=variant.get("bin_width", 16),
        max_length=256,
        smoothing=variant.get("smoothing", 1.0),
        epochs=variant.get("epochs", 40),
        learning_rate=variant.get("lr", 1e-3),
        weight_decay=variant.get("wd", 0.05),
    )
    torch.set_num_threads(THREADS)
    model, _ = fit_probe(x_train, y_train.tolist(), config)
    with torch.inference_mode():
        probs = model(torch.from_numpy(x_test)).softmax(dim=-1).numpy()
    return quantile_points(probs, config)


VARIANTS: dict[str, dict] = {
    "current": {"layers": [16, 18, 20]},
    "l12-20": {"layers": [12, 14, 16, 18, 20]},
    "l10-24": {"layers": [10, 13, 16, 19, 22, 24]},
    "l16-20-both": {"layers": [16, 18, 20], "pooling": "both"},
    "l16-20-mean": {"layers": [16, 18, 20], "pooling": "mean"},
    "l8-28": {"layers": [8, 12, 16, 20, 24, 28]},
    "current-mlp": {"layers": [16, 18, 20], "hidden": 256, "dropout": 0.2, "combine": "average"},
    "concat-mlp": {"layers": [12, 16, 20], "hidden": 256, "dropout": 0.3, "combine": "concat"},
    "current-s4": {"layers": [16, 18, 20], "seeds": 4},
    "current-bw8": {"layers": [16, 18, 20], "bin_width": 8},
    "current-wd0.2": {"layers": [16, 18, 20], "wd": 0.2},
}
# one layer at a time, one seed, the last prompt token / the prompt mean / both
for _layer in range(2, 31, 2):
    VARIANTS[f"layer{_layer}"] = {"layers": [_layer], "seeds": 1}
for _pooling in ("mean", "both"):
    VARIANTS[f"layer18-{_pooling}"] = {"layers": [18], "seeds": 1, "pooling": _pooling}


def cv(names: list[str], folds: int, held_out: bool) -> None:
    train = np.load(CACHE / "train.npz")
    features, y = train["features"], train["greedy"]
    test = np.load(CACHE / "held_out.npz") if held_out else None
    rng = np.random.default_rng(0)
    fold_of = rng.permutation(len(y)) % folds
    for name in names:
        variant = VARIANTS[name]
        x = select(features, variant["layers"], variant.get("pooling", "last"))
        started = time.perf_counter()
        predicted = np.zeros(len(y))
        for fold in range(folds):
            test_rows, train_rows = fold_of == fold, fold_of != fold
            predicted[test_rows] = fit_predict(x[train_rows], y[train_rows], x[test_rows], variant)
        record = {"variant": name, **variant, "cv": score(predicted, y)}
        record["cv_s"] = round(time.perf_counter() - started, 1)
        if test is not None:
            x_test = select(test["features"], variant["layers"], variant.get("pooling", "last"))
            record["held_out"] = score(fit_predict(x, y, x_test, variant), test["greedy"])
        print(json.dumps(record), flush=True)


def learning_curve(fractions: list[float], folds: int) -> None:
    """The recipe's probe (layers 16/18/20, last token, linear, one seed) on a share of each fold's training rows."""
    train = np.load(CACHE / "train.npz")
    variant = {"layers": [16, 18, 20], "seeds": 1}
    x, y = select(train["features"], variant["layers"], "last"), train["greedy"]
    fold_of = np.random.default_rng(0).permutation(len(y)) % folds
    for fraction in fractions:
        predicted = np.zeros(len(y))
        for fold in range(folds):
            rows = np.flatnonzero(fold_of != fold)
            rows = rows[: int(len(rows) * fraction)]
            predicted[fold_of == fold] = fit_predict(x[rows], y[rows], x[fold_of == fold], variant)
        record = {"fraction": fraction, "train_rows": int(len(y) * (folds - 1) / folds * fraction)}
        print(json.dumps({**record, "cv": score(predicted, y)}), flush=True)


def sampled_target(train_path: str, sampled_path: str, folds: int) -> None:
    """The recipe's probe on the instructions that have four samples each: the greedy length and the paper's
    label form (the max over greedy + temperatures 0.3/0.5/0.7) as targets, both cross-validated."""
    from lengthpred.data import load_length_data

    train = np.load(CACHE / "train.npz")
    order = {key: row for row, key in enumerate(load_length_data(train_path).ids)}
    sampled = load_length_data(sampled_path)
    rows = np.array([order[key] for key in sampled.ids])
    variant = {"layers": [16, 18, 20], "seeds": 1}
    x = select(train["features"], variant["layers"], "last")[rows]
    fold_of = np.random.default_rng(0).permutation(len(rows)) % folds
    for name, y in (("greedy_length", train["greedy"][rows]), ("max_length", np.array(sampled.max_lengths))):
        predicted = np.zeros(len(y))
        for fold in range(folds):
            test_rows = fold_of == fold
            predicted[test_rows] = fit_predict(x[~test_rows], y[~test_rows], x[test_rows], variant)
        print(json.dumps({"target": name, "instructions": len(y), "cv": score(predicted, y)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--train", required=True)
    d.add_argument("--held_out", required=True)
    c = sub.add_parser("cv")
    c.add_argument("--variants", default=",".join(VARIANTS))
    c.add_argument("--folds", type=int, default=5)
    c.add_argument("--held_out", action="store_true", help="also fit on all training rows and score the held-out set")
    curve = sub.add_parser("curve")
    curve.add_argument("--fractions", default="0.25,0.5,1.0")
    curve.add_argument("--folds", type=int, default=5)
    sampled = sub.add_parser("sampled")
    sampled.add_argument("--train", default="outputs/bench/own-train")
    sampled.add_argument("--sampled", required=True, help="a length dataset of the same instructions, K samples")
    sampled.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    if args.command == "sampled":
        sampled_target(args.train, args.sampled, args.folds)
    elif args.command == "dump":
        dump(args.train, args.held_out)
    elif args.command == "curve":
        learning_curve([float(value) for value in args.fractions.split(",")], args.folds)
    else:
        cv(args.variants.split(","), args.folds, args.held_out)


if __name__ == "__main__":
    main()
