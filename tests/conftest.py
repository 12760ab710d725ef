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
