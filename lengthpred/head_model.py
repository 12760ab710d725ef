"""The torch side of the head predictor: encoder + pooling + a linear layer to length-bin logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lengthpred.encoders import pool
from lengthpred.head import HeadConfig, bin_count


@dataclass
class HeadOutput:
    """What the head model's forward returns."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


def soft_targets(lengths: torch.Tensor, config: HeadConfig) -> torch.Tensor:
    """Per-row target distributions over bins: the true bin, smoothed over its neighbours."""
    bins = bin_count(config)
    index = (lengths.float() / config.bin_width).floor().clamp(max=bins - 1)
    if config.smoothing <= 0:
        return torch.nn.functional.one_hot(index.long(), bins).float()
    grid = torch.arange(bins, device=lengths.device).float()
    weights = torch.exp(-0.5 * ((grid.unsqueeze(0) - index.unsqueeze(1)) / config.smoothing) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


class LengthHeadModel(torch.nn.Module):
    """Encoder + pooling + a linear layer to length-bin logits; `forward(..., lengths=)` gives the loss."""

    def __init__(self, encoder: Any, config: HeadConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config
        self.dropout = torch.nn.Dropout(config.dropout)
        self.head = torch.nn.Linear(encoder.config.hidden_size, bin_count(config))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> HeadOutput:
        """Bin logits per row; with lengths, the cross-entropy against their smoothed bins."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        vectors = pool(hidden, attention_mask, self.config.pooling)
        logits = self.head(self.dropout(vectors.float()))
        if lengths is None:
            return HeadOutput(logits)
        targets = soft_targets(lengths, self.config)
        loss = -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
        return HeadOutput(logits, loss)
