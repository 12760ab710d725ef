"""Derive the GPU replay bench's inputs from the shared data, here (the GPU machine has no ../shared and fetches
nothing): prompts and the paper's Vicuna-7B greedy lengths for the served and the tuning slices, and a tokenizer
that travels. Everything goes to an ignored folder (default outputs/replay-inputs, ~4 MB) that a device call
carries; nothing of the shared data enters git.

    .venv/bin/python benchmarks/gpu/prepare.py            # then: device run, carry [outputs/replay-inputs]

Writes OUT/val-prompts.jsonl ({id, prompt}, validation records 0..999), OUT/val-lengths.jsonl ({id, true}:
L_t0.0, the lengths replayed), OUT/tune-lengths.jsonl (records 1000..1999: the held-out set the policy is tuned
on), OUT/tokenizer/ (SmolLM2's tokenizer files and config.json: prompt token counts; the vicuna-7b preset
applies Vicuna's conversation format) and OUT/manifest.json (what was derived from what).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from seqsched.files import write_json, write_jsonl
from seqsched.requests import read_requests

REPO = Path(__file__).resolve().parents[2]

SHARED = REPO.parent / "shared" / "data" / "sequence-scheduling"
LENGTH_FIELD = "L_t0.0"
"""The paper's greedy (temperature 0) Vicuna-7B response length, in LLaMA tokens."""
TOKENIZER_FILES = ("tokenizer.json", "chat_template.jinja", "config.json")


def copy_tokenizer(target: Path) -> dict[str, object]:
    """SmolLM2's tokenizer from the converted cache (converted once if needed), without the weights."""
    from seqsched.model_specs import resolve_model_path

    source = Path(resolve_model_path("smollm2"))
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, target / name)
    settings = json.loads((source / "tokenizer_config.json").read_text())
    # The class name every transformers 5.x resolves; drop the loader's bookkeeping fields.
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("backend", "is_local", "local_files_only"):
        settings.pop(key, None)
    write_json(target / "tokenizer_config.json", settings)
    return {"source": str(source), "files": sorted(path.name for path in target.iterdir())}


def token_ratio(tokenizer_dir: Path, references: list[tuple[str, int]]) -> float:
    """SmolLM2 tokens per LLaMA token, on reference answers whose LLaMA length the shared data gives (L_gt)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ours = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text, _ in references)
    return ours / max(1, sum(llama for _, llama in references))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared sequence-scheduling data folder")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "replay-inputs")
    parser.add_argument("--served", type=int, default=1000, help="validation records 0..N-1 are served")
    parser.add_argument("--tune", type=int, default=1000, help="the next N records are the tuning set")
    args = parser.parse_args()

    requests = read_requests(args.shared / "alpaca-val-10k.json").requests
    lengths = {str(row["id"]): row for row in json.loads((args.shared / "alpaca-val-10k-length.json").read_text())}
    served = requests[: args.served]
    tune = requests[args.served : args.served + args.tune]
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "val-prompts.jsonl", ({"id": r.id, "prompt": r.prompt} for r in served))
    write_jsonl(args.out / "val-lengths.jsonl", ({"id": r.id, "true": lengths[r.id][LENGTH_FIELD]} for r in served))
    write_jsonl(args.out / "tune-lengths.jsonl", ({"id": r.id, "true": lengths[r.id][LENGTH_FIELD]} for r in tune))
    tokenizer = copy_tokenizer(args.out / "tokenizer")
    references = [(r.reference, lengths[r.id]["L_gt"]) for r in served if r.reference]
    ratio = token_ratio(args.out / "tokenizer", references)
    served_lengths = [lengths[r.id][LENGTH_FIELD] for r in served]
    first, last = args.served, args.served + len(tune) - 1
    manifest = {
        "shared": str(args.shared),
        "length_field": LENGTH_FIELD,
        "served": {"records": f"0..{len(served) - 1}", "first_id": served[0].id, "last_id": served[-1].id},
        "tune": {"records": f"{first}..{last}", "first_id": tune[0].id, "last_id": tune[-1].id},
        "served_length_mean": statistics.mean(served_lengths),
        "served_over_512": sum(value > 512 for value in served_lengths),
        "tokenizer": tokenizer,
        "smollm2_tokens_per_llama_token": round(ratio, 3),
    }
    write_json(args.out / "manifest.json", manifest)
    size = sum(path.stat().st_size for path in args.out.rglob("*") if path.is_file())
    print(json.dumps(manifest, indent=1))
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
