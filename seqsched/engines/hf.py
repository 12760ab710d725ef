"""Batched KV-cache generation with Hugging Face models: left padding, per-row finish flags, a step cap."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from seqsched.engines.api import (
    GREEDY,
    Batching,
    BatchOutput,
    FinishReason,
    Message,
    RowOutput,
    SamplingParams,
    encode_chat,
    model_stop_token_ids,
)
from seqsched.engines.config import EngineConfig
from seqsched.model_specs import LoadedModel, ModelConfig, load_model


class HFEngine:
    """Generation engine over a Hugging Face causal LM, one static batch at a time."""

    batching = Batching.STATIC

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: EngineConfig | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.device = next(model.parameters()).device
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stop_token_ids = frozenset(
            model_stop_token_ids(getattr(model, "generation_config", None), tokenizer)
        ) | frozenset(self.config.stop_token_ids)
        if not self.stop_token_ids:
            raise ValueError("the model has no EOS token and no stop_token_ids were given")

    @classmethod
    def from_spec(cls, model: ModelConfig | str, config: EngineConfig | None = None) -> HFEngine:
        """Load a model spec (see seqsched.model_specs) and wrap it."""
        loaded: LoadedModel = load_model(model)
        return cls(loaded.model, loaded.tokenizer, config)

    def encode(self, prompt: str | Sequence[Message]) -> list[int]:
        """Token ids of a prompt with the chat template applied (generation prompt added)."""
        return encode_chat(self.tokenizer, prompt, self.config.system_prompt)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated token ids, special tokens dropped."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def left_pad(self, prompt_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts as one left-padded id tensor and its attention mask (1 = real token), on the model's device."""
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def next_tokens(
        self, logits: torch.Tensor, sampling: SamplingParams, generators: list[torch.Generator] | None
    ) -> torch.Tensor:
        """One token per row of `logits`: argmax, or a sample (each row with its own generator when given)."""
        if sampling.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # Keep a token while the mass before it is below top_p (the top token is always kept).
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= sampling.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        if generators is None:
            return torch.multinomial(probs, 1).squeeze(-1)
        probs = probs.cpu()
        picked = [torch.multinomial(probs[row], 1, generator=gen) for row, gen in enumerate(generators)]
        return torch.cat(picked).to(logits.device)

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
    ) -> BatchOutput:
        """Generate one batch; every row stops at a stop token or after max_new_tokens."""
        if not prompt_ids:
            raise ValueError("generate() needs at least one prompt")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if seeds is not None and len(seeds) != len(prompt_ids):
            raise ValueError("seeds must have one entry per prompt")
        batch = len(prompt_ids)
        generators = None
        if seeds is not None and not sampling.greedy:
            generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

        started = time.perf_counter()
        input_ids, attention_mask = self.left_pad(prompt_ids)
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :]
        prefill_s = time.perf_counter() - started

        decode_started = time.perf_counter()
        generated: list[list[int]] = [[] for _ in range(batch)]
        finish_step = [0] * batch
        reasons = [FinishReason.LENGTH] * batch
        active = list(range(batch))  # batch rows whose KV cache is still in the cache, in cache order
        running = torch.ones(len(active), dtype=torch.bool)  # per cached row: not finished yet
        next_positions = position_ids[:, -1] + 1
        row_steps = 0
        step = 0
        for step in range(1, max_new_tokens + 1):
            row_steps += len(active)
            if generators is not None:
                tokens = self.next_tokens(logits, sampling, [generators[row] for row in active])
            else:
                tokens = self.next_tokens(logits, sampling, None)
            token_list = tokens.tolist()
            for slot, row in enumerate(active):
                if not running[slot]:
                    continue
                token = token_list[slot]
                if token in self.stop_token_ids:
                    running[slot] = False
                    reasons[row] = FinishReason.STOP
                    finish_step[row] = step
                else:
                    generated[row].append(token)
                    finish_step[row] = step
            if not bool(running.any()) or step == max_new_tokens:
                break
            if self.config.evict_finished and not bool(running.all()):
                keep = running.nonzero().squeeze(-1)
                cache.batch_select_indices(keep.to(self.device))
                active = [active[int(slot)] for slot in keep]
                tokens = tokens[keep.to(tokens.device)]
                attention_mask = attention_mask[keep.to(self.device)]
                next_positions = next_positions[keep.to(self.device)]
                running = torch.ones(len(active), dtype=torch.bool)
            # Finished rows keep being fed the pad token until the whole batch ends (static batching).
            feed = torch.where(running.to(tokens.device), tokens, torch.full_like(tokens, self.pad_token_id))
            attention_mask = torch.cat(
                [
                    attention_mask,
                    torch.ones((len(active), 1), dtype=attention_mask.dtype, device=self.device),
                ],
                dim=-1,
            )
            out = self.model(
                input_ids=feed.unsqueeze(-1),
                attention_mask=attention_mask,
                position_ids=next_positions.unsqueeze(-1),
                cache=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :]
            next_positions = next_positions + 1
        decode_s = time.perf_counter() - decode_started

        rows = [
            RowOutput(
                token_ids=ids,
                text=self.decode(ids),
                finish_reason=reasons[row],
                finish_step=finish_step[row],
            )
            for row, ids in enumerate(generated)
        ]
        return BatchOutput(
            rows=rows,
            prompt_tokens=sum(len(ids) for ids in prompt_ids),
            padded_prompt_tokens=input_ids.numel(),
            decode_steps=step,
            row_steps=row_steps,
            prefill_s=prefill_s,
            decode_s=decode_s,
        )
