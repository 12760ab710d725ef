"""Importing the paper's published length labels: schema, order, id checks, bad input, the README's figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.labels import label_stats
from data_tools.paper_labels import PAPER_MODEL, paper_records, read_paper_lengths
from data_tools.schema import load_length_dataset, load_meta
from seqsched.errors import InputError, SeqschedError
from seqsched_cli.main import main

LENGTHS = [
    {"id": "5", "L_gt": 160, "L_t0.7": 220, "L_t0.5": 277, "L_t0.3": 142, "L_t0.0": 115},
    {"id": "32", "L_gt": 8, "L_t0.7": 9, "L_t0.5": 9, "L_t0.3": 9, "L_t0.0": 9},
    {"id": "7", "L_gt": 49, "L_t0.7": 86, "L_t0.5": 101, "L_t0.3": 120, "L_t0.0": 83},
    {"id": "40", "L_gt": 600, "L_t0.7": 512, "L_t0.5": 300, "L_t0.3": 512, "L_t0.0": 512},
]


def conversation(record_id: str, prompt: str) -> dict:
    return {"id": record_id, "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": "ok"}]}


def write_pair(folder: Path, lengths: list[dict] = LENGTHS, ids: list[str] | None = None) -> tuple[Path, Path]:
    lengths_path, data_path = folder / "lengths.json", folder / "data.json"
    lengths_path.write_text(json.dumps(lengths, indent=4))
    ids = ids if ids is not None else [row["id"] for row in lengths]
    data_path.write_text(json.dumps([conversation(record_id, f"prompt {record_id}") for record_id in ids], indent=1))
    return lengths_path, data_path


def test_records_follow_the_paper(tmp_path: Path) -> None:
    records = paper_records(*write_pair(tmp_path))
    assert [record.id for record in records] == ["5", "32", "7", "40"], "file order is kept"
    first = records[0]
    assert first.prompt == "prompt 5" and first.model == PAPER_MODEL
    assert first.temperatures == [0.0, 0.3, 0.5, 0.7] and first.lengths == [115, 142, 277, 220]
    assert (first.max_length, first.label, first.greedy_length, first.reference_length) == (277, 300, 115, 160)
    assert [record.label for record in records] == [300, 50, 150, 550]
    assert [record.hit_limit for record in records] == [False, False, False, True]


def test_cli_import_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lengths_path, data_path = write_pair(tmp_path)
    out = tmp_path / "paper"
    argv = ["label", "import", "--lengths", str(lengths_path), "--data", str(data_path), "--out", str(out)]
    assert main(argv) == 0
    dataset = load_length_dataset(out)
    assert dataset["id"] == ["5", "32", "7", "40"] and dataset["max_length"] == [277, 9, 120, 512]
    meta = load_meta(out)
    assert meta is not None and meta.model == PAPER_MODEL and meta.max_new_tokens == 512 and meta.counts == {"train": 4}
    stats = json.loads((out / "stats" / "stats.json").read_text())
    assert stats["splits"]["train"]["at_limit_share"] == 0.25
    assert "| train | 4" in capsys.readouterr().out


def test_id_mismatch_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lengths_path, data_path = write_pair(tmp_path, ids=["5", "32", "8", "9"])
    with pytest.raises(SeqschedError) as error:
        paper_records(lengths_path, data_path)
    message = str(error.value)
    assert "2 ids of" in message and "'7', '40'" in message
    argv = ["label", "import", "--lengths", str(lengths_path), "--data", str(data_path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be in the instruction file" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (
            {"id": "6", "L_t0.0": 1, "L_t0.3": "long", "L_t0.5": 1, "L_t0.7": 1},
            "field 'L_t0.3' must be an integer >= 0",
        ),
        ({"id": "6", "L_t0.0": 1, "L_t0.3": 1, "L_t0.5": 1, "L_t0.7": -3}, "field 'L_t0.7' must be an integer >= 0"),
        ({"L_t0.0": 3}, "missing 'id'"),
        ({"id": "6", "L_gt": 3}, "no sampled lengths"),
        ({"id": "6", "L_t0.0": 3}, "temperatures [0.0] differ from the first record's [0.0, 0.3, 0.5, 0.7]"),
        ({"id": "5", "L_t0.0": 3, "L_t0.3": 1, "L_t0.5": 1, "L_t0.7": 1}, "duplicate id '5'"),
    ],
)
def test_bad_length_records_name_the_record(tmp_path: Path, record: dict, problem: str) -> None:
    path = tmp_path / "lengths.json"
    path.write_text(json.dumps([LENGTHS[0], record]))
    with pytest.raises(InputError) as error:
        read_paper_lengths(path)
    assert str(error.value).startswith(f"{path}:record 2: {problem}")


def test_bad_jsonl_line_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "lengths.jsonl"
    path.write_text(json.dumps(LENGTHS[0]) + "\n" + json.dumps(LENGTHS[1]) + "\n{oops\n")
    with pytest.raises(InputError, match=r"lengths.jsonl:3: invalid JSON"):
        read_paper_lengths(path)
    with pytest.raises(InputError, match="no such length file"):
        read_paper_lengths(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"id": "5",\n  "L_t0.0": 1,,\n}]')
    with pytest.raises(InputError, match=r"broken.json:3: invalid JSON"):
        read_paper_lengths(broken)


def test_bad_instruction_record_names_file_and_record(tmp_path: Path) -> None:
    lengths_path, data_path = write_pair(tmp_path)
    data = json.loads(data_path.read_text())
    data[2]["conversations"] = []
    data_path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"data.json:record 3: missing or empty 'conversations' list"):
        paper_records(lengths_path, data_path)


def test_shared_labels_reproduce_the_readme_figures(shared_data: Path) -> None:
    """Mean max ~164 and 2.2% at or over 512: the raw max (not bucketed) of the validation labels."""
    records = paper_records(shared_data / "alpaca-val-10k-length.json", shared_data / "alpaca-val-10k.json")
    stats = label_stats(
        [r.max_length for r in records], [r.label for r in records], [r.hit_limit for r in records], None
    )
    assert stats.count == 10_000
    assert stats.max_length.mean == pytest.approx(163.9, abs=0.05)
    assert stats.at_limit_share == pytest.approx(0.0215)
    assert stats.label.mean == pytest.approx(189.2, abs=0.05), "the bucketed mean is not the README's figure"


def test_lengths_for_part_of_the_instructions(tmp_path: Path) -> None:
    lengths_path, data_path = write_pair(tmp_path)
    rows = json.loads(lengths_path.read_text())
    lengths_path.write_text(json.dumps(rows[:2]))
    records = paper_records(lengths_path, data_path)
    assert [record.id for record in records] == [row["id"] for row in rows[:2]]


def test_sample_keys_never_collide() -> None:
    from data_tools.paper_labels import sample_key

    assert [sample_key(t) for t in (0.0, 0.3, 0.5, 0.7)] == ["L_t0.0", "L_t0.3", "L_t0.5", "L_t0.7"]
    temperatures = [0.0, 0.2, 0.25, 0.3, 0.7, 1.0, 1.05, 0.123]
    keys = [sample_key(t) for t in temperatures]
    assert len(set(keys)) == len(keys), keys
    assert sample_key(0.25) == "L_t0.25"
    rows = [{"id": "5", **{key: 10 + index for index, key in enumerate(keys)}}]
    (lengths,) = _read_rows(rows)
    assert lengths.lengths == {t: 10 + index for index, t in enumerate(temperatures)}


def _read_rows(rows: list[dict]) -> list:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lengths.json"
        path.write_text(json.dumps(rows))
        return read_paper_lengths(path)
