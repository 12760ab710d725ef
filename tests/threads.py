"""A module-scoped fixture that runs torch on one thread (import it into a test module to use it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread: on cores shared with other jobs it ran the tiny model 4.5x and SmolLM2 up to 10x faster."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
