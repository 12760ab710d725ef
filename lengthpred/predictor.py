"""The predictor contract every length predictor honours (no torch): prompts in, token counts out."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

LENGTH_QUERY = (
    "Don't output the response for the above instruction. Instead, you need to predict the number of "
    "tokens in your response. Output one number only."
)
"""The paper's length query, appended to the instruction (separated by a blank line)."""


@runtime_checkable
class LengthPredictor(Protocol):
    """Anything that predicts response lengths in tokens for a list of prompts."""

    def predict(self, prompts: Sequence[str]) -> list[int]:
        """One predicted length (tokens, >= 0) per prompt, in order."""
        ...


def length_query(prompt: str) -> str:
    """The user turn that asks the model for its response length instead of the response."""
    return f"{prompt.rstrip()}\n\n{LENGTH_QUERY}"


_NUMBER = re.compile(r"(?<![\w.])(\d{1,6}(?:,\d{3})*)(?:\.\d+)?")


def parse_length(text: str) -> int | None:
    """The first whole number in a model's answer ("About 120 tokens." -> 120); None when there is none."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    return int(match.group(1).replace(",", ""))
