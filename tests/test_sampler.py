"""The label builder on the tiny model: end to end, batch planning, seeds, interruption and resume."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from data_tools.checkpoint import CHECKPOINT_FILE, Checkpoint, working_dir
from data_tools.commands import LabelConfig, run_label, split_records
from data_tools.labels import bucket_up
from data_tools.sampler import Job, LengthSampler, SamplerConfig, plan_batches, sample_seed
from data_tools.schema import load_length_dataset, load_meta
from seqsched.engines.api import GREEDY, Batching, BatchOutput, Message, SamplingParams, TimedRow
from seqsched.engines.config import EngineConfig
from seqsched.engines.hf import HFEngine
from seqsched.engines.hf_continuous import HFContinuousEngine
from seqsched.errors import InputError, SeqschedError
from seqsched.model_specs import ModelConfig
from seqsched.requests import Request
from tests.threads import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.tiny_model import synthetic_prompts

TEMPERATURES = (0.0, 0.8, 1.3)
CAP = 16  # below the longest tiny answers (~25 tokens), so some samples hit the cap


class Interrupted(RuntimeError):
    """Stands for a kill in the middle of a run."""


class CountingEngine:
    """Wraps an engine: counts generated rows and raises after a given number of batches."""

    batching = Batching.STATIC

    def __init__(self, engine: HFEngine, fail_after: int | None = None) -> None:
        self.engine = engine
        self.fail_after = fail_after
        self.batches = 0
        self.rows = 0

    def encode(self, prompt: str | Sequence[Message]) -> list[int]:
        return self.engine.encode(prompt)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.engine.decode(token_ids)

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> BatchOutput:
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise Interrupted(f"killed after {self.batches} batches")
        self.batches += 1
        self.rows += len(prompt_ids)
        return self.engine.generate(prompt_ids, max_new_tokens, sampling, seeds)


class InterruptedPool(HFContinuousEngine):
    """A continuous pool that is killed after a given number of finished generations (None: never)."""

    def __init__(self, engine: HFEngine, slots: int, fail_after: int | None = None) -> None:
        super().__init__(engine, slots)
        self.fail_after = fail_after
        self.finished = 0

    def submit(self, prompt_ids, max_tokens, priorities=None, sampling=GREEDY, seeds=None, on_finished=None):  # type: ignore[no-untyped-def]
        def counted(index: int, timed: TimedRow) -> None:
            if on_finished is not None:
                on_finished(index, timed)
            self.finished += 1
            if self.fail_after is not None and self.finished >= self.fail_after:
                raise Interrupted(f"killed after {self.finished} generations")

        return super().submit(prompt_ids, max_tokens, priorities, sampling, seeds, counted)


@pytest.fixture(scope="module")
def evicting_engine(tiny_engine: HFEngine) -> HFEngine:
    return HFEngine(tiny_engine.model, tiny_engine.tokenizer, EngineConfig(evict_finished=True))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "instructions.jsonl"
    lines = [json.dumps({"id": f"q{index}", "prompt": prompt}) for index, prompt in enumerate(synthetic_prompts(14, 5))]
    path.write_text("\n".join(lines) + "\n")
    return path


def label_config(data_file: Path, out: Path, tiny_model_dir: Path, **overrides: object) -> LabelConfig:
    config = LabelConfig(
        data=str(data_file),
        out=str(out),
        model=ModelConfig(spec=str(tiny_model_dir)),
        temperatures=TEMPERATURES,
        samples_per_temperature=2,
        max_new_tokens=CAP,
        batch_size=4,
        seed=7,
        keep_responses=True,
        progress=False,
    )
    return replace(config, **overrides)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, data_file: Path, tiny_model_dir: Path, evicting_engine: HFEngine
) -> tuple[Path, CountingEngine]:
    out = tmp_path_factory.mktemp("full") / "lengths"
    engine = CountingEngine(evicting_engine)
    run_label(label_config(data_file, out, tiny_model_dir), engine)
    return out, engine


def test_records_hold_max_label_flags_and_greedy(
    uninterrupted: tuple[Path, CountingEngine], tiny_engine: HFEngine
) -> None:
    out, engine = uninterrupted
    rows = records(out)
    assert [row["id"] for row in rows] == [f"q{index}" for index in range(14)], "file order is kept"
    assert engine.rows == 14 * 5, "one greedy sample + 2 per temperature above 0"
    prompts = synthetic_prompts(14, 5)
    for row, prompt in zip(rows, prompts, strict=True):
        assert row["prompt"] == prompt
        assert row["temperatures"] == [0.0, 0.8, 0.8, 1.3, 1.3]
        assert row["max_length"] == max(row["lengths"]) and row["label"] == bucket_up(row["max_length"], 50)
        assert row["hit_limit"] == (row["max_length"] == CAP)
        assert row["greedy_length"] == row["lengths"][0]
        assert len(row["responses"]) == 5 and row["model"].endswith(Path(row["model"]).name)
        alone = tiny_engine.generate([tiny_engine.encode(prompt)], CAP).rows[0]
        assert row["greedy_length"] == alone.num_tokens and row["responses"][0] == alone.text
    assert any(row["hit_limit"] for row in rows) and not all(row["hit_limit"] for row in rows)
    assert any(len(set(row["lengths"])) > 1 for row in rows), "sampling varies the lengths"
    dataset = load_length_dataset(out)
    assert dataset["id"] == [row["id"] for row in rows] and dataset["label"] == [row["label"] for row in rows]
    meta = load_meta(out)
    assert meta is not None and meta.temperatures == list(TEMPERATURES) and meta.counts == {"train": 14}
    assert not working_dir(out).exists(), "the checkpoint folder goes once the dataset is written"


def test_resume_after_interruption_gives_the_same_dataset(
    tmp_path: Path, data_file: Path, tiny_model_dir: Path, evicting_engine: HFEngine, uninterrupted
) -> None:
    out = tmp_path / "lengths"
    config = label_config(data_file, out, tiny_model_dir)
    with pytest.raises(Interrupted):
        run_label(config, CountingEngine(evicting_engine, fail_after=6))
    checkpoint_path = working_dir(out) / CHECKPOINT_FILE
    saved = [json.loads(line) for line in checkpoint_path.read_text().splitlines()]
    assert 0 < len(saved) <= 6 * 4 and not out.exists()
    # A kill in the middle of a write leaves a torn last line: it is dropped and generated again.
    with checkpoint_path.open("a") as handle:
        handle.write('{"id": "q3", "temperature": 1.3, "ind')
    resumed = CountingEngine(evicting_engine)
    run_label(config, resumed)
    assert resumed.rows == 14 * 5 - len(saved), "only the missing generations run again"
    assert records(out) == records(uninterrupted[0])


def test_checkpoint_keys_are_unique_and_settings_must_match(
    tmp_path: Path, data_file: Path, tiny_model_dir: Path, evicting_engine: HFEngine
) -> None:
    out = tmp_path / "lengths"
    config = label_config(data_file, out, tiny_model_dir)
    with pytest.raises(Interrupted):
        run_label(config, CountingEngine(evicting_engine, fail_after=3))
    with pytest.raises(Interrupted):
        run_label(config, CountingEngine(evicting_engine, fail_after=2))
    lines = (working_dir(out) / CHECKPOINT_FILE).read_text().splitlines()
    keys = [(row["id"], row["temperature"], row["index"]) for row in map(json.loads, lines)]
    # 3 batches of 4 greedy rows, then the 2 greedy rows left and a sampled batch of 4: none twice.
    assert len(keys) == len(set(keys)) == 3 * 4 + 2 + 4
    with pytest.raises(SeqschedError, match=r"other settings.*max_new_tokens: 16 -> 20"):
        run_label(replace(config, max_new_tokens=20), CountingEngine(evicting_engine))
    # The batch size is not a setting of the samples: a resumed run may change it.
    run_label(replace(config, batch_size=7), CountingEngine(evicting_engine))
    assert len(records(out)) == 14


def test_corrupt_checkpoint_line_names_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "x.partial"
    Checkpoint(folder, {"seed": 0})
    good = '{"id": "a", "temperature": 0.0, "index": 0, "length": 3, "hit_limit": false, "text": "x y z"}\n'
    (folder / CHECKPOINT_FILE).write_text(good + "not json\n" + good)
    with pytest.raises(InputError, match=r"checkpoint.jsonl:2: corrupt checkpoint line"):
        Checkpoint(folder, {"seed": 0})


def test_sampled_batches_are_grouped_by_greedy_length() -> None:
    jobs = [Job(request, temperature, index) for request in range(10) for temperature in (0.5, 0.9) for index in (0, 1)]
    greedy = {request: (request * 7) % 10 for request in range(10)}
    prompt_lengths = [20 - request for request in range(10)]
    batches = plan_batches(jobs, prompt_lengths, 3, greedy)
    planned = [job for batch in batches for job in batch]
    assert sorted(planned, key=repr) == sorted(jobs, key=repr), "every job planned exactly once"
    assert all(len(batch) <= 3 and len({job.temperature for job in batch}) == 1 for batch in batches)
    for temperature in (0.5, 0.9):
        order = [greedy[job.request] for job in planned if job.temperature == temperature]
        assert order == sorted(order)
    by_prompt = plan_batches([Job(r, 0.0, 0) for r in range(10)], prompt_lengths, 4)
    assert [prompt_lengths[job.request] for batch in by_prompt for job in batch] == sorted(prompt_lengths)


def test_seeds_are_stable_and_distinct() -> None:
    assert sample_seed(0, "a", 0.7, 0) == sample_seed(0, "a", 0.7, 0) < 2**63
    seeds = {sample_seed(seed, rid, t, i) for seed in (0, 1) for rid in "ab" for t in (0.3, 0.7) for i in (0, 1)}
    assert len(seeds) == 16


def test_sampler_config_is_checked() -> None:
    for bad in ({"temperatures": ()}, {"temperatures": (0.0, 0.0)}, {"temperatures": (-1.0,)}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            SamplerConfig(**bad)  # type: ignore[arg-type]
    assert SamplerConfig(temperatures=(0.0, 0.5), samples_per_temperature=3).sample_slots() == [
        (0.0, 0),
        (0.5, 0),
        (0.5, 1),
        (0.5, 2),
    ]


def test_a_continuous_pool_labels_the_same_and_checkpoints_each_generation(
    tmp_path: Path, data_file: Path, tiny_model_dir: Path, evicting_engine: HFEngine, uninterrupted
) -> None:
    """The same dataset as static batches (greedy and seeded samples alike); killed midway, the generations that
    finished are in the checkpoint and a resumed run generates only the rest."""
    out = tmp_path / "lengths"
    config = label_config(data_file, out, tiny_model_dir)
    with pytest.raises(Interrupted):
        run_label(config, InterruptedPool(evicting_engine, 3, fail_after=20))
    saved = (working_dir(out) / CHECKPOINT_FILE).read_text().splitlines()
    assert len(saved) == 20, "every finished generation was checkpointed as it finished"
    resumed = InterruptedPool(evicting_engine, 3)
    run_label(config, resumed)
    assert resumed.finished == 14 * 5 - 20
    assert records(out) == records(uninterrupted[0])


def test_label_command_builds_a_pool_of_batch_size_slots(
    tmp_path: Path, data_file: Path, tiny_model_dir: Path, uninterrupted
) -> None:
    out = tmp_path / "lengths"
    engine = EngineConfig(batching=Batching.CONTINUOUS)
    _, metrics = run_label(label_config(data_file, out, tiny_model_dir, engine=engine, batch_size=5))
    assert records(out) == records(uninterrupted[0])
    assert metrics["batches"] == len(TEMPERATURES), "one submission per temperature"


def test_sampler_without_checkpoint_runs_every_job(evicting_engine: HFEngine) -> None:
    requests = [Request(id=str(index), prompt=prompt) for index, prompt in enumerate(synthetic_prompts(5, 9))]
    engine = CountingEngine(evicting_engine)
    run = LengthSampler(engine, SamplerConfig(temperatures=(0.0,), max_new_tokens=8, batch_size=2), progress=False).run(
        requests
    )
    assert engine.batches == 3 and len(run.samples) == 5 and run.metrics()["generations"] == 5


def test_validation_split_is_seeded_and_keeps_order(uninterrupted: tuple[Path, CountingEngine]) -> None:
    from data_tools.schema import LengthRecord

    rows = [LengthRecord(**row) for row in records(uninterrupted[0])]
    splits = split_records(rows, "train", 0.25, seed=1)
    assert {name: len(part) for name, part in splits.items()} == {"train": 10, "validation": 4}
    assert sorted(r.id for part in splits.values() for r in part) == sorted(r.id for r in rows)
    assert split_records(rows, "train", 0.25, seed=1) == splits
    for part in splits.values():
        positions = [rows.index(record) for record in part]
        assert positions == sorted(positions)
    assert list(split_records(rows, "validation", 0.0, 0)) == ["validation"]
    with pytest.raises(SeqschedError):
        split_records(rows, "train", 1.0, 0)
