"""`seqsched server`'s options (no torch, no fastapi: the CLI builds its parser from this module)."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

from seqsched.engines.config import EngineConfig
from seqsched.errors import SeqschedError, require
from seqsched.model_specs import ModelConfig
from serving.policy.scheduler import Admission, ScheduleConfig, Strategy
from serving.predictors import PredictorSource, parse_predictor

API_KEY_ENV = "SEQSCHED_API_KEY"
"""Environment variable holding the API key when --api_key is not given."""
SERVED_POLICIES = (Admission.AUTO, Admission.FCFS, Admission.SJF)


class PredictOn(enum.Enum):
    """Where the length predictor runs."""

    ENGINE = "engine"
    """On the engine thread, between two steps: on a CPU, whose cores the engine's threads occupy, taking turns
    beats two thread pools fighting over them (measured: a probe call took 62 ms alone, 181 ms beside vLLM)."""
    THREAD = "thread"
    """On a thread of its own, beside the engine's steps (a GPU engine leaves the CPU to the predictor)."""


@dataclass(frozen=True)
class ServerConfig:
    """Serve an OpenAI-compatible API (chat, completions, files, batches) with one length-aware queue."""

    host: str = "127.0.0.1"
    """Address to bind; the loopback by default (0.0.0.0 exposes the server to the network: set --api_key)."""
    port: int = 8000
    """TCP port (0: any free port, printed at start)."""
    data_dir: str = "outputs/server"
    """Where uploaded and output files, jobs and finished batch lines persist (files + a sqlite index)."""
    api_key: str | None = None
    """When set (or $SEQSCHED_API_KEY), every route but /health needs `Authorization: Bearer KEY`."""
    predictor: str = "none"
    """Length predictor for SJF, loaded once: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH,
    oracle:FILE (lengths by request id: a batch line's custom_id, a chat request's `request_id`) or none."""
    tracking_uri: str | None = None
    """MLflow tracking URI for models:/ and runs:/ predictors (default: MLFLOW_TRACKING_URI or ./mlflow.db)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine: vLLM (`--engine.kind vllm`, or auto where installed). `--engine.vllm.max_num_seqs` is how many
    requests run at once; the rest wait in the server's queue, which decides their order."""
    served_model_name: str | None = None
    """The model id clients name in requests and /v1/models lists (default: --model.spec)."""
    policy: Admission = Admission.AUTO
    """Release order of queued requests: fcfs (arrival), sjf (shortest predicted first); auto: sjf with a predictor,
    fcfs without. Both age: see max_wait_s."""
    max_wait_s: float = 10.0
    """Aging bound of interactive requests: once one has waited this long in the queue it is released ahead of
    every request with a later deadline (arrival + its lane's bound), whatever their predicted lengths. Shorter
    bounds trade SJF's mean latency for its tail: SmolLM2 on 2 CPU cores at 0.9x capacity, simulated over 50
    arrival draws, 30 s gave 0.94x FCFS's mean at 1.37x its p99, 15 s 0.95x at 1.14x, 10 s 0.97x at 1.05x; live at
    0.9x of the capacity measured that hour, 15 s 0.96x at 1.23x, 10 s 0.97x at 1.00x (benchmarks/RESULTS.md).
    About the service time of a long answer (256 tokens here): scale it with that on your hardware."""
    batch_max_wait_s: float = 3600.0
    """Aging bound of batch-job lines (they yield to interactive requests until then)."""
    interactive_first: bool = True
    """Release interactive requests (chat, completions) before batch-job lines (aging aside)."""
    limit: int = 512
    """The most tokens any response may have; a request's max_tokens lowers it (as in `seqsched serve`)."""
    temperature: float = 0.0
    """Temperature of requests that set none (0: greedy, as `seqsched serve`; OpenAI's own default is 1)."""
    top_p: float = 1.0
    seed: int = 0
    """Batch line i samples with seed + i (as `seqsched serve`); a chat request samples with its own `seed`."""
    max_prompt_tokens: int | None = None
    """Requests whose prompt has more tokens are refused (400; an error line in a batch)."""
    max_upload_bytes: int = 64 * 2**20
    """Largest file /v1/files accepts (413 beyond)."""
    max_file_lines: int = 50_000
    """Most lines (requests) a batch input file may hold (OpenAI's limit)."""
    predict_batch: int = 64
    """Most requests the predictor takes in one call (arrivals waiting for it are predicted together)."""
    predict_on: PredictOn = PredictOn.ENGINE
    """engine: predictor calls run on the engine thread between steps (CPU); thread: beside the engine (GPU)."""
    log_requests: bool = False
    """Log every HTTP request (uvicorn's access log)."""

    def __post_init__(self) -> None:
        require(0 <= self.port <= 65535, "port", f"must be in 0..65535, got {self.port}")
        require(bool(self.data_dir.strip()), "data_dir", "give a folder for files and jobs")
        require(self.max_wait_s > 0, "max_wait_s", f"must be > 0, got {self.max_wait_s}")
        require(self.batch_max_wait_s > 0, "batch_max_wait_s", f"must be > 0, got {self.batch_max_wait_s}")
        require(self.limit >= 1, "limit", f"must be >= 1, got {self.limit}")
        require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        most = self.max_prompt_tokens
        require(most is None or most >= 1, "max_prompt_tokens", f"must be >= 1 (or unset), got {most}")
        require(self.max_upload_bytes >= 1, "max_upload_bytes", f"must be >= 1, got {self.max_upload_bytes}")
        require(self.max_file_lines >= 1, "max_file_lines", f"must be >= 1, got {self.max_file_lines}")
        require(self.predict_batch >= 1, "predict_batch", f"must be >= 1, got {self.predict_batch}")
        require(
            self.policy in SERVED_POLICIES,
            "policy",
            f"the server orders by fcfs or sjf (no FCR caps: nothing is recomputed), got {self.policy.value}",
        )
        spec = parse_predictor(self.predictor)
        if spec.kind is PredictorSource.PERCEPTION:
            raise SeqschedError(
                "--predictor perception asks the served model, which the server's engine thread owns: register a "
                "predictor (models:/NAME@ALIAS) or use oracle:FILE"
            )
        if self.policy is Admission.SJF and spec.kind is PredictorSource.NONE:
            raise SeqschedError(
                "--policy sjf orders requests by predicted length: give --predictor (models:/NAME@ALIAS or "
                "oracle:FILE), or use --policy fcfs"
            )

    @property
    def admission(self) -> Admission:
        """The policy in force: auto resolved by whether a predictor is given."""
        if self.policy is not Admission.AUTO:
            return self.policy
        none = parse_predictor(self.predictor).kind is PredictorSource.NONE
        return Admission.FCFS if none else Admission.SJF

    @property
    def model_name(self) -> str:
        """The model id of the API."""
        return self.served_model_name or self.model.spec

    def schedule(self) -> ScheduleConfig:
        """The scheduling settings the admission policy objects read (limit, margins, policy)."""
        strategy = Strategy.VANILLA if self.admission is Admission.FCFS else Strategy.SEQSCH
        return ScheduleConfig(strategy=strategy, limit=self.limit, policy=self.admission)

    def resolved_api_key(self) -> str | None:
        """--api_key, else $SEQSCHED_API_KEY, else None (no key required); an empty value counts as none."""
        key = self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV)
        return key or None
