"""vLLM behind the same Engine contract, plus whole-set submission with per-request priorities and caps.

vLLM batches continuously, so the paper's static batches matter less there; what the scheduler's predicted
lengths still buy is the order (shortest predicted first, through vLLM's priority scheduling policy) and,
for the FCR variant, per-request `max_tokens` caps with the truncated requests recomputed afterwards.
Needs the `gpu` extra (vllm) and a CUDA device; imported lazily so nothing else depends on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from seqsched.engines.api import (
    GREEDY,
    Batching,
    BatchOutput,
    FinishReason,
    Message,
    RowOutput,
    SamplingParams,
    SubmitStats,
    TimedRow,
    encode_chat,
    model_stop_token_ids,
)
from seqsched.engines.config import VLLMConfig
from seqsched.errors import SeqschedError
from seqsched.model_specs import ModelConfig, load_tokenizer, resolve_model_path


def import_vllm() -> Any:
    """The vllm module, or a clear error."""
    try:
        import vllm
    except ImportError as error:
        raise SeqschedError(
            "engine 'vllm' needs the vllm package and a CUDA GPU: pip install 'seqsched[gpu]' (or use --engine hf)"
        ) from error
    return vllm


class VLLMEngine:
    """Generation through a vLLM `LLM` (priority scheduling policy), speaking the Engine contract."""

    batching = Batching.CONTINUOUS

    def __init__(self, llm: Any, tokenizer: Any, vllm_module: Any | None = None) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.vllm = vllm_module or import_vllm()
        self.stop_token_ids = model_stop_token_ids(tokenizer)
        if not self.stop_token_ids:
            raise ValueError("the tokenizer declares no EOS token")
        self.last_stats: SubmitStats | None = None

    @classmethod
    def from_spec(cls, model: ModelConfig | str, config: VLLMConfig | None = None) -> VLLMEngine:
        """Start vLLM on a model spec (the embedded SmolLM2, a folder, a .gguf file or a hub id)."""
        vllm = import_vllm()
        model = ModelConfig(spec=model) if isinstance(model, str) else model
        config = config or VLLMConfig()
        path = resolve_model_path(model.spec, model.cache_dir)
        dtype = "auto" if model.dtype.value == "auto" else model.dtype.value
        llm = vllm.LLM(
            model=path,
            dtype=dtype,
            seed=config.seed,
            scheduling_policy="priority",
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_num_seqs=config.max_num_seqs,
            max_model_len=config.max_model_len,
            enforce_eager=config.enforce_eager,
        )
        return cls(llm, load_tokenizer(path), vllm)

    @property
    def context_length(self) -> int | None:
        """vLLM's max_model_len (the model's context, or what --engine.vllm.max_model_len lowered it to)."""
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            return None

    def encode(self, prompt: str | Sequence[Message]) -> list[int]:
        """Token ids of a prompt with the chat template applied (generation prompt added)."""
        return encode_chat(self.tokenizer, prompt)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated token ids, special tokens dropped."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def _params(self, sampling: SamplingParams, max_tokens: int, seed: int | None) -> Any:
        return self.vllm.SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=max_tokens,
            seed=None if sampling.greedy else seed,
            stop_token_ids=sorted(self.stop_token_ids),
        )

    def submit(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_tokens: Sequence[int],
        priorities: Sequence[int] | None = None,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
        on_finished: Callable[[int, TimedRow], None] | None = None,
    ) -> list[TimedRow]:
        """Submit a whole set at once (lower priority value runs first); outputs in input order with times.
        on_finished(index, row) is called as each request finishes."""
        if not (len(prompt_ids) == len(max_tokens) and (priorities is None or len(priorities) == len(prompt_ids))):
            raise ValueError("prompt_ids, max_tokens and priorities must have one entry per request")
        engine = self.llm.llm_engine
        started = time.perf_counter()
        for index, ids in enumerate(prompt_ids):
            engine.add_request(
                str(index),
                {"prompt_token_ids": list(ids)},
                self._params(sampling, max_tokens[index], None if seeds is None else seeds[index]),
                priority=0 if priorities is None else int(priorities[index]),
            )
        finished: dict[int, TimedRow] = {}
        steps = 0
        while engine.has_unfinished_requests():
            steps += 1
            for output in engine.step():
                if output.finished:
                    index = int(str(output.request_id).split("-")[0])
                    finished[index] = TimedRow(self._row(output), time.perf_counter() - started)
                    if on_finished is not None:
                        on_finished(index, finished[index])
        # vLLM mixes prefill and decode in its steps: the time is all counted as decode.
        self.last_stats = SubmitStats(steps=steps, decode_s=time.perf_counter() - started)
        missing = set(range(len(prompt_ids))) - set(finished)
        if missing:
            raise RuntimeError(f"vLLM returned no output for requests {sorted(missing)[:5]}")
        return [finished[index] for index in range(len(prompt_ids))]

    def _row(self, output: Any) -> RowOutput:
        completion = output.outputs[0]
        token_ids = list(completion.token_ids)
        stopped = completion.finish_reason == "stop"
        if stopped and token_ids and token_ids[-1] in self.stop_token_ids:
            token_ids = token_ids[:-1]  # vLLM keeps the EOS id in token_ids; the HF engine does not
        return RowOutput(
            token_ids=token_ids,
            text=self.decode(token_ids),
            finish_reason=FinishReason.STOP if stopped else FinishReason.LENGTH,
            finish_step=len(token_ids) + (1 if stopped else 0),
        )

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
    ) -> BatchOutput:
        """One batch through vLLM (the Engine contract); vLLM computes no padding or finished rows."""
        if not prompt_ids:
            raise ValueError("generate() needs at least one prompt")
        started = time.perf_counter()
        timed = self.submit(prompt_ids, [max_new_tokens] * len(prompt_ids), None, sampling, seeds)
        rows = [item.row for item in timed]
        return BatchOutput(
            rows=rows,
            prompt_tokens=sum(len(ids) for ids in prompt_ids),
            padded_prompt_tokens=sum(len(ids) for ids in prompt_ids),
            decode_steps=max(row.finish_step for row in rows),
            row_steps=sum(row.finish_step for row in rows),
            prefill_s=0.0,
            decode_s=time.perf_counter() - started,
        )
