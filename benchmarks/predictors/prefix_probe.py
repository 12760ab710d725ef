"""How much better does the served model know its length after writing the first k tokens of its answer?

For training instructions whose greedy responses are in a label checkpoint (text kept), the prompt and the
first k response tokens go through SmolLM2 (teacher forcing); the hidden state of layer 20 at the last token
read is the feature, and the recipe's linear length-distribution probe is scored by 5-fold cross-validation on
the total greedy length. Responses of k tokens or fewer have finished by then: their length is known exactly.
Only the training instructions are read, never the held-out or served prompts.

    python benchmarks/predictors/prefix_probe.py --checkpoint outputs/label4/train-k4-0-999.partial/checkpoint.jsonl \
        --data outputs/bench/own-train --prefixes 0,4,8,16,32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np
import torch

LAYER = 20


def features_at(model, layers, sequences: list[list[int]], positions: list[int]) -> np.ndarray:
    from lengthpred.probe import StopForward

    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output) -> None:
        captured["state"] = output[0] if isinstance(output, tuple) else output
        raise StopForward

    handle = layers[LAYER - 1].register_forward_hook(keep)
    rows = []
    try:
        with torch.inference_mode():
            for ids, position in zip(sequences, positions, strict=True):
                with contextlib.suppress(StopForward):
                    model(input_ids=torch.tensor([ids[: position + 1]]), use_cache=False)
                rows.append(captured["state"][0, position].float().numpy())
    finally:
        handle.remove()
    return np.stack(rows)


def run(args: argparse.Namespace) -> None:
    from lengthpred.data import load_length_data
    from lengthpred.evaluate import compute_metrics
    from lengthpred.probe import ProbeConfig, _decoder_layers, fit_probe, quantile_points
    from seqsched.engines.api import encode_chat
    from seqsched.model_specs import shared_model

    torch.set_num_threads(args.threads)
    with open(args.checkpoint) as lines:
        records = [json.loads(line) for line in lines]
    greedy = {record["id"]: record for record in records if record["temperature"] == 0.0}
    data = load_length_data(args.data)
    instructions = dict(zip(data.ids, data.prompts, strict=True))
    ids = [key for key in greedy if key in instructions][: args.limit]
    loaded = shared_model(ProbeConfig().model)
    tokenizer, layers = loaded.tokenizer, _decoder_layers(loaded.model)
    prompts, answers, lengths = [], [], []
    for key in ids:
        prompts.append(encode_chat(tokenizer, instructions[key]))
        answers.append(tokenizer(greedy[key]["text"], add_special_tokens=False)["input_ids"])
        lengths.append(greedy[key]["length"])
    y = np.array(lengths)
    config = ProbeConfig(
        layers=(LAYER,), seeds=1, hidden=0, dropout=0.1, bin_width=16, max_length=256, epochs=40, weight_decay=0.05
    )
    fold_of = np.random.default_rng(0).permutation(len(y)) % 5
    for k in args.prefixes:
        started = time.perf_counter()
        sequences = [p + a for p, a in zip(prompts, answers, strict=True)]
        positions = [len(p) - 1 + min(k, len(a)) for p, a in zip(prompts, answers, strict=True)]
        x = features_at(loaded.model, layers, sequences, positions)
        read_s = time.perf_counter() - started
        predicted = np.zeros(len(y), dtype=float)
        for fold in range(5):
            train_rows, test_rows = fold_of != fold, fold_of == fold
            head, _ = fit_probe(x[train_rows], y[train_rows].tolist(), config)
            with torch.inference_mode():
                probs = head(torch.from_numpy(x[test_rows])).softmax(dim=-1).numpy()
            predicted[test_rows] = quantile_points(probs, config)
        done = y <= k  # finished within the prefix: the length is known
        predicted[done] = y[done]
        predicted = np.maximum(predicted, np.minimum(k + 1, 256) * (~done))  # unfinished: longer than k
        metrics = compute_metrics(predicted.tolist(), y.tolist()).rounded()
        record = {
            "prefix_tokens": k,
            "instructions": len(y),
            "finished_within_prefix": int(done.sum()),
            **metrics,
            "read_s": round(read_s, 1),
        }
        print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True, help="a label run's checkpoint.jsonl with response texts")
    parser.add_argument("--data", required=True, help="the length dataset with the same ids (the prompts)")
    parser.add_argument("--prefixes", default="0,4,8,16,32")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.prefixes = [int(value) for value in args.prefixes.split(",")]
    run(args)


if __name__ == "__main__":
    main()
