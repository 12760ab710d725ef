"""`--predictor` resolution: specs, oracle files, clear errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from data_tools.schema import LengthDatasetMeta, LengthRecord, save_length_dataset
from seqsched.errors import InputError, SeqschedError
from seqsched.length_files import LengthRecord as LengthFileRecord
from seqsched.requests import Request
from serving.predictors import (
    OracleLengths,
    PredictorSource,
    PromptPredictor,
    parse_predictor,
    read_oracle,
    resolve_predictor,
)

REQUESTS = [Request(id="a", prompt="one"), Request(id="b", prompt="two two")]


@pytest.mark.parametrize(
    ("spec", "kind", "target"),
    [
        ("none", PredictorSource.NONE, ""),
        ("perception", PredictorSource.PERCEPTION, ""),
        ("oracle:lengths.jsonl", PredictorSource.ORACLE, "lengths.jsonl"),
        ("models:/seqsched-smollm2@champion", PredictorSource.REGISTRY, "models:/seqsched-smollm2@champion"),
        ("models:/seqsched-smollm2/3", PredictorSource.REGISTRY, "models:/seqsched-smollm2/3"),
        ("runs:/abc123/predictor", PredictorSource.REGISTRY, "runs:/abc123/predictor"),
    ],
)
def test_parse_predictor(spec: str, kind: PredictorSource, target: str) -> None:
    parsed = parse_predictor(spec)
    assert (parsed.kind, parsed.target) == (kind, target)
    assert str(parsed) == spec


@pytest.mark.parametrize("spec", ["oracle:", "mlflow:/x", "ridge", "models/x"])
def test_bad_specs_say_what_is_accepted(spec: str) -> None:
    with pytest.raises(SeqschedError, match="oracle:FILE"):
        parse_predictor(spec)


def test_oracle_jsonl_and_batch_output_lines(tmp_path: Path) -> None:
    path = tmp_path / "lengths.jsonl"
    path.write_text(
        '{"id": "a", "true": 12}\n\n{"id": "b", "length": 40}\n'
        + json.dumps({"custom_id": "c", "response": {"body": {"usage": {"completion_tokens": 9}}}})
        + "\n"
    )
    oracle = read_oracle(path)
    assert dict(oracle.lengths) == {"a": 12, "b": 40, "c": 9}
    assert oracle.predict_requests(REQUESTS) == [12, 40]
    predictor = resolve_predictor(f"oracle:{path}")
    assert isinstance(predictor, OracleLengths) and predictor.predict_requests(REQUESTS[::-1]) == [40, 12]


def test_oracle_must_cover_every_request(tmp_path: Path) -> None:
    path = tmp_path / "lengths.jsonl"
    path.write_text('{"id": "a", "true": 12}\n')
    with pytest.raises(SeqschedError, match=r"no length for 1 of 2 request ids \('b'\)"):
        read_oracle(path).predict_requests(REQUESTS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "a", "true": 1}\n{"id": "b"}\n', ":2: no length"),
        ('{"id": "a", "true": -1}\n', ":1: the length must be an integer >= 0"),
        ('{"true": 3}\n', ":1: missing 'id'"),
        ("nope\n", ":1: invalid JSON"),
        ('{"id": "a", "true": 1}\n{"id": "a", "true": 2}\n', ":2: duplicate id 'a'"),
    ],
)
def test_bad_oracle_lines(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "lengths.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_oracle(path)
    with pytest.raises(InputError, match="no such lengths file"):
        read_oracle(tmp_path / "missing.jsonl")


def test_oracle_from_a_length_dataset(tmp_path: Path) -> None:
    def row(record_id: str, greedy: int | None, longest: int) -> LengthRecord:
        return LengthRecord(record_id, "p", [longest], [0.7], longest, 50, False, "m", greedy_length=greedy)

    folder = save_length_dataset(
        tmp_path / "ds",
        {"train": [row("a", 7, 30), row("b", None, 44)]},
        LengthDatasetMeta(model="m", temperatures=[0.0], max_new_tokens=512, bucket=50, source="test"),
    )
    assert read_oracle(folder).predict_requests(REQUESTS) == [7, 44]


def test_prompt_predictor_rounds_and_checks() -> None:
    class Fake:
        def __init__(self, values: list[object]) -> None:
            self.values = values

        def predict(self, prompts: list[str]) -> list[object]:
            return self.values[: len(prompts)]

    assert PromptPredictor(Fake([12.6, -3.0]), "fake").predict_requests(REQUESTS) == [13, 0]
    with pytest.raises(SeqschedError, match="not finite"):
        PromptPredictor(Fake([float("nan"), 1]), "fake").predict_requests(REQUESTS)
    with pytest.raises(SeqschedError, match="1 predictions for 2 prompts"):
        PromptPredictor(Fake([1]), "fake").predict_requests(REQUESTS)


def test_none_perception_and_registry() -> None:
    assert resolve_predictor("none") is None
    with pytest.raises(SeqschedError, match="needs the engine"):
        resolve_predictor("perception")
    if importlib.util.find_spec("lengthpred.registry") is None:
        with pytest.raises(SeqschedError, match=r"lengthpred\.registry is not available"):
            resolve_predictor("models:/seqsched-smollm2@champion")


def test_lengths_files_take_predictions_prompts_and_bench_reports(tmp_path: Path) -> None:
    from seqsched.length_files import read_length_records, read_lengths

    path = tmp_path / "mixed.jsonl"
    path.write_text('{"id": 1, "predicted": 30, "prompt": "Hi"}\n{"id": "b", "true": 4}\n')
    assert read_length_records(path)[0] == LengthFileRecord("1", 30, "Hi")
    report = tmp_path / "bench.json"
    report.write_text(json.dumps({"ids": ["a", "b"], "vanilla_lengths": [12, 40], "table": []}))
    assert read_lengths(report) == {"a": 12, "b": 40}
    assert read_oracle(report).predict_requests(REQUESTS) == [12, 40]
    report.write_text(json.dumps({"ids": ["a"], "vanilla_lengths": None}))
    with pytest.raises(InputError, match=r"bench\.json: ids and vanilla_lengths must be lists"):
        read_lengths(report)
    report.write_text('{"table": []}')
    with pytest.raises(InputError, match="must be a `seqsched bench` report"):
        read_lengths(report)
    report.write_text('[{"id": "a", "true": 3}, {"id": "b", "predicted": 5}]')  # a list of records, as on main
    assert read_oracle(report).predict_requests(REQUESTS) == [3, 5]
    report.write_text("[1, 2]")
    with pytest.raises(InputError, match=r"bench\.json:record 1: each record must be a JSON object"):
        read_lengths(report)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "true": 1, "prompt": 5}\n')
    with pytest.raises(InputError, match=":1: 'prompt' must be a string"):
        read_lengths(bad)


def test_oracle_lines_that_are_not_utf8_name_the_line(tmp_path: Path) -> None:
    from seqsched.length_files import read_lengths

    path = tmp_path / "oracle.jsonl"
    path.write_bytes(b'{"id": "a", "true": 3}\n{"id": "b\xff", "true": 4}\n')
    with pytest.raises(InputError, match=r"oracle\.jsonl:2: not UTF-8 text"):
        read_oracle(path)
    with pytest.raises(InputError, match=r"oracle\.jsonl:2: not UTF-8 text"):
        read_lengths(path)  # what --engine.replay and --tune.lengths read
