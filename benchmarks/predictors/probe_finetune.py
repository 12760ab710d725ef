"""Fine-tune SmolLM2's own top decoder layer as part of the probe, cheaply: only the last prompt token's output.

The states of every prompt token after decoder layer F are read once (frozen layers 1..F) and cached; the
trainable part is decoder layer F+1 computed for the last prompt token only (its query attends over all the
prompt's keys and values; the MLP runs on that one token), then a linear length-distribution head. Starting
from the pretrained layer, epoch 0 is exactly the frozen linear probe on layer F+1. Scored by 5-fold
cross-validation on the own *training* lengths; --held_out fits on all of them and scores the held-out set once.

    python benchmarks/predictors/probe_finetune.py dump --from_layer 19
    python benchmarks/predictors/probe_finetune.py cv --from_layer 19 [--held_out]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

CACHE = Path("outputs/probe-sweep")


_CAPTURED: dict[str, torch.Tensor] = {}


def _keep(_module, _inputs, output) -> None:
    from lengthpred.probe import StopForward

    _CAPTURED["state"] = output[0] if isinstance(output, tuple) else output
    raise StopForward


def dump(from_layer: int, train: str, held_out: str) -> None:
    from lengthpred.data import load_length_data
    from lengthpred.probe import ProbeConfig, ProbePredictor, StopForward, _decoder_layers
    from seqsched.model_specs import shared_model

    torch.set_num_threads(1)
    config = ProbeConfig(layers=(from_layer,))
    loaded = shared_model(config.model)
    predictor = ProbePredictor(head=None, config=config, model=loaded.model, tokenizer=loaded.tokenizer)
    layers = _decoder_layers(loaded.model)
    for name, path in (("train", train), ("held_out", held_out)):
        data = load_length_data(path)
        ids = predictor.prompt_ids(data.prompts)
        states: list[np.ndarray] = []
        handle = layers[from_layer - 1].register_forward_hook(_keep)
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                for row in ids:  # one prompt at a time: no padding in the cached states
                    with contextlib.suppress(StopForward):
                        loaded.model(input_ids=torch.tensor([row]), use_cache=False)
                    states.append(_CAPTURED["state"][0].numpy().astype(np.float16))
        finally:
            handle.remove()
        offsets = np.cumsum([0] + [len(s) for s in states])
        np.savez(
            CACHE / f"seq{from_layer}-{name}.npz",
            states=np.concatenate(states),
            offsets=offsets,
            greedy=np.array(data.greedy_lengths),
        )
        print(name, len(states), int(offsets[-1]), f"{time.perf_counter() - started:.1f} s", flush=True)


class LastTokenLayer(torch.nn.Module):
    """Decoder layer F+1 of the served model for the last prompt token only, then a linear length head."""

    def __init__(self, model, index: int, bins: int) -> None:
        super().__init__()
        from lengthpred.probe import _decoder_layers

        self.layer = copy.deepcopy(_decoder_layers(model)[index])
        self.rotary = model.model.rotary_emb
        cfg = model.config
        self.heads, self.kv_heads, self.dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.register_buffer("mean", torch.zeros(cfg.hidden_size))
        self.register_buffer("scale", torch.ones(cfg.hidden_size))
        self.head = torch.nn.Linear(cfg.hidden_size, bins)
        self.dropout = torch.nn.Dropout(0.1)

    def state(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import rotate_half

        layer, attn = self.layer, self.layer.self_attn
        batch, length, _ = h.shape
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cos, sin = self.rotary(h, position_ids=positions)
        x = layer.input_layernorm(h)
        q = attn.q_proj(x[:, -1:]).view(batch, 1, self.heads, self.dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, length, self.kv_heads, self.dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, length, self.kv_heads, self.dim).transpose(1, 2)
        q = q * cos[:, -1:].unsqueeze(1) + rotate_half(q) * sin[:, -1:].unsqueeze(1)
        k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.dim)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, self.heads * self.dim)
        r = h[:, -1] + attn.o_proj(out)
        return r + layer.mlp(layer.post_attention_layernorm(r))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout((self.state(h, mask) - self.mean) / self.scale))


def batch_of(states: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(int(offsets[r + 1] - offsets[r]) for r in rows)
    h = torch.zeros(len(rows), width, states.shape[1])
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for slot, r in enumerate(rows):
        seq = torch.from_numpy(states[offsets[r] : offsets[r + 1]].astype(np.float32))
        h[slot, width - len(seq) :] = seq
        mask[slot, width - len(seq) :] = 1
    return h, mask


def run_model(net, states, offsets, rows, size=64) -> np.ndarray:
    net.eval()
    order = sorted(rows, key=lambda r: offsets[r + 1] - offsets[r])
    out = {}
    with torch.inference_mode():
        for start in range(0, len(order), size):
            chunk = np.array(order[start : start + size])
            out.update(zip(chunk.tolist(), net(*batch_of(states, offsets, chunk)).softmax(-1).numpy(), strict=True))
    return np.stack([out[r] for r in rows])


def score(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    from lengthpred.evaluate import compute_metrics

    return compute_metrics(predicted.tolist(), true.tolist()).rounded(without=("count", "mean_true"))


def fit(model, index, states, offsets, y, train_rows, args, log=print):
    from lengthpred.probe import ProbeConfig, quantile_points, soft_targets

    config = ProbeConfig(bin_width=16, max_length=256, smoothing=1.0)
    bins = math.ceil(256 / 16) + 1
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(train_rows)
    held = int(len(order) * 0.1)
    stop_rows, fit_rows = order[:held], order[held:]
    net = LastTokenLayer(model, index, bins)
    with torch.inference_mode():  # standardise with the pretrained layer's outputs
        chunks = [fit_rows[start : start + 64] for start in range(0, len(fit_rows), 64)]
        values = torch.cat([net.state(*batch_of(states, offsets, chunk)) for chunk in chunks])
    net.mean.copy_(values.mean(0))
    net.scale.copy_(values.std(0).clamp(min=1e-4))
    targets = soft_targets(torch.tensor(y, dtype=torch.float32), config)
    head_opt = torch.optim.AdamW(net.head.parameters(), lr=1e-3, weight_decay=0.05)
    layer_opt = torch.optim.AdamW(net.layer.parameters(), lr=args.layer_lr, weight_decay=args.layer_wd)
    best = (math.inf, None, 0)
    for epoch in range(args.head_epochs + args.epochs):
        tune_layer = epoch >= args.head_epochs
        net.train()
        net.layer.requires_grad_(tune_layer)
        shuffled = rng.permutation(fit_rows)
        for start in range(0, len(shuffled), 32):
            rows = shuffled[start : start + 32]
            loss = -(targets[rows] * net(*batch_of(states, offsets, rows)).log_softmax(-1)).sum(-1).mean()
            head_opt.zero_grad()
            layer_opt.zero_grad()
            loss.backward()
            head_opt.step()
            if tune_layer:
                layer_opt.step()
        predicted = quantile_points(run_model(net, states, offsets, stop_rows), config)
        mae = float(np.abs(predicted - y[stop_rows]).mean())
        log(f"  epoch {epoch + 1} ({'layer+head' if tune_layer else 'head'}): stop MAE {mae:.2f}")
        if mae < best[0]:
            best = (mae, copy.deepcopy(net.state_dict()), epoch + 1)
    net.load_state_dict(best[1])
    return net, config, best[2]


def cv(args) -> None:
    from lengthpred.probe import ProbeConfig, quantile_points
    from seqsched.model_specs import shared_model

    torch.set_num_threads(args.threads)
    model = shared_model(ProbeConfig().model).model
    data = np.load(CACHE / f"seq{args.from_layer}-train.npz")
    states, offsets, y = data["states"], data["offsets"], data["greedy"]
    started = time.perf_counter()
    record = {
        "from_layer": args.from_layer,
        "trained_layer": args.from_layer + 1,
        "epochs": args.epochs,
        "head_epochs": args.head_epochs,
        "layer_lr": args.layer_lr,
        "layer_wd": args.layer_wd,
    }
    if args.folds:
        fold_of = np.random.default_rng(0).permutation(len(y)) % args.folds
        predicted = np.zeros(len(y))
        for fold in range(args.folds):
            test_rows = np.flatnonzero(fold_of == fold)
            net, config, best = fit(model, args.from_layer, states, offsets, y, np.flatnonzero(fold_of != fold), args)
            predicted[test_rows] = quantile_points(run_model(net, states, offsets, test_rows.tolist()), config)
            mae = np.abs(predicted[test_rows] - y[test_rows]).mean()
            print(f"fold {fold}: best epoch {best}, MAE {mae:.2f}", flush=True)
        record["cv"] = score(predicted, y)
    if args.held_out:
        test = np.load(CACHE / f"seq{args.from_layer}-held_out.npz")
        net, config, best = fit(model, args.from_layer, states, offsets, y, np.arange(len(y)), args)
        probs = run_model(net, test["states"], test["offsets"], list(range(len(test["greedy"]))))
        record["held_out"] = score(quantile_points(probs, config), test["greedy"])
        record["held_out_best_epoch"] = best
    record["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--from_layer", type=int, default=19)
    d.add_argument("--train", default="outputs/bench/own-train")
    d.add_argument("--held_out_data", default="outputs/bench/own-held-out")
    c = sub.add_parser("cv")
    c.add_argument("--from_layer", type=int, default=19)
    c.add_argument("--folds", type=int, default=5)
    c.add_argument("--epochs", type=int, default=6)
    c.add_argument("--head_epochs", type=int, default=10)
    c.add_argument("--layer_lr", type=float, default=1e-4)
    c.add_argument("--layer_wd", type=float, default=0.01)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--held_out", action="store_true")
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.from_layer, args.train, args.held_out_data)
    else:
        cv(args)


if __name__ == "__main__":
    main()
