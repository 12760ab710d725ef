"""`seqsched label` (sample and label), `seqsched label import` (the paper's labels), `seqsched label stats`."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_tools.io import InputFormat, Request, read_requests
from data_tools.labels import PAPER_BUCKET, LabelStats, label_stats
from data_tools.schema import LengthDatasetMeta, LengthRecord, load_meta, save_length_dataset
from serving.config import parse_config, to_dict
from serving.engine_api import Engine
from serving.errors import InputError, SeqschedError
from serving.llm import ModelConfig
from serving.report import table, write_json

if TYPE_CHECKING:
    from datasets import Dataset

STATS_FILE = "stats.json"
HISTOGRAM_FILE = "label_hist.png"
SCATTER_FILE = "greedy_vs_max.png"


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
    temperatures: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7)
    """Sampling temperatures, 0 = greedy: `--temperatures [0,0.3,0.5,0.7]` or `--temperatures 0,0.3,0.5,0.7`."""
    samples_per_temperature: int = 1
    """Samples at each temperature above 0 (greedy decoding is deterministic: one sample at 0.0)."""
    max_new_tokens: int = 512
    """The cap on each response; records with a sample at the cap are flagged hit_limit."""
    batch_size: int = 64
    """Rows per generated batch. A SmolLM2 CPU step costs ~80 ms + ~4 ms per row, so big batches are cheap per row."""
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


@dataclass(frozen=True)
class StatsConfig:
    """Statistics and plots of a length dataset: `seqsched label stats DIR`."""

    dataset: str = ""
    """The length dataset folder (also accepted as the first positional argument)."""
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


def _normalize_temperatures(argv: Sequence[str]) -> list[str]:
    """Accept `--temperatures 0,0.3` and `--temperatures 0.7` besides jsonargparse's list form `[0,0.3]`."""
    args = list(argv)
    for position, arg in enumerate(args):
        if arg == "--temperatures" and position + 1 < len(args) and not args[position + 1].lstrip().startswith("["):
            args[position + 1] = f"[{args[position + 1]}]"
        elif arg.startswith("--temperatures=") and not arg.partition("=")[2].lstrip().startswith("["):
            args[position] = f"--temperatures=[{arg.partition('=')[2]}]"
    return args


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
    from data_tools.checkpoint import Checkpoint, working_dir
    from data_tools.sampler import LengthSampler, SamplerConfig, build_record

    if not config.data or not config.out:
        raise SeqschedError("--data (instructions) and --out (output folder) are required")
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
    if engine is None:
        from serving.engine import EngineConfig, HFEngine

        if config.torch_threads is not None:
            import torch

            torch.set_num_threads(config.torch_threads)
        # Evicting finished rows gives the same outputs and skips their steps; labels need no static batching.
        engine = HFEngine.from_spec(config.model, EngineConfig(evict_finished=True))

    work = working_dir(config.out)
    checkpoint = Checkpoint(work, _sampler_settings(config))
    if checkpoint.samples:
        torn = " (a torn last line was dropped)" if checkpoint.dropped_torn_line else ""
        print(f"resuming: {len(checkpoint.samples)} finished generations in {checkpoint.path}{torn}")
    sampler = LengthSampler(engine, sampler_config, checkpoint, progress=config.progress, on_batch=on_batch)
    try:
        run = sampler.run(requests)
    except KeyboardInterrupt:
        print(
            f"\nstopped: {len(checkpoint.samples)} finished generations are in {checkpoint.path}; "
            "run the same command again to resume"
        )
        raise

    records = [
        build_record(
            request,
            run.samples,
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


def label_main(argv: Sequence[str]) -> int:
    """`seqsched label` (and the `import` / `stats` sub-subcommands)."""
    from datasets.utils import disable_progress_bars

    disable_progress_bars()  # one tqdm bar (the sampler's) is enough
    if argv and argv[0] == "import":
        return import_main(argv[1:])
    if argv and argv[0] == "stats":
        return stats_main(argv[1:])
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    config = parse_config(LabelConfig, _normalize_temperatures(argv), prog="seqsched label")
    out, metrics = run_label(config)
    columns = ["generations", "resumed_generations", "generated_tokens", "tokens_per_s", "effective_token_ratio"]
    print(table([metrics], [*columns, "wall_s"]))
    report_stats(out, out / "stats")
    print(f"dataset: {out}")
    return 0


def import_main(argv: Sequence[str]) -> int:
    """`seqsched label import`."""
    from data_tools.paper_labels import paper_records, read_paper_lengths

    config = parse_config(ImportConfig, argv, prog="seqsched label import")
    if not config.lengths or not config.data or not config.out:
        raise SeqschedError("--lengths, --data and --out are required")
    if config.bucket < 1 or config.max_new_tokens < 1:
        raise SeqschedError("--bucket and --max_new_tokens must be >= 1")
    records = paper_records(
        config.lengths, config.data, config.model, config.max_new_tokens, config.bucket, config.input_format
    )
    temperatures = sorted(read_paper_lengths(config.lengths)[0].lengths)
    meta = LengthDatasetMeta(
        model=config.model,
        temperatures=temperatures,
        max_new_tokens=config.max_new_tokens,
        bucket=config.bucket,
        source=f"{config.lengths} + {config.data}",
        extra={"imported": True, "config": to_dict(config)},
    )
    out = save_length_dataset(
        config.out, split_records(records, config.split, config.validation_fraction, config.seed), meta
    )
    report_stats(out, out / "stats", plots=False)
    print(f"dataset: {out}")
    return 0


def load_splits(path: str | Path) -> dict[str, Dataset]:
    """Every split of a length dataset folder, by name; clear errors for anything else."""
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise InputError(path, None, "no such length dataset folder (make one with `seqsched label`)")
    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise InputError(path, None, f"not a dataset folder saved by seqsched label ({error})") from error
    splits = dict(loaded.items()) if isinstance(loaded, DatasetDict) else {"data": loaded}
    for name, split in splits.items():
        missing = {"id", "max_length", "label", "hit_limit"} - set(split.column_names)
        if missing:
            raise InputError(path, None, f"split {name!r} is not a length dataset: missing columns {sorted(missing)}")
    return splits


def dataset_stats(splits: dict[str, Dataset]) -> dict[str, LabelStats]:
    """Per-split statistics of a length dataset."""
    return {
        name: label_stats(
            split["max_length"],
            split["label"],
            split["hit_limit"],
            split["greedy_length"] if "greedy_length" in split.column_names else None,
        )
        for name, split in splits.items()
        if len(split)
    }


def _stats_rows(stats: dict[str, LabelStats]) -> list[dict[str, Any]]:
    rows = []
    for name, split in stats.items():
        rows.append(
            {
                "split": name,
                "count": split.count,
                "mean": split.max_length.mean,
                "median": split.max_length.median,
                "p90": split.max_length.p90,
                "p99": split.max_length.p99,
                "at_limit_%": 100 * split.at_limit_share,
                "mean_label": split.label.mean,
                "greedy_mean": split.greedy_length.mean if split.greedy_length else None,
                "spread_mean": split.spread.mean if split.spread else None,
                "spread_p90": split.spread.p90 if split.spread else None,
                "max>greedy_%": None if split.max_above_greedy_share is None else 100 * split.max_above_greedy_share,
            }
        )
    return rows


def report_stats(dataset: str | Path, out: str | Path, plots: bool = True) -> dict[str, Any]:
    """Print the stats table of a length dataset; write stats.json (and the PNGs) under out."""
    dataset, out = Path(dataset), Path(out)
    splits = load_splits(dataset)
    stats = dataset_stats(splits)
    meta = load_meta(dataset)
    rows = _stats_rows(stats)
    print("max length over samples per instruction (tokens); spread = max - greedy")
    print(table(rows))
    report: dict[str, Any] = {
        "dataset": str(dataset),
        "meta": None if meta is None else {key: value for key, value in asdict(meta).items() if key != "extra"},
        "splits": {name: asdict(split) for name, split in stats.items()},
        "table": rows,
    }
    if plots:
        report["plots"] = _write_plots(dataset.name, splits, out, meta)
    write_json(out / STATS_FILE, report)
    print(f"stats: {out / STATS_FILE}")
    return report


def _write_plots(name: str, splits: dict[str, Dataset], out: Path, meta: LengthDatasetMeta | None) -> list[str]:
    from data_tools.label_plots import greedy_vs_max, label_histogram

    bucket = meta.bucket if meta else PAPER_BUCKET
    title = f"{name}: {meta.model if meta else 'unknown model'}"
    labels = {split_name: split["label"] for split_name, split in splits.items()}
    written = [str(label_histogram(labels, bucket, out / HISTOGRAM_FILE, title))]
    pairs = {
        split_name: [(g, m) for g, m in zip(split["greedy_length"], split["max_length"], strict=True) if g is not None]
        for split_name, split in splits.items()
        if "greedy_length" in split.column_names
    }
    scatter = greedy_vs_max(pairs, out / SCATTER_FILE, cap=meta.max_new_tokens if meta else None, title=title)
    if scatter is not None:
        written.append(str(scatter))
    for path in written:
        print(f"plot: {path}")
    return written


def stats_main(argv: Sequence[str]) -> int:
    """`seqsched label stats DIR`."""
    args = list(argv)
    if args and not args[0].startswith("-"):
        args = ["--dataset", args[0], *args[1:]]
    config = parse_config(StatsConfig, args, prog="seqsched label stats")
    if not config.dataset:
        raise SeqschedError("give the length dataset folder: seqsched label stats DIR")
    report_stats(config.dataset, config.out or Path(config.dataset) / "stats", plots=config.plots)
    return 0


@dataclass(frozen=True)
class ExportConfig:
    """Export a length dataset's lengths only (no prompts, no texts) in the paper's format: a JSON list of
    {"id", "L_t0.0", "L_t0.3", ...}; `seqsched label import` rebuilds the dataset from it and the instructions."""

    dataset: str = ""
    """The length dataset folder (also accepted as the first positional argument)."""
    out: str = ""
    """The JSON file to write."""
    split: str | None = None
    """Which split (default: all splits, in order)."""


def export_lengths(dataset_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The lengths of every record, one L_t<temperature> per sample (one sample per temperature)."""
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(dataset_dir))
    splits = [loaded[split]] if split else (list(loaded.values()) if isinstance(loaded, DatasetDict) else [loaded])
    rows: list[dict[str, Any]] = []
    for part in splits:
        for index, record in enumerate(part):
            temperatures = [float(value) for value in record["temperatures"]]
            if len(set(temperatures)) != len(temperatures):
                raise InputError(dataset_dir, f"record {index}", "the paper's format holds one sample per temperature")
            row: dict[str, Any] = {"id": str(record["id"])}
            row.update(
                {
                    f"L_t{temperature:.1f}": int(n)
                    for temperature, n in zip(temperatures, record["lengths"], strict=True)
                }
            )
            rows.append(row)
    return rows


def export_main(argv: Sequence[str]) -> int:
    """`seqsched label export DIR --out FILE`."""
    import json

    args = list(argv)
    if args and not args[0].startswith("-"):
        args = ["--dataset", args[0], *args[1:]]
    config = parse_config(ExportConfig, args, prog="seqsched label export")
    if not config.dataset or not config.out:
        raise SeqschedError("give the length dataset folder and --out FILE: seqsched label export DIR --out FILE")
    rows = export_lengths(config.dataset, config.split)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial")
    staging.write_text("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n", encoding="utf-8")
    staging.replace(out)
    print(f"{len(rows)} records' lengths -> {out}")
    return 0
