"""`seqsched label` (sample and label), `seqsched label import` (the paper's labels), `seqsched label stats`."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from data_tools.labels import PAPER_BUCKET
from data_tools.schema import LengthDatasetMeta, LengthRecord, save_length_dataset
from data_tools.stats_report import report_stats
from seqsched.config import FloatList, to_dict
from seqsched.distributed import current_process, gather, pin_device
from seqsched.engines.api import Batching, Engine
from seqsched.engines.config import EngineConfig
from seqsched.errors import InputError, SeqschedError, require
from seqsched.files import check_writable, write_text
from seqsched.model_specs import ModelConfig
from seqsched.requests import InputFormat, Request, read_requests
from seqsched.sharding import shard_by_predicted_tokens
from seqsched.tables import table


@dataclass(frozen=True)
class LabelConfig:
    """Build a length dataset: sample responses per instruction at several temperatures, label each
    instruction with its longest response rounded up to a bucket. Also: `seqsched label import --help`
    (the paper's labels), `seqsched label stats --help` and `seqsched label export --help`."""

    data: str = ""
    """Instructions: ShareGPT/Alpaca JSON(L), plain JSONL {id, prompt}, OpenAI Batch JSONL or a dataset folder."""
    out: str = ""
    """Output folder (HF dataset + <split>.jsonl + meta.json); an unfinished run keeps its checkpoint in OUT.partial."""
    input_format: InputFormat = InputFormat.AUTO
    skip_bad: bool = False
    """Skip records that cannot be read (and list them) instead of stopping at the first."""
    limit: int | None = None
    """Label only the first N instructions of the file."""
    model: ModelConfig = field(default_factory=ModelConfig)
    temperatures: FloatList = field(default_factory=lambda: FloatList((0.0, 0.3, 0.5, 0.7)))
    """Sampling temperatures, 0 = greedy: `--temperatures [0,0.3,0.5,0.7]` or `--temperatures 0,0.3,0.5,0.7`."""
    samples_per_temperature: int = 1
    """Samples at each temperature above 0 (greedy decoding is deterministic: one sample at 0.0)."""
    max_new_tokens: int = 512
    """The cap on each response; records with a sample at the cap are flagged hit_limit."""
    batch_size: int = 64
    """Rows per generated batch (with `--engine.batching continuous`: the pool's slots, unless --engine.slots).
    A SmolLM2 CPU step costs ~80 ms + ~4 ms per row, so big batches are cheap per row."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """`--engine.batching continuous`: every generation of a temperature goes through one pool of slots that is
    refilled as rows finish (the longest expected first); static (default): batches grouped by length whose
    finished rows are evicted. Same samples either way (per-generation seeds)."""
    top_p: float = 1.0
    seed: int = 0
    """Seeds every sample (with its instruction id, temperature and index) and the validation split."""
    bucket: int = PAPER_BUCKET
    """Labels are the max length rounded up to a multiple of this (the paper: 50)."""
    keep_responses: bool = False
    """Keep the sampled texts in the dataset (the checkpoint always has them)."""
    split: str = "train"
    """Name of the split that holds the instructions (e.g. `validation` when labelling held-out data)."""
    validation_fraction: float = 0.0
    """Share of instructions held out into a `validation` split (seeded; file order kept inside each split)."""
    progress: bool = True
    """Show a tqdm progress bar (instructions/s, tokens/s)."""
    torch_threads: int | None = None
    """CPU threads for torch (default: torch's choice). On cores shared with other jobs, 1 is several times faster."""

    def __post_init__(self) -> None:
        require(self.limit is None or self.limit >= 1, "limit", f"must be >= 1 (or unset: all), got {self.limit}")
        temperatures = list(self.temperatures)
        require(bool(temperatures), "temperatures", "give at least one temperature")
        require(min(temperatures, default=0) >= 0, "temperatures", f"must be >= 0, got {temperatures}")
        require(len(set(temperatures)) == len(temperatures), "temperatures", f"must be distinct, got {temperatures}")
        for name in ("samples_per_temperature", "max_new_tokens", "batch_size", "bucket"):
            value = getattr(self, name)
            require(value >= 1, name, f"must be >= 1, got {value}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(bool(self.split), "split", "must be a split name (e.g. train)")
        _check_fraction(self.validation_fraction)
        threads = self.torch_threads
        require(threads is None or threads >= 1, "torch_threads", f"must be >= 1, got {threads}")


def _check_fraction(value: float) -> None:
    require(0 <= value < 1, "validation_fraction", f"must be in [0, 1), got {value}")


@dataclass(frozen=True)
class ImportConfig:
    """Import the paper's published length labels (L_t0.0 ... L_t0.7, L_gt per id) as a length dataset."""

    lengths: str = ""
    """The paper's length file, e.g. ../shared/data/sequence-scheduling/alpaca-train-10k-length.json."""
    data: str = ""
    """The instructions with the same ids, e.g. ../shared/data/sequence-scheduling/alpaca-train-10k.json."""
    out: str = ""
    """Output folder (HF dataset + <split>.jsonl + meta.json)."""
    input_format: InputFormat = InputFormat.AUTO
    model: str = "vicuna-7b (paper labels)"
    """What the records name as their model."""
    max_new_tokens: int = 512
    """The cap the labels were sampled with: a max length at or above it is flagged hit_limit."""
    bucket: int = PAPER_BUCKET
    split: str = "train"
    validation_fraction: float = 0.0
    seed: int = 0
    skip_bad: bool = False
    """Skip records of either file that cannot be read (and list them) instead of stopping at the first."""
    strict: bool = False
    """Stop when some instructions have no lengths (by default they are left out, and counted)."""
    limit: int | None = None
    """Import only the first N instructions that have lengths (instruction-file order)."""

    def __post_init__(self) -> None:
        require(self.limit is None or self.limit >= 1, "limit", f"must be >= 1, got {self.limit}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.bucket >= 1, "bucket", f"must be >= 1, got {self.bucket}")
        require(bool(self.split), "split", "must be a split name (e.g. train)")
        _check_fraction(self.validation_fraction)


@dataclass(frozen=True)
class StatsConfig:
    """Statistics and plots of a length dataset: `seqsched label stats DIR`."""

    dataset: str = ""
    """The length dataset folder."""
    out: str | None = None
    """Where stats.json and the PNGs go (default: DIR/stats)."""
    plots: bool = True


def split_records(
    records: Sequence[LengthRecord], name: str, validation_fraction: float, seed: int
) -> dict[str, list[LengthRecord]]:
    """All records under name, or a seeded share of them held out as `validation` (file order kept)."""
    if not 0 <= validation_fraction < 1:
        raise SeqschedError(f"--validation_fraction must be in [0, 1), got {validation_fraction}")
    held_out = round(len(records) * validation_fraction)
    if held_out == 0:
        return {name: list(records)}
    if name == "validation":
        raise SeqschedError("--split validation cannot be combined with --validation_fraction; name the rest `train`")
    chosen = set(random.Random(seed).sample(range(len(records)), held_out))
    return {
        name: [record for index, record in enumerate(records) if index not in chosen],
        "validation": [record for index, record in enumerate(records) if index in chosen],
    }


def _sampler_settings(config: LabelConfig) -> dict[str, Any]:
    """What decides the samples: a resumed run must match these."""
    return {
        "data": str(Path(config.data).resolve()),
        "model": config.model.spec,
        "dtype": config.model.dtype.value,
        "temperatures": list(config.temperatures),
        "samples_per_temperature": config.samples_per_temperature,
        "max_new_tokens": config.max_new_tokens,
        "top_p": config.top_p,
        "seed": config.seed,
    }


def _reference_length(engine: Engine, request: Request) -> int | None:
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None or not request.reference:
        return None
    return len(tokenizer(request.reference, add_special_tokens=False)["input_ids"])


def run_label(
    config: LabelConfig, engine: Engine | None = None, on_batch: Callable[[int], None] | None = None
) -> tuple[Path, dict[str, float]]:
    """Sample, checkpoint and write the length dataset; returns its folder and this process's metrics."""
    from data_tools.checkpoint import Checkpoint, finished_samples, working_dir
    from data_tools.sampler import LengthSampler, SamplerConfig, build_record

    if not config.data or not config.out:
        raise SeqschedError("--data (instructions) and --out (output folder) are required")
    check_writable(config.out, "out", folder=True)
    check_writable(working_dir(config.out), "out", folder=True)
    try:
        sampler_config = SamplerConfig(
            temperatures=tuple(float(t) for t in config.temperatures),
            samples_per_temperature=config.samples_per_temperature,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            top_p=config.top_p,
            seed=config.seed,
        )
    except ValueError as error:
        raise SeqschedError(f"bad sampling settings: {error}") from None
    if config.bucket < 1:
        raise SeqschedError(f"--bucket must be >= 1, got {config.bucket}")
    read = read_requests(config.data, config.input_format, skip_bad=config.skip_bad)
    for bad in read.bad:
        print(f"skipped {bad}")
    requests = read.requests[: config.limit] if config.limit is not None else read.requests
    if not requests:
        raise SeqschedError(f"{config.data}: no instructions to label")
    split_records([], config.split, config.validation_fraction, config.seed)  # fail on bad split options early
    process = current_process()
    mine = shard_by_predicted_tokens([len(request.prompt) for request in requests], process.count)[process.index]
    if engine is None:
        from seqsched.engines.selection import build_engine, set_torch_threads

        set_torch_threads(config.torch_threads)
        pin_device(process)
        # Evicting finished rows gives the same outputs and skips their steps; labels need no static batching.
        engine_config = replace(config.engine, evict_finished=True)
        if engine_config.batching is Batching.CONTINUOUS and engine_config.slots is None:
            engine_config = replace(engine_config, slots=config.batch_size)
        engine = build_engine(engine_config, config.model)

    work = working_dir(config.out)
    # One checkpoint per process of a data-parallel run; each skips what any earlier run's checkpoint holds.
    folder = work if process.count == 1 else work / f"shard-{process.index}"
    checkpoint = Checkpoint(folder, _sampler_settings(config))
    done = finished_samples(work, _sampler_settings(config))
    if done:
        torn = " (a torn last line was dropped)" if checkpoint.dropped_torn_line else ""
        print(f"resuming: {len(done)} finished generations in {work}{torn}")
    sampler = LengthSampler(
        engine, sampler_config, checkpoint, progress=config.progress and process.main, on_batch=on_batch, done=done
    )
    try:
        run = sampler.run([requests[index] for index in mine])
    except KeyboardInterrupt:
        print(
            f"\nstopped: {len(checkpoint.samples)} finished generations are in {checkpoint.path}; "
            "run the same command again to resume"
        )
        raise
    samples = run.samples
    metrics = run.metrics()
    if process.count > 1:
        shards = gather((process.index, run.samples, metrics))
        samples = {key: sample for _, part, _ in shards for key, sample in part.items()}
        metrics = {
            **metrics,
            "processes": process.count,
            "generations": sum(part[2]["generations"] for part in shards),
            "generated_tokens": sum(part[2]["generated_tokens"] for part in shards),
        }
        if not process.main:
            return Path(config.out), metrics  # the main process writes the dataset

    records = [
        build_record(
            request,
            samples,
            sampler_config,
            config.model.spec,
            config.bucket,
            config.keep_responses,
            _reference_length(engine, request),
        )
        for request in requests
    ]
    metrics = run.metrics()
    meta = LengthDatasetMeta(
        model=config.model.spec,
        temperatures=list(sampler_config.temperatures),
        max_new_tokens=config.max_new_tokens,
        bucket=config.bucket,
        source=str(config.data),
        extra={
            "samples_per_temperature": config.samples_per_temperature,
            "top_p": config.top_p,
            "seed": config.seed,
            "skipped_records": len(read.bad),
            "last_process": metrics,
            "config": to_dict(config),
        },
    )
    out = save_length_dataset(
        config.out, split_records(records, config.split, config.validation_fraction, config.seed), meta
    )
    shutil.rmtree(work, ignore_errors=True)
    return out, metrics


def label(config: LabelConfig, engine: Engine | None = None) -> Path:
    """`seqsched label`: sample, checkpoint, write the length dataset, print its statistics (engine: an already
    loaded engine to sample with; default: load config.model)."""
    from datasets.utils import disable_progress_bars

    disable_progress_bars()  # one tqdm bar (the sampler's) is enough
    out, metrics = run_label(config, engine)
    if not current_process().main:
        return out
    columns = ["generations", "resumed_generations", "generated_tokens", "tokens_per_s", "effective_token_ratio"]
    print(table([metrics], [*columns, "wall_s"]))
    report_stats(out, out / "stats")
    print(f"dataset: {out}")
    return out


def label_import(config: ImportConfig) -> Path:
    """`seqsched label import`: the paper's length file + its instructions -> a length dataset."""
    from datasets.utils import disable_progress_bars

    from data_tools.paper_labels import import_paper_labels

    disable_progress_bars()
    if not config.lengths or not config.data or not config.out:
        raise SeqschedError("--lengths, --data and --out are required")
    check_writable(config.out, "out", folder=True)
    imported = import_paper_labels(
        config.lengths,
        config.data,
        config.model,
        config.max_new_tokens,
        config.bucket,
        config.input_format,
        skip_bad=config.skip_bad,
    )
    for bad in imported.bad:
        print(f"skipped {bad}")
    if imported.uncovered:
        shown = ", ".join(repr(record_id) for record_id in imported.uncovered[:5])
        more = " ..." if len(imported.uncovered) > 5 else ""
        total = len(imported.records) + len(imported.uncovered)
        message = (
            f"{len(imported.uncovered)} of {total} instructions of {config.data} have no lengths in "
            f"{config.lengths} ({shown}{more})"
        )
        if config.strict:
            raise SeqschedError(f"{message}; drop --strict to import the {len(imported.records)} that have")
        print(f"left out: {message}")
    meta = LengthDatasetMeta(
        model=config.model,
        temperatures=imported.temperatures,
        max_new_tokens=config.max_new_tokens,
        bucket=config.bucket,
        source=f"{config.lengths} + {config.data}",
        extra={
            "imported": True,
            "uncovered_instructions": len(imported.uncovered),
            "skipped_records": len(imported.bad),
            "config": to_dict(config),
        },
    )
    records = imported.records[: config.limit] if config.limit is not None else imported.records
    out = save_length_dataset(
        config.out, split_records(records, config.split, config.validation_fraction, config.seed), meta
    )
    report_stats(out, out / "stats", plots=False)
    print(f"imported {len(records)} instructions; dataset: {out}")
    return out


def label_stats(config: StatsConfig) -> dict[str, Any]:
    """`seqsched label stats --dataset DIR`: the statistics table, stats.json and plots."""
    if not config.dataset:
        raise SeqschedError("give the length dataset folder: seqsched label stats --dataset DIR")
    return report_stats(config.dataset, config.out or Path(config.dataset) / "stats", plots=config.plots)


@dataclass(frozen=True)
class ExportConfig:
    """Export a length dataset's lengths only (no prompts, no texts) in the paper's format: a JSON list of
    {"id", "L_t0.0", "L_t0.3", ...}; `seqsched label import` rebuilds the dataset from it and the instructions."""

    dataset: str = ""
    """The length dataset folder."""
    out: str = ""
    """The JSON file to write."""
    split: str | None = None
    """Which split (default: all splits, in order)."""


def export_lengths(dataset_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The lengths of every record, one L_t<temperature> per sample (one sample per temperature)."""
    from datasets import DatasetDict, load_from_disk

    from data_tools.paper_labels import sample_key

    loaded = load_from_disk(str(dataset_dir))
    splits = [loaded[split]] if split else (list(loaded.values()) if isinstance(loaded, DatasetDict) else [loaded])
    rows: list[dict[str, Any]] = []
    for part in splits:
        for index, record in enumerate(part):
            temperatures = [float(value) for value in record["temperatures"]]
            if len(set(temperatures)) != len(temperatures):
                raise InputError(
                    dataset_dir, f"record {index + 1}", "the paper's format holds one sample per temperature"
                )
            row: dict[str, Any] = {"id": str(record["id"])}
            row.update(
                {
                    sample_key(temperature): int(n)
                    for temperature, n in zip(temperatures, record["lengths"], strict=True)
                }
            )
            rows.append(row)
    return rows


def label_export(config: ExportConfig) -> Path:
    """`seqsched label export --dataset DIR --out FILE`."""
    import json

    if not config.dataset or not config.out:
        raise SeqschedError("give --dataset (a length dataset folder) and --out FILE")
    rows = export_lengths(config.dataset, config.split)
    out = write_text(config.out, "[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n")
    print(f"{len(rows)} records' lengths -> {out}")
    return out
