"""Batched KV-cache generation with Hugging Face models: left padding, per-row finish flags, a step cap."""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass

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
from seqsched.engines.kv_cache import DEFAULT_RESERVE, slack_cache
from seqsched.model_specs import LoadedModel, ModelConfig, shared_model


def cache_argument(model: PreTrainedModel) -> str:
    """The forward's KV-cache argument: `cache` in recent transformers, `past_key_values` before (5.17, the lent
    GPU's, takes only that: a `cache=` there would vanish into **kwargs and every step would run without the cache).
    A PEFT wrapper's forward takes **kwargs and passes them on: its base model's signature decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(base.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@dataclass
class PrefilledPrompt:
    """A prompt's prefill kept for a later batch: each layer's keys and values (kv heads, length, head dim) and
    the logits of the first generated token."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Memory the kept tensors take."""
        tensors = [*self.keys, *self.values, self.logits]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


class HFEngine:
    """Generation engine over a Hugging Face causal LM, one static batch at a time.

    `prefill()` can run prompts' prefills ahead of their batches (reading hidden states on the way, for a length
    probe) and keep their KV caches: a later `generate()` whose prompts were all prefilled starts from them
    instead of computing the prefill again.
    """

    batching = Batching.STATIC
    engine_kind = "hf"

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
        self.cache_argument = cache_argument(model)
        self.model_spec: str | None = None
        """The spec the model was loaded from (from_spec), so a length probe of the same model can share it."""
        self.prefilled: dict[tuple[int, ...], PrefilledPrompt] = {}
        """Prompts prefilled ahead of their batch (by token ids), until drop_prefilled()."""
        self.prefilled_bytes = 0

    @classmethod
    def from_spec(cls, model: ModelConfig | str, config: EngineConfig | None = None) -> HFEngine:
        """Load a model spec (see seqsched.model_specs) and wrap it."""
        loaded: LoadedModel = shared_model(model)
        engine = cls(loaded.model, loaded.tokenizer, config)
        engine.model_spec = loaded.spec
        return engine

    @property
    def context_length(self) -> int | None:
        """The model's context window (max_position_embeddings), when its config says."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return value if isinstance(value, int) else None

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
    def prefill(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        hidden_layers: Sequence[int] = (),
        keep: bool = True,
        batch_size: int = 16,
    ) -> list[dict[int, torch.Tensor]]:
        """Prefill prompts (batched by length) and, with keep, hold each one's KV cache and first-token logits for
        a later generate() of the same prompt (up to config.prefill_store_gib). Returns each prompt's hidden
        states at hidden_layers (0 = embeddings), unpadded: layer -> (prompt length, hidden size)."""
        budget = self.config.prefill_store_gib * 2**30
        order = sorted(range(len(prompt_ids)), key=lambda row: len(prompt_ids[row]))
        hidden: list[dict[int, torch.Tensor]] = [{} for _ in prompt_ids]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            chunk = [prompt_ids[row] for row in rows]
            input_ids, attention_mask = self.left_pad(chunk)
            position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
            cache = DynamicCache(config=self.model.config)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                output_hidden_states=bool(hidden_layers),
                logits_to_keep=1,
                **{self.cache_argument: cache},
            )
            width = input_ids.shape[1]
            for slot, row in enumerate(rows):
                length = len(prompt_ids[row])
                for layer in hidden_layers:
                    hidden[row][layer] = out.hidden_states[layer][slot, width - length :, :]
                key = tuple(prompt_ids[row])
                if not keep or key in self.prefilled:
                    continue
                kept = PrefilledPrompt(
                    keys=[layer.keys[slot, :, width - length :, :].clone() for layer in cache.layers],
                    values=[layer.values[slot, :, width - length :, :].clone() for layer in cache.layers],
                    logits=out.logits[slot, -1, :].clone(),
                )
                if self.prefilled_bytes + kept.nbytes <= budget:
                    self.prefilled[key] = kept
                    self.prefilled_bytes += kept.nbytes
        return hidden

    def drop_prefilled(self) -> None:
        """Forget the prompts prefilled ahead of their batches (frees their KV caches)."""
        self.prefilled.clear()
        self.prefilled_bytes = 0

    def _from_prefilled(
        self, prompt_ids: Sequence[Sequence[int]], reserve: int
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The batch's cache (with `reserve` spare columns), first logits, attention mask and positions assembled
        from kept prefills (left padded as a batch prefill would be), or None unless every prompt was prefilled."""
        kept = [self.prefilled.get(tuple(ids)) for ids in prompt_ids]
        if not kept or any(item is None for item in kept):
            return None
        _, attention_mask = self.left_pad(prompt_ids)
        width = attention_mask.shape[1]
        cache = slack_cache(self.model.config, reserve)
        for layer in range(len(kept[0].keys)):  # type: ignore[union-attr]
            first = kept[0].keys[layer]  # type: ignore[union-attr]
            shape = (len(kept), first.shape[0], width, first.shape[2])
            keys = torch.zeros(shape, dtype=first.dtype, device=first.device)
            values = torch.zeros(shape, dtype=first.dtype, device=first.device)
            for row, item in enumerate(kept):
                length = item.keys[layer].shape[1]  # type: ignore[union-attr]
                keys[row, :, width - length :, :] = item.keys[layer]  # type: ignore[union-attr]
                values[row, :, width - length :, :] = item.values[layer]  # type: ignore[union-attr]
            cache.update(keys, values, layer)
        logits = torch.stack([item.logits for item in kept])  # type: ignore[union-attr]
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        return cache, logits, attention_mask, position_ids

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
        *,
        forced_lengths: Sequence[int | None] | None = None,
    ) -> BatchOutput:
        """Generate one batch; every row stops at a stop token or after max_new_tokens.

        forced_lengths (replay, see seqsched.engines.replay): stop tokens are ignored and row i finishes right
        after forced_lengths[i] tokens, as a STOP at step length + 1 like a real stop token (None: the row runs
        to max_new_tokens). Every step computes the model's forward as usual; only when a row stops is forced.
        """
        if not prompt_ids:
            raise ValueError("generate() needs at least one prompt")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if seeds is not None and len(seeds) != len(prompt_ids):
            raise ValueError("seeds must have one entry per prompt")
        if forced_lengths is not None and len(forced_lengths) != len(prompt_ids):
            raise ValueError("forced_lengths must have one entry per prompt")
        batch = len(prompt_ids)
        generators = None
        if seeds is not None and not sampling.greedy:
            generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

        started = time.perf_counter()
        # The cache holds the prompts and every step in place: no column is copied while the batch decodes. An
        # evicting engine copies the cache (spare columns included) whenever rows leave: it grows by doubling instead.
        reserve = min(max_new_tokens + 1, DEFAULT_RESERVE) if self.config.evict_finished else max_new_tokens + 1
        reused = self._from_prefilled(prompt_ids, reserve)
        if reused is not None:
            cache, logits, attention_mask, position_ids = reused
            padded_prompt_tokens = 0  # nothing computed here: the prefill ran ahead (see prefill())
        else:
            input_ids, attention_mask = self.left_pad(prompt_ids)
            position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
            cache = slack_cache(self.model.config, reserve)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_argument: cache},
            )
            logits = out.logits[:, -1, :]
            padded_prompt_tokens = input_ids.numel()
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
                if forced_lengths is not None:
                    forced = forced_lengths[row]
                    stop = forced is not None and step > forced
                else:
                    stop = token in self.stop_token_ids
                if stop:
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
                use_cache=True,
                **{self.cache_argument: cache},
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
            padded_prompt_tokens=padded_prompt_tokens,
            decode_steps=step,
            row_steps=row_steps,
            prefill_s=prefill_s,
            decode_s=decode_s,
        )
