"""What a static batch costs on an engine, as the simulator asks it (pure, no torch, no numpy): seconds per decode
step of `batch` rows at a context of `context` tokens, and seconds per prefill of `batch` rows padded to a prompt.

Two models share one interface (`CostModel`):
- `StepCost`, a linear formula (a fixed cost, a cost per row, a cost per row and context token); cheap to write
  down, but on a CPU it holds only where it was fitted: a decode step over a long KV cache costs far more per
  row than one over a short cache, and a fit at short contexts does not see it (issue 13).
- `GridStepCost`, a table measured on this engine over batch sizes x context lengths up to the limit plus the
  prompt (serving.measure.costmodel measures it), read by linear interpolation in the batch size and then in the
  context, and extrapolated from the last two points beyond the table.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class CostModel(Protocol):
    """Seconds of a static batch: its prefill, and one forward per decode step."""

    def step_s(self, batch: int, context: float) -> float:
        """One decode forward of `batch` rows whose KV cache holds `context` tokens."""
        ...

    def prefill_s(self, batch: int, prompt_tokens: int) -> float:
        """The prefill of `batch` rows padded to `prompt_tokens`."""
        ...

    def span_s(self, batch: int, first: int, last: int) -> float:
        """Decode forwards of `batch` rows at every context first..last (inclusive; 0 when last < first)."""
        ...

    def decode_s(self, batch: int, steps: int, prompt_tokens: int) -> float:
        """`steps` decode steps (the first comes from the prefill's logits) with `batch` rows throughout."""
        ...


def _integers_sum(first: int, last: int) -> float:
    """first + (first + 1) + ... + last (0 when last < first)."""
    if last < first:
        return 0.0
    return (first + last) * (last - first + 1) / 2


@dataclass(frozen=True)
class StepCost:
    """A linear step cost:
    step_s(batch, context) = fixed_s + per_row_s * batch + context_s * context + per_context_s * batch * context
    prefill_s(batch, prompt) = prefill_fixed_s + prefill_row_s * batch + prefill_token_s * batch * prompt

    Defaults: SmolLM2-135M fp32 on this project's 2-core CPU at short contexts, fitted 2026-11-25; they under-state
    long contexts (issue 13). Real decisions use a measured cost (serving.measure.costmodel; `seqsched serve` and
    `bench` measure and cache one per machine and model).
    """

    fixed_s: float = 0.0745
    per_row_s: float = 0.00297
    per_context_s: float = 4.6e-06
    """Seconds per row and context token (reading each row's KV cache)."""
    prefill_fixed_s: float = 0.0155
    prefill_token_s: float = 0.000264
    context_s: float = 0.0
    """Seconds per context token whatever the batch size."""
    prefill_row_s: float = 0.0

    def step_s(self, batch: int, context: float) -> float:
        """One decode forward of `batch` rows whose context is `context` tokens."""
        return self.fixed_s + self.per_row_s * batch + (self.context_s + self.per_context_s * batch) * context

    def prefill_s(self, batch: int, prompt_tokens: int) -> float:
        """The prefill of `batch` rows padded to `prompt_tokens`."""
        return self.prefill_fixed_s + self.prefill_row_s * batch + self.prefill_token_s * batch * prompt_tokens

    def span_s(self, batch: int, first: int, last: int) -> float:
        """Forwards at contexts first..last, in closed form."""
        if last < first:
            return 0.0
        count = last - first + 1
        per_context = self.context_s + self.per_context_s * batch
        return count * (self.fixed_s + self.per_row_s * batch) + per_context * _integers_sum(first, last)

    def decode_s(self, batch: int, steps: int, prompt_tokens: int) -> float:
        """`steps` decode steps: forwards at contexts prompt + 1 .. prompt + steps - 1."""
        return self.span_s(batch, prompt_tokens + 1, prompt_tokens + steps - 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what cost_from_dict reads back)."""
        return {"kind": "linear", **{name: getattr(self, name) for name in self.__dataclass_fields__}}


@dataclass(frozen=True)
class _Line:
    """value(x) = value + slope * (x - at)."""

    at: float
    value: float
    slope: float

    def __call__(self, x: float) -> float:
        return self.value + self.slope * (x - self.at)


@dataclass(frozen=True)
class _Piecewise:
    """A piecewise-linear function through measured points, extended beyond them: below the first point along the
    first segment, beyond the last one along the last segment with a slope of at least the average over all points
    (so a noisy last pair never makes a larger batch or a longer context cheaper)."""

    xs: tuple[float, ...]
    segments: tuple[_Line, ...]
    """Segment i joins points i and i + 1 (one constant line for a single point)."""
    beyond: _Line

    @classmethod
    def through(cls, xs: Sequence[float], ys: Sequence[float]) -> _Piecewise:
        if len(xs) == 1:
            flat = _Line(xs[0], ys[0], 0.0)
            return cls((xs[0],), (flat,), flat)
        segments = tuple(_Line(xs[i], ys[i], (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])) for i in range(len(xs) - 1))
        average = (ys[-1] - ys[0]) / (xs[-1] - xs[0])
        beyond = _Line(xs[-1], ys[-1], max(segments[-1].slope, average, 0.0))
        return cls(tuple(xs), segments, beyond)

    def line(self, x: float) -> _Line:
        """The line that holds at x."""
        if x > self.xs[-1]:
            return self.beyond
        index = bisect.bisect_left(self.xs, x) - 1
        return self.segments[max(0, min(len(self.segments) - 1, index))]

    def __call__(self, x: float) -> float:
        return max(0.0, self.line(x)(x))

    def total(self, first: int, last: int) -> float:
        """Sum over the integers first..last (exact: a line's sum over integers is count x its middle value)."""
        total = 0.0
        start = first
        # Piece i covers (x_i, x_i+1], the first piece everything below, `beyond` everything above the last point.
        for bound in [*(math.floor(x) for x in self.xs[1:]), last]:
            stop = min(last, bound)
            if stop >= start:
                middle = (start + stop) / 2
                total += (stop - start + 1) * max(0.0, self.line(middle)(middle))
                start = stop + 1
        return total


@dataclass(frozen=True)
class Table:
    """A measured function seconds(batch, length) on a staircase grid: at each length, some batch sizes.

    Read at (batch, length): each length's row is interpolated linearly in the batch size (extrapolated beyond its
    largest measured batch), then those values linearly in the length. Sums over consecutive integer lengths are
    exact for that piecewise-linear function, so a whole batch's decode costs a handful of operations."""

    points: tuple[tuple[int, float, float], ...]
    """(batch, length, seconds) per measured point."""
    _lengths: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _rows: tuple[_Piecewise, ...] = field(init=False, repr=False, compare=False)
    _by_batch: dict[int, _Piecewise] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a cost table needs at least one measured point")
        grouped: dict[float, dict[int, float]] = {}
        for batch, length, seconds in self.points:
            if batch < 1 or seconds < 0 or not math.isfinite(seconds):
                raise ValueError(f"bad cost point (batch {batch}, length {length}, {seconds} s)")
            grouped.setdefault(float(length), {})[int(batch)] = float(seconds)
        lengths = tuple(sorted(grouped))
        rows = []
        for length in lengths:
            batches = sorted(grouped[length])
            rows.append(_Piecewise.through([float(b) for b in batches], [grouped[length][b] for b in batches]))
        object.__setattr__(self, "_lengths", lengths)
        object.__setattr__(self, "_rows", tuple(rows))
        object.__setattr__(self, "_by_batch", {})

    def along_length(self, batch: int) -> _Piecewise:
        """The function of the length at this batch size (cached per batch size)."""
        cached = self._by_batch.get(batch)
        if cached is None:
            cached = _Piecewise.through(self._lengths, [row(batch) for row in self._rows])
            self._by_batch[batch] = cached
        return cached

    def value(self, batch: int, length: float) -> float:
        """Seconds at (batch, length)."""
        return self.along_length(batch)(length)

    def total(self, batch: int, first: int, last: int) -> float:
        """Sum of value(batch, length) over the integer lengths first..last (0 when last < first)."""
        return self.along_length(batch).total(first, last) if last >= first else 0.0


@dataclass(frozen=True)
class GridStepCost:
    """A step cost measured on a grid of batch sizes x context lengths (and prompt lengths for the prefill)."""

    decode: Table
    """Seconds per decode forward at (batch, context)."""
    prefill: Table
    """Seconds per prefill at (batch, padded prompt tokens)."""
    source: str = ""
    """Where the measurement came from (a cache file, a machine and model), for reports."""

    def step_s(self, batch: int, context: float) -> float:
        """One decode forward of `batch` rows at `context` tokens."""
        return self.decode.value(batch, context)

    def prefill_s(self, batch: int, prompt_tokens: int) -> float:
        """The prefill of `batch` rows padded to `prompt_tokens`."""
        return self.prefill.value(batch, prompt_tokens)

    def span_s(self, batch: int, first: int, last: int) -> float:
        """Forwards at contexts first..last."""
        return self.decode.total(batch, first, last)

    def decode_s(self, batch: int, steps: int, prompt_tokens: int) -> float:
        """`steps` decode steps: forwards at contexts prompt + 1 .. prompt + steps - 1."""
        return self.span_s(batch, prompt_tokens + 1, prompt_tokens + steps - 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what cost_from_dict reads back)."""
        return {
            "kind": "grid",
            "decode": [list(point) for point in self.decode.points],
            "prefill": [list(point) for point in self.prefill.points],
        }


def _points(values: Iterable[Sequence[float]], name: str) -> tuple[tuple[int, float, float], ...]:
    points = []
    for value in values:
        if len(value) != 3:
            raise ValueError(f"{name}: each point is [batch, length, seconds], got {list(value)}")
        points.append((int(value[0]), float(value[1]), float(value[2])))
    return tuple(points)


def cost_from_dict(values: Mapping[str, Any], source: str = "") -> StepCost | GridStepCost:
    """A cost model from its JSON form: a measured grid ({"decode": [[batch, context, s], ...], "prefill": [...]}),
    the linear model's fields, or a cache file of serving.measure.costmodel (whose "model" names the one it chose)."""
    if "measured" in values and "model" in values:  # serving.measure.costmodel's cache file: both models, one chosen
        return cost_from_dict(values[values["model"]], source)
    if "decode" in values:
        return GridStepCost(
            Table(_points(values["decode"], "decode")), Table(_points(values["prefill"], "prefill")), source
        )
    fields = {key: float(values[key]) for key in StepCost.__dataclass_fields__ if key in values}
    if not fields:
        raise ValueError(
            f"neither a measured grid (decode, prefill) nor linear fields {sorted(StepCost.__dataclass_fields__)}"
        )
    return StepCost(**fields)


__all__ = ["CostModel", "GridStepCost", "StepCost", "Table", "cost_from_dict"]
