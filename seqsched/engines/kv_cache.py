"""A KV cache that writes each step in place: transformers' DynamicLayer appends with torch.cat, which copies the
whole cache at every decode step (a SmolLM2 step on 2 CPU cores, side by side: 0.70 s with the copies and 0.54 s in
place at 128 rows x 300 columns, 0.35 vs 0.28 s at 64 x 200, the same at 1-16 rows; benchmarks/kv_cache_step.py).

`SlackLayer` keeps its keys and values in a buffer with spare columns and exposes the filled columns as views, so
a step writes one column and copies nothing; the buffer doubles when it fills. Code that replaces `layer.keys` /
`layer.values` itself (a batch join, a select) still works: the layer adopts the new tensors into a fresh buffer
at its next update. `trim_front` drops leading columns without a copy.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from seqsched.engines.pool_rules import DEFAULT_RESERVE


class SlackLayer(DynamicLayer):
    """A full-attention cache layer over a buffer with spare columns (see the module docstring)."""

    def __init__(self, reserve: int = DEFAULT_RESERVE) -> None:
        super().__init__()
        self.reserve = max(1, reserve)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._key_view: torch.Tensor | None = None
        self._value_view: torch.Tensor | None = None
        self._start = 0
        self._end = 0

    @property
    def capacity(self) -> int:
        """Columns the buffer holds (filled and spare); 0 before the first update."""
        return 0 if self._key_buffer is None else int(self._key_buffer.shape[-2])

    def _owns_views(self) -> bool:
        """True while keys/values are still this layer's views (nobody replaced them)."""
        return self._key_buffer is not None and self.keys is self._key_view and self.values is self._value_view

    def _set_views(self) -> None:
        assert self._key_buffer is not None and self._value_buffer is not None
        self.keys = self._key_view = self._key_buffer[..., self._start : self._end, :]
        self.values = self._value_view = self._value_buffer[..., self._start : self._end, :]

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor, spare: int) -> None:
        """Copy keys/values into a new zeroed buffer with `spare` free columns after them (zeros, not garbage:
        a masked column still enters the attention product, and NaN times a zero weight is NaN)."""
        batch, heads, length, dim = keys.shape
        self._key_buffer = keys.new_zeros((batch, heads, length + spare, dim))
        self._value_buffer = values.new_zeros((batch, heads, length + spare, values.shape[-1]))
        self._key_buffer[..., :length, :] = keys
        self._value_buffer[..., :length, :] = values
        self._start, self._end = 0, length
        self._set_views()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new columns after the filled ones (growing the buffer when full); the filled columns as views."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = int(key_states.shape[-2])
        if not self._owns_views():
            if self.keys is None or self.keys.numel() == 0:
                self._adopt(key_states, value_states, self.reserve)
                return self.keys, self.values  # type: ignore[return-value]
            self._adopt(self.keys, self.values, max(self.reserve, new))  # type: ignore[arg-type]
        if self._end + new > self.capacity:
            filled = self._end - self._start
            self._adopt(self.keys, self.values, max(self.reserve, filled, new))  # type: ignore[arg-type]
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., self._end : self._end + new, :] = key_states
        self._value_buffer[..., self._end : self._end + new, :] = value_states
        self._end += new
        self._set_views()
        return self.keys, self.values  # type: ignore[return-value]

    def own(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, filled: int) -> None:
        """Take these buffers as the layer's storage, their first `filled` columns filled (no copy)."""
        self._key_buffer, self._value_buffer = key_buffer, value_buffer
        self._start, self._end = 0, filled
        self.is_initialized = True
        self._set_views()

    def trim_front(self, columns: int) -> None:
        """Drop the first `columns` filled columns (a view change, no copy)."""
        if columns <= 0 or self.keys is None:
            return
        if not self._owns_views():
            self.keys = self.keys[..., columns:, :]
            self.values = self.values[..., columns:, :]  # type: ignore[index]
            return
        self._start = min(self._end, self._start + columns)
        self._set_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows at `indices` (one gather of the buffer, spare columns included)."""
        if not self._owns_views():
            super().batch_select_indices(indices)
            return
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer = self._key_buffer.index_select(0, indices)
        self._value_buffer = self._value_buffer.index_select(0, indices)
        self._set_views()

    def reset(self) -> None:
        self._key_view = self._value_view = None
        self._key_buffer = self._value_buffer = None
        self._start = self._end = 0
        super().reset()


def slack_cache(config: object, reserve: int = DEFAULT_RESERVE) -> DynamicCache:
    """A DynamicCache for `config` whose full-attention layers are SlackLayers with `reserve` spare columns (other
    layer kinds, e.g. sliding windows, stay as transformers builds them)."""
    cache = DynamicCache(config=config)
    cache.layers = [SlackLayer(reserve) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def join_left_padded(first: DynamicCache, second: DynamicCache, reserve: int = DEFAULT_RESERVE) -> None:
    """Append second's rows to first's, both aligned to the right (the narrower one padded on the left with zero
    columns), in one copy per layer into a buffer with `reserve` spare columns."""
    for index, (mine, theirs) in enumerate(zip(first.layers, second.layers, strict=True)):
        keys = _right_aligned(mine.keys, theirs.keys, reserve)
        values = _right_aligned(mine.values, theirs.values, reserve)
        width = max(mine.keys.shape[-2], theirs.keys.shape[-2])
        if isinstance(mine, SlackLayer):
            mine.own(keys, values, width)
        else:
            layer = SlackLayer(reserve)
            layer.lazy_initialization(keys, values)
            layer.own(keys, values, width)
            first.layers[index] = layer


def _right_aligned(top: torch.Tensor, bottom: torch.Tensor, reserve: int) -> torch.Tensor:
    """top's rows over bottom's in a zeroed buffer, each ending at the same column, `reserve` spare columns after."""
    width = max(top.shape[-2], bottom.shape[-2])
    shape = (top.shape[0] + bottom.shape[0], top.shape[1], width + reserve, top.shape[-1])
    buffer = top.new_zeros(shape)
    buffer[: top.shape[0], :, width - top.shape[-2] : width, :] = top
    buffer[top.shape[0] :, :, width - bottom.shape[-2] : width, :] = bottom
    return buffer


def trim_front(cache: DynamicCache, columns: int) -> None:
    """Drop the first `columns` columns of every layer (views where the layer allows, slices otherwise)."""
    for layer in cache.layers:
        if isinstance(layer, SlackLayer):
            layer.trim_front(columns)
        else:
            layer.keys = layer.keys[..., columns:, :]
            layer.values = layer.values[..., columns:, :]


__all__ = ["DEFAULT_RESERVE", "SlackLayer", "join_left_padded", "slack_cache", "trim_front"]
