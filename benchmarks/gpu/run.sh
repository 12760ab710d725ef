#!/usr/bin/env bash
# The paper's table on one GPU by length replay (recipes/vicuna-7b-replay/bench.yaml): a random-weight Vicuna-7B-
# shaped model generates exactly the paper's Vicuna-7B greedy lengths; rows vanilla, fcr, fcr-oracle under the
# tuned policy and fcr, fcr-oracle under the paper's. Timing faithful, text not.
#
# Installs nothing and fetches nothing: it needs the repo, outputs/replay-inputs (made here, beforehand, by
# `.venv/bin/python benchmarks/gpu/prepare.py`) and a python with torch + transformers + pyyaml (the GPU image's
# python3). Writes $OUT/h200-replay.{json,md} (and .png where matplotlib is installed), $OUT/log.txt,
# $OUT/nvidia-smi.txt and $OUT/step-cost/*.json (the step-cost grid measured on the device).
#
#   device run:  command "bash benchmarks/gpu/run.sh", carry [outputs/replay-inputs], timeout_s 540
#   on a CPU:    OUT=outputs/gpu-replay BUDGET_S=120 bash benchmarks/gpu/run.sh model.random_init=smollm2 limit=64
#
# Extra arguments are recipe overrides (field=value, YAML values, dotted for nested: cost.contexts=2). BUDGET_S
# (default 420) sizes the prompt count: the bench measures the step-cost grid, then serves the most prompts whose
# rows the simulator fits into it; TIMEOUT_S (default 470) is the hard stop (the bench rewrites its files after
# every row, so a stopped run keeps finished rows).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/gpu-replay}
INPUTS=${INPUTS:-outputs/replay-inputs}
BUDGET_S=${BUDGET_S:-420}
TIMEOUT_S=${TIMEOUT_S:-470}
NAME=${NAME:-h200-replay}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUT"
for file in val-prompts.jsonl val-lengths.jsonl tune-lengths.jsonl tokenizer/tokenizer.json; do
  if [[ ! -f "$INPUTS/$file" ]]; then
    echo "run.sh: $INPUTS/$file is missing: run '.venv/bin/python benchmarks/gpu/prepare.py' here first and carry $INPUTS" >&2
    exit 2
  fi
done
(nvidia-smi 2>&1 || echo "no nvidia-smi") >"$OUT/nvidia-smi.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
started=$(date +%s)
timeout --signal=INT --kill-after=15 "$TIMEOUT_S" "$PYTHON" -m seqsched_cli.recipe bench recipes/vicuna-7b-replay/bench.yaml \
  "model.spec=$INPUTS/tokenizer" "engine.replay=$INPUTS/val-lengths.jsonl" "input=$INPUTS/val-prompts.jsonl" \
  "tune.lengths=$INPUTS/tune-lengths.jsonl" "budget_s=$BUDGET_S" "cost.cache_dir=$OUT/step-cost" "out=$OUT/$NAME" \
  "$@" 2>&1 | tee "$OUT/log.txt"
code=${PIPESTATUS[0]}
echo "run.sh: exit $code after $(( $(date +%s) - started )) s" | tee -a "$OUT/log.txt"
exit "$code"
