"""`seqsched train --register-as`, `seqsched register`, and loading versions and aliases back through the pyfunc
interface in a fresh process, as the serving side and the outside contract do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lengthpred.predictor import LengthPredictor
from lengthpred.registry import load_predictor
from seqsched.errors import SeqschedError
from seqsched_cli.main import main
from tests.synthetic_lengths import length_dataset  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["repeat apple 3 times", "please say dog 20 times and be quick", "list cat 11 times"]

FRESH_PROCESS = """
import json, sys
import mlflow.pyfunc, pandas
prompts = json.loads(sys.argv[1])
out = {}
for uri in sys.argv[2:]:
    lengths = mlflow.pyfunc.load_model(uri).predict(pandas.DataFrame({"prompt": prompts}))
    assert lengths.dtype.kind == "i" and lengths.shape == (len(prompts),), (lengths.dtype, lengths.shape)
    out[uri] = [int(v) for v in lengths]
print(json.dumps(out))
"""


def _fresh_predict(cwd: Path, *uris: str) -> dict[str, list[int]]:
    """Load models with plain mlflow in a new Python process in cwd (default store: sqlite:///mlflow.db there)."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, json.dumps(PROMPTS), *uris],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sklearn_store(length_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A working directory whose default mlflow.db holds lenpred-sklearn versions 1 (@champion) and 2."""
    work = tmp_path_factory.mktemp("store")
    cwd = Path.cwd()
    os.chdir(work)
    try:
        assert main(["train", "--config", str(REPO / "recipes/sklearn/train.yaml"), "--data", str(length_dataset),
                           "--register-as", "lenpred-sklearn", "--alias", "champion", "--progress", "false",
                           "--output_dir", "out/v1"]) == 0  # fmt: skip
        assert main(["train", "--config", str(REPO / "recipes/sklearn/train.yaml"), "--data", str(length_dataset),
                           "--register-as", "lenpred-sklearn", "--sklearn.regressor", "svr", "--progress", "false",
                           "--output_dir", "out/v2"]) == 0  # fmt: skip
    finally:
        os.chdir(cwd)
    assert (work / "mlflow.db").is_file()
    return work


def test_train_logs_params_metrics_report_and_plots(sklearn_store: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{sklearn_store / 'mlflow.db'}")
    version = client.get_model_version("lenpred-sklearn", "1")
    run = client.get_run(version.run_id)
    assert run.data.params["kind"] == "sklearn" and run.data.params["sklearn.regressor"] == "ridge"
    assert {"val_mae", "val_acc_50", "val_acc_100", "val_kendall_tau", "val_under_rate"} <= set(run.data.metrics)
    assert run.data.metrics["val_mae"] < 40  # the synthetic lengths follow the prompt: easy to learn
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "eval/validation")}
    assert {
        "eval/validation/report.json",
        "eval/validation/eval_scatter.png",
        "eval/validation/eval_errors.png",
    } <= artifacts


def test_pyfunc_by_version_and_alias_in_a_fresh_process(sklearn_store: Path) -> None:
    out = _fresh_predict(
        sklearn_store, "models:/lenpred-sklearn@champion", "models:/lenpred-sklearn/1", "models:/lenpred-sklearn/2"
    )
    champion, first, second = out.values()
    assert champion == first
    assert len(champion) == len(PROMPTS) and all(value > 0 for value in champion)
    assert champion[0] < champion[2] < champion[1]  # 3 < 11 < 20 repetitions
    assert second != first  # version 2 is the SVR


def test_load_predictor_and_unknown_versions(sklearn_store: Path) -> None:
    store = f"sqlite:///{sklearn_store / 'mlflow.db'}"
    predictor = load_predictor("models:/lenpred-sklearn@champion", tracking_uri=store)
    assert isinstance(predictor, LengthPredictor)
    assert (
        predictor.predict(PROMPTS)
        == _fresh_predict(sklearn_store, "models:/lenpred-sklearn/1")["models:/lenpred-sklearn/1"]
    )
    with pytest.raises(SeqschedError, match=r"no version 7: versions \[1, 2\]; aliases @champion -> 1"):
        load_predictor("models:/lenpred-sklearn/7", tracking_uri=store)
    with pytest.raises(SeqschedError, match="no alias @nope"):
        load_predictor("models:/lenpred-sklearn@nope", tracking_uri=store)
    with pytest.raises(SeqschedError, match=r"no registered model 'other'.*registered: \['lenpred-sklearn'\]"):
        load_predictor("models:/other/1", tracking_uri=store)


def test_register_command_moves_the_alias(sklearn_store: Path) -> None:
    import mlflow

    store = f"sqlite:///{sklearn_store / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    run_id = client.get_model_version("lenpred-sklearn", "2").run_id
    assert (
        main(
            ["register", "--run", run_id, "--name", "lenpred-sklearn", "--alias", "challenger", "--tracking-uri", store]
        )
        == 0
    )
    assert client.get_registered_model("lenpred-sklearn").aliases["challenger"] == 3
    with pytest.raises(SeqschedError, match="no run 'missing'"):
        main(["register", "--debug", "--run", "missing", "--name", "x", "--tracking-uri", store])


def test_lora_predictor_registers_and_loads_in_a_fresh_process(
    tiny_model_dir: Path,
    length_dataset: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", "--config", str(REPO / "recipes/smollm2-cpu/train.yaml"), "--data", str(length_dataset),
                       "--generative.model.spec", str(tiny_model_dir), "--generative.optim.max_steps", "2",
                       "--generative.optim.batch_size", "8", "--generative.eval_limit", "4",
                       "--validation_limit", "8", "--output_dir", str(tmp_path / "out"), "--progress", "false",
                       "--tracking-uri", store, "--register-as", "lenpred-lora",
                       "--alias", "champion"]) == 0  # fmt: skip
    out = _fresh_predict(tmp_path, "models:/lenpred-lora@champion")["models:/lenpred-lora@champion"]
    assert len(out) == len(PROMPTS) and all(isinstance(value, int) and value >= 0 for value in out)
    # The same predictions as the saved folder gives directly.
    assert load_predictor(str(tmp_path / "out" / "predictor")).predict(PROMPTS) == out
