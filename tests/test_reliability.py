"""Long batch jobs never lose work (issue 15): `serve` killed by a real signal resumes to the output an
uninterrupted run writes, a second run on one output is refused, one bad request is one error line, unwritable
outputs and undecodable input bytes are one-line errors before any model loads, and bad option values name the
option on every command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqsched.files import exclusive_lock
from seqsched.requests import read_requests
from seqsched_cli.main import main
from serving.batch_io import read_batch_input
from serving.runner.checkpoint import FINISHED_FILE, LOCK_FILE, working_dir
from serving.serve_command import metrics_path
from tests.threads import one_torch_thread  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parent.parent
PROMPTS = 12
SLOW_SERVE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background shell ignores it)\n"
    "from seqsched.engines.hf import HFEngine\n"
    "generate = HFEngine.generate\n"
    "def slow(self, *args, **kwargs):\n"
    "    time.sleep(float(sys.argv[1]))  # a real model's batch takes seconds; the tiny one's, milliseconds\n"
    "    return generate(self, *args, **kwargs)\n"
    "HFEngine.generate = slow\n"
    "from seqsched_cli.main import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def plain_requests(path: Path) -> Path:
    words = ["apple", "cat", "dog", "fish", "kite", "lamp"]
    lines = [
        {"id": f"r{index}", "prompt": f"repeat {words[index % 6]} {3 + index} times", "max_tokens": 24}
        for index in range(PROMPTS)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def serve_argv(inputs: Path, output: Path, model: Path, *extra: str) -> list[str]:
    return [
        "serve", "--input", str(inputs), "--output", str(output), "--model.spec", str(model),
        "--strategy", "vanilla", "--batch_size", "2", "--limit", "30", "--progress", "false", *extra,
    ]  # fmt: skip


def answers(path: Path) -> list[tuple[str, str, int, str]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [(line["id"], line["output"], line["num_tokens"], line["finish_reason"]) for line in lines]


def wait_for_lines(path: Path, process: subprocess.Popen, count: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve ended early ({process.returncode}): {process.communicate()[1][-2000:]}")
        if path.exists() and (lines := path.read_bytes().count(b"\n")) >= count:
            return lines
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not get {count} lines")


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "sigint", "sigkill"]
)
def test_killed_serve_resumes_to_the_uninterrupted_output(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], signum: int
) -> None:
    inputs = plain_requests(tmp_path / "in.jsonl")
    whole, output = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    assert main(serve_argv(inputs, whole, tiny_model_dir)) == 0
    capsys.readouterr()

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", SLOW_SERVE, "1.0", *serve_argv(inputs, output, tiny_model_dir)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = working_dir(output) / FINISHED_FILE
    try:
        wait_for_lines(journal, process, 1)
        # While it runs, a second serve on the same output is refused (and does not touch the checkpoint).
        assert main(serve_argv(inputs, output, tiny_model_dir)) == 2
        assert "another seqsched serve is writing" in capsys.readouterr().err
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    kept = journal.read_bytes().count(b"\n")
    assert 1 <= kept < PROMPTS and not output.exists(), "finished requests kept, no output yet"
    if signum == signal.SIGTERM:
        assert process.returncode == 143 and "seqsched: terminated" in stderr and "Traceback" not in stderr
        assert f"stopped: {kept} finished requests are kept in {working_dir(output)}" in stdout
    elif signum == signal.SIGINT:  # Ctrl-C: the same clean stop
        assert process.returncode == 130 and "seqsched: interrupted" in stderr and "Traceback" not in stderr
        assert f"stopped: {kept} finished requests are kept in {working_dir(output)}" in stdout
    else:  # killed outright: the lock file stays behind and must not block; a torn last line must not hurt
        assert process.returncode == -signal.SIGKILL and (working_dir(output) / LOCK_FILE).exists()
        with journal.open("a") as handle:
            handle.write('{"index": 11, "record": {"id": "r1')

    # A changed setting that decides outputs is refused; a scheduling one may change.
    assert main(serve_argv(inputs, output, tiny_model_dir, "--limit", "20")) == 2
    assert "an unfinished run with other settings is here (limit: 30 -> 20)" in capsys.readouterr().err
    assert main(serve_argv(inputs, output, tiny_model_dir, "--batch_size", "5")) == 0
    printed = capsys.readouterr().out
    assert f"resuming: {kept} of {PROMPTS} requests were finished" in printed
    assert answers(output) == answers(whole), "no request lost or duplicated, every output as uninterrupted"
    metrics = json.loads(metrics_path(output).read_text())
    assert metrics["resumed_requests"] == kept and metrics["requests"] == PROMPTS - kept
    assert not working_dir(output).exists(), "the checkpoint goes once the output is written"


def openai_line(custom_id: object, content: object, **body: object) -> str:
    return json.dumps({"custom_id": custom_id, "body": {"messages": [{"role": "user", "content": content}], **body}})


def test_a_prompt_too_long_for_the_model_is_one_error_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "batch.jsonl"
    lines = [
        openai_line("a", "say cat 2 times", max_tokens=8),
        openai_line("huge", "apple " * 1500),  # the tiny model's context is 1024 tokens
        openai_line(7, [{"type": "text", "text": "say dog"}, {"type": "text", "text": "3 times"}], max_tokens=8),
        openai_line("blank", "   "),
    ]
    inputs.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.jsonl"
    argv = ["serve", "--input", str(inputs), "--output", str(output), "--model.spec", str(tiny_model_dir)]
    assert main([*argv, "--strategy", "vanilla", "--limit", "16", "--progress", "false"]) == 0
    out = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["custom_id"] for line in out] == ["a", "huge", "7", "blank"]
    assert out[0]["error"] is None and out[2]["error"] is None, "the other requests are served"
    assert out[1]["response"]["status_code"] == 400 and out[1]["error"]["code"] == "context_length_exceeded"
    assert f"{inputs}:2:" in out[1]["error"]["message"] and "context of 1024 tokens" in out[1]["error"]["message"]
    assert out[3]["error"]["line"] == 4 and "empty" in out[3]["error"]["message"]
    metrics = json.loads(metrics_path(output).read_text())
    assert metrics["rejected_requests"] == 1 and metrics["error_lines"] == 2 and metrics["requests"] == 2
    assert "error line:" in capsys.readouterr().out

    # --max_prompt_tokens turns away prompts over it, with the same kind of line.
    assert (
        main([*argv, "--strategy", "vanilla", "--limit", "16", "--progress", "false", "--max_prompt_tokens", "8"]) == 0
    )
    out = [json.loads(line) for line in output.read_text().splitlines()]
    assert all(
        line["error"]["code"] in ("prompt_too_long", "context_length_exceeded", "invalid_request") for line in out
    )


def test_a_prompt_that_does_not_fit_the_pools_kv_budget_is_one_error_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Our pool with a KV budget smaller than one prompt: that request is one error line naming the option and the
    budget it needs; the others are served, under every admission rule."""
    inputs = tmp_path / "batch.jsonl"
    lines = [
        openai_line("a", "say cat 2 times", max_tokens=8),
        openai_line("long", "apple " * 150, max_tokens=8),
        openai_line("b", "say dog 3 times", max_tokens=8),
    ]
    inputs.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.jsonl"
    argv = ["serve", "--input", str(inputs), "--output", str(output), "--model.spec", str(tiny_model_dir)]
    argv += ["--engine.batching", "continuous", "--engine.slots", "2", "--engine.kv_budget_tokens", "100"]
    argv += ["--limit", "16", "--progress", "false", "--resume", "false"]
    for rule in ("greedy", "reserve-max"):
        assert main([*argv, "--kv_admission", rule, "--policy", "fcfs"]) == 0
        out = [json.loads(line) for line in output.read_text().splitlines()]
        assert [line["custom_id"] for line in out] == ["a", "long", "b"]
        assert out[0]["error"] is None and out[2]["error"] is None, rule
        error = out[1]["error"]
        assert (
            error["code"] == "kv_budget_exceeded" and "--engine.kv_budget_tokens must be at least" in error["message"]
        )


@pytest.mark.parametrize(
    "target",
    ["/proc/x.jsonl", "{file}/x.jsonl", "{folder}"],
    ids=["proc", "parent-is-a-file", "output-is-a-folder"],
)
def test_unwritable_output_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    inputs = plain_requests(tmp_path / "in.jsonl")
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    output = target.format(file=tmp_path / "file", folder=tmp_path / "folder")
    # A model that does not exist: had it been loaded first, the error would be about the model.
    assert (
        main(
            [
                "serve",
                "--input",
                str(inputs),
                "--output",
                output,
                "--model.spec",
                str(tmp_path / "none"),
                "--strategy",
                "vanilla",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("seqsched: error: --output:") and err.count("\n") == 1, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    inputs = plain_requests(tmp_path / "in.jsonl")
    assert main(["serve", "--input", str(inputs), "--output", str(folder / "x.jsonl"), "--strategy", "vanilla"]) == 2
    assert "--output: cannot write" in capsys.readouterr().err


def test_label_out_unwritable_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = plain_requests(tmp_path / "in.jsonl")
    (tmp_path / "file").write_text("x")
    assert main(["label", "--data", str(inputs), "--out", str(tmp_path / "file" / "lengths")]) == 2
    assert "--out: cannot write" in capsys.readouterr().err


def test_a_second_serve_on_one_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = plain_requests(tmp_path / "in.jsonl")
    output = tmp_path / "out.jsonl"
    work = working_dir(output)
    work.mkdir()
    with exclusive_lock(work / LOCK_FILE, "busy"):  # what a running serve holds
        assert main(["serve", "--input", str(inputs), "--output", str(output), "--strategy", "vanilla"]) == 2
    err = capsys.readouterr().err
    assert f"another seqsched serve is writing {output}" in err and f"(pid {os.getpid()})" in err
    assert not (work / LOCK_FILE).exists(), "released and removed on the way out"


BAD_BYTE = b"\xff"


def test_bytes_that_are_not_utf8_name_the_line_and_honour_skip_bad(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    good = b'{"id": "a", "prompt": "say cat 2 times"}\n'
    path.write_bytes(good + b'{"id": "b", "prompt": "caf' + BAD_BYTE + b'"}\n' + good.replace(b'"a"', b'"c"'))
    with pytest.raises(Exception, match=r"in\.jsonl:2: not UTF-8 text \(byte 0xff at column 27\)"):
        read_requests(path)
    skipped = read_requests(path, skip_bad=True)
    assert [request.id for request in skipped.requests] == ["a", "c"] and skipped.bad[0].where == 2
    batch = read_batch_input(path)  # serve: an error line for that record, the rest served
    assert [record.position for record in batch.errors] == [2] and len(batch.requests) == 2
    array = tmp_path / "in.json"
    array.write_bytes(b'[{"id": "a", "prompt": "x"},\n {"id": "b", "prompt": "caf' + BAD_BYTE + b'"}]')
    assert [bad.where for bad in read_requests(array, skip_bad=True).bad] == ["record 2"]


def test_bad_bytes_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "' + BAD_BYTE + b'"}\n')
    assert main(["label", "--data", str(data), "--out", str(tmp_path / "lengths")]) == 2
    assert f"{data}:2: not UTF-8 text" in capsys.readouterr().err
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b'{"id": "a", "predicted": 3}\n{"id": "' + BAD_BYTE + b'", "predicted": 3}\n')
    assert main(["plan", "--lengths", str(trace), "--out", str(tmp_path / "plan.json")]) == 2
    assert f"{trace}:2: not UTF-8 text" in capsys.readouterr().err
    lengths = tmp_path / "lengths.jsonl"
    lengths.write_bytes(b'{"id": "a", "L_t0.0": 3}\n{"id": "b", "L_t0.0": 3, "x": "' + BAD_BYTE + b'"}\n')
    argv = ["label", "import", "--lengths", str(lengths), "--data", str(data), "--out", str(tmp_path / "paper")]
    assert main(argv) == 2
    assert f"{lengths}:2: not UTF-8 text" in capsys.readouterr().err
    assert main([*argv, "--skip_bad", "true"]) == 0
    printed = capsys.readouterr().out
    assert (
        f"skipped {lengths}:2:" in printed and f"skipped {data}:2:" in printed and "imported 1 instructions" in printed
    )


def test_label_import_says_how_many_instructions_have_no_lengths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, lengths = tmp_path / "data.jsonl", tmp_path / "lengths.jsonl"
    data.write_text("".join(json.dumps({"id": f"i{n}", "prompt": f"p {n}"}) + "\n" for n in range(20)))
    lengths.write_text("".join(json.dumps({"id": f"i{n}", "L_t0.0": n}) + "\n" for n in range(15)))
    argv = ["label", "import", "--lengths", str(lengths), "--data", str(data), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "left out: 5 of 20 instructions" in capsys.readouterr().out
    assert main([*argv, "--strict", "true"]) == 2
    assert "5 of 20 instructions" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["label", "--data", "x", "--out", "y", "--limit", "-1"], "--limit"),
        (["label", "--data", "x", "--out", "y", "--batch_size", "0"], "--batch_size"),
        (["label", "--data", "x", "--out", "y", "--validation_fraction", "1"], "--validation_fraction"),
        (["plan", "--lengths", "x", "--limit", "-1"], "--limit"),
        (["plan", "--lengths", "x", "--token_budget", "0"], "--token_budget"),
        (["serve", "--input", "x", "--token_budget", "0"], "--token_budget"),
        (["serve", "--input", "x", "--max_prompt_tokens", "0"], "--max_prompt_tokens"),
        (["serve", "--input", "x", "--top_p", "0"], "--top_p"),
        (["train", "--data", "x", "--limit", "0"], "--limit"),
        (["train", "--data", "x", "--head.members", "0"], "--head.members"),
        (["train", "--data", "x", "--generative.optim.learning_rate", "0"], "--generative.optim.learning_rate"),
        (["eval", "--predictor", "p", "--data", "x", "--limit", "0"], "--limit"),
        (["bench", "--input", "x", "--count", "0"], "--count"),
        (["generate", "--input", "x", "--max_new_tokens", "0"], "--max_new_tokens"),
        (
            ["label", "import", "--lengths", "a", "--data", "b", "--out", "c", "--max_new_tokens", "0"],
            "--max_new_tokens",
        ),
        (["demo", "--train_limit", "0"], "--train_limit"),
    ],
)
def test_bad_option_values_are_one_line_naming_the_option(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"seqsched: error: {option}:") and err.count("\n") == 1, err


def test_train_on_an_empty_dataset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datasets import Dataset, DatasetDict

    empty = Dataset.from_list([{"id": "a", "prompt": "x", "label": 50}]).select([])
    DatasetDict({"train": empty}).save_to_disk(str(tmp_path / "empty"))
    assert main(["train", "--data", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "out")]) == 2
    assert "holds no records" in capsys.readouterr().err


def test_mlflow_stores_fail_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from lengthpred.registry import check_store
    from seqsched.errors import SeqschedError

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SeqschedError, match=rf"tracking server http://127.0.0.1:{port} is not reachable"):
        check_store(f"http://127.0.0.1:{port}", create=True)
    assert time.monotonic() - started < 30, "seconds, not MLflow's minutes of retries"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SeqschedError, match=r"no such database file typo\.db"):
        check_store("sqlite:///typo.db", create=False)
    check_store("sqlite:///new.db", create=True)
    assert f"creating a new tracking database {tmp_path / 'new.db'}" in capsys.readouterr().out
