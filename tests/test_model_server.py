"""The model-server launcher (submission/model_server.py), against real processes.

Two servers are launched for real: the stand-in (tests/fakes/vllm_standin.py: vLLM
0.11.2's flags and HTTP, recorded ToRA text, slow starts and crashes on demand) and
`transformers serve` 5.25 (a real OpenAI-compatible server nobody here wrote, a tiny
random Qwen2 on CPU). Every process a test starts is looked for afterwards: none may
be left.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from submission.config import load_config
from submission.engines.base import EngineError, SamplingParams
from submission.engines.openai import OpenaiEngine
from submission.model_server import ModelServer, ModelServerError, ServerFlags, server_argv
from tests.helpers import collect, text_of

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "fakes" / "vllm_standin.py"
QUESTION = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. She sells the remainder at the farmers' "
    "market daily for $2 per fresh duck egg. How much in dollars does she make every day at "
    "the farmers' market?"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def standin_config(tmp_path: Path, *sets: str, attempts: int = 4):
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "model.safetensors").write_bytes(b"\0" * 1024)
    return load_config(
        "aimo3",
        None,
        [
            "engine.kind=openai",
            "engine.server.kind=vllm",
            f"engine.server.model={tmp_path / 'model'}",
            "engine.server.served_model_name=gpt-oss-standin",
            f"engine.server.port={free_port()}",
            f"engine.server.entrypoint={STANDIN}",
            "engine.server.health_poll_s=0.1",
            "engine.server.startup_timeout_s=60",
            "engine.server.stop_grace_s=5",
            "engine.openai.retry_backoff_s=0.2",
            "engine.openai.max_retries=8",
            "prompt.family=tora",
            f"solver.attempts={attempts}",
            *sets,
        ],
    )


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group (zombies count as gone)."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def env_for_standin(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"AIMO_STANDIN_{name}", value)


def prompt_for(config) -> str:
    from submission.families.registry import create_family

    return str(create_family(config).render(QUESTION))


# -- the command line: checked against vLLM's own flags before anything starts ------------


def test_the_command_is_sized_from_the_attempts_and_checked_against_vllms_flags(tmp_path):
    config = standin_config(tmp_path, attempts=8)
    server = ModelServer.from_config(config)
    argv = server.argv
    assert argv[argv.index("--max-num-seqs") + 1] == "8"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.94"
    assert server.flags.version == "0.11.2"

    # A flag of a later vLLM (the tonghuikang notebook's) is refused here, not after loading.
    later = standin_config(tmp_path, "engine.server.args=--attention-backend,FLASH_ATTN")
    with pytest.raises(ModelServerError, match=r"--attention-backend is not a vllm 0\.11\.2 flag"):
        ModelServer.from_config(later)
    with pytest.raises(EngineError, match="--attention-backend"):
        OpenaiEngine.from_config(later)
    # The other notebook's flags are all vLLM 0.11.2's.
    notebook = (
        "engine.server.args=--kv-cache-dtype,fp8_e4m3,--async-scheduling,--enable-prefix-caching,"
        "--stream-interval,200,--max-model-len,65536,--seed,42,--disable-log-stats"
    )
    ModelServer.from_config(standin_config(tmp_path, notebook))
    with pytest.raises(ModelServerError, match="--max-model-len needs a value"):
        ModelServer.from_config(standin_config(tmp_path, "engine.server.args=--max-model-len"))


def test_sglang_is_sized_with_its_own_flag_names(tmp_path):
    config = standin_config(tmp_path, "engine.server.kind=sglang", attempts=16)
    argv = server_argv("sglang", config.engine.server, 16)
    assert argv[:2] == ["--model-path", str(tmp_path / "model")]
    assert argv[argv.index("--max-running-requests") + 1] == "16"
    assert "--mem-fraction-static" in argv
    assert ServerFlags.load("sglang").problems(argv) == []
    assert ServerFlags.load("vllm").problems(argv) != []  # vLLM has no --model-path


def test_the_stand_in_refuses_an_unknown_flag_as_vllm_does():
    done = subprocess.run(
        [sys.executable, str(STANDIN), "--model", "m", "--attention-backend", "FLASH_ATTN"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "error: unrecognized arguments: --attention-backend" in done.stderr


# -- start, health, log, stop ------------------------------------------------------------


async def test_a_slow_start_is_waited_for_its_log_streamed_and_nothing_is_left(
    tmp_path, monkeypatch, caplog
):
    caplog.set_level("INFO")
    requests = tmp_path / "requests.jsonl"
    env_for_standin(monkeypatch, START_S="1.5", REQUESTS=str(requests))
    config = standin_config(tmp_path)
    engine = OpenaiEngine.from_config(config)
    began = time.monotonic()
    await engine.start()
    assert time.monotonic() - began >= 1.5
    assert engine.model == "gpt-oss-standin"
    assert engine.dialects[engine.base_urls[0]] == "vllm"  # learnt from owned_by
    pgid = engine.server.process.pid
    assert len(group_members(pgid)) == 2  # the server and its engine-core stand-in
    try:
        params = SamplingParams(max_tokens=400, seed=3, stop=("```output",), top_logprobs=5)
        chunks = await collect(engine, prompt_for(config), params)
    finally:
        await engine.close()
    assert chunks[-1].finish_reason == "stop" and chunks[-1].stop == "```output"
    assert "```python" in text_of(chunks)  # the recorded generation's first code block
    assert sum(len(c.token_entropies) for c in chunks) == sum(c.tokens for c in chunks)
    body = json.loads(requests.read_text().splitlines()[0])
    assert (body["seed"], body["logprobs"], body["skip_special_tokens"]) == (3, 5, False)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("[vllm] INFO stand-in vLLM 0.11.2") for line in lines)
    assert any("max_num_seqs 4" in line for line in lines)
    assert group_members(pgid) == []


async def test_a_crash_while_loading_is_restarted_once(tmp_path, monkeypatch, caplog):
    env_for_standin(monkeypatch, CRASH_AT_START=str(tmp_path / "crashed"))
    server = ModelServer.from_config(standin_config(tmp_path))
    try:
        await server.start()
        assert server.starts == 2
    finally:
        await server.stop()
    assert any("CUDA out of memory while loading" in r.getMessage() for r in caplog.records)
    assert group_members(server.process.pid) == []


async def test_a_second_crash_with_no_restart_left_fails_the_start(tmp_path, monkeypatch):
    env_for_standin(monkeypatch, CRASH_AT_START=str(tmp_path / "crashed"))
    server = ModelServer.from_config(standin_config(tmp_path, "engine.server.restarts=0"))
    with pytest.raises(ModelServerError, match="exited with code 1 while starting"):
        await server.start()
    await server.stop()
    assert group_members(server.process.pid) == []


async def test_a_server_that_never_gets_healthy_times_out_and_is_stopped(tmp_path, monkeypatch):
    env_for_standin(monkeypatch, NEVER_READY="1")
    config = standin_config(tmp_path, "engine.server.startup_timeout_s=2")
    engine = OpenaiEngine.from_config(config)
    with pytest.raises(EngineError, match="not healthy after 2 s"):
        await engine.start()
    assert group_members(engine.server.process.pid) == []
    await engine.close()


async def test_a_crash_while_serving_is_restarted_and_the_next_request_is_served(
    tmp_path, monkeypatch
):
    env_for_standin(monkeypatch, CRASH_AFTER="1", CRASH_MARKER=str(tmp_path / "crashed"))
    config = standin_config(tmp_path)
    engine = OpenaiEngine.from_config(config)
    await engine.start()
    try:
        params = SamplingParams(max_tokens=200, seed=1, stop=("```output",))
        first = await collect(engine, prompt_for(config), params)
        for _ in range(600):  # bounded: the watcher notices the death and starts it again
            if engine.server.starts == 2:
                break
            await asyncio.sleep(0.05)
        second = await collect(engine, prompt_for(config), params)
    finally:
        await engine.close()
    assert engine.server.starts == 2
    assert first[-1].finish_reason == second[-1].finish_reason == "stop"
    assert text_of(first) == text_of(second)


def test_sigterm_and_a_plain_exit_stop_the_whole_process_group(tmp_path):
    """The kernel turns SIGTERM into SystemExit; the atexit hook kills the group either way."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys, threading
        sys.path.insert(0, {str(ROOT)!r})
        from submission.kernel import exit_on_sigterm
        from submission.model_server import ModelServer
        from tests.test_model_server import standin_config
        from pathlib import Path
        exit_on_sigterm()
        server = ModelServer.from_config(standin_config(Path({str(tmp_path)!r})))
        loop = asyncio.new_event_loop()  # in a thread of its own, as the harness runs it
        threading.Thread(target=loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(server.start(), loop).result()
        print(server.process.pid, flush=True)
        sys.stdin.readline()  # the test has seen the group
        if sys.argv[1] == "exit":
            sys.exit(0)  # no stop(): the atexit hook must do it
        import time
        time.sleep(600)
        """
    )
    for how in ("exit", "sigterm"):
        child = subprocess.Popen(
            [sys.executable, "-c", script, how],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        pgid = int(child.stdout.readline())
        assert len(group_members(pgid)) == 2  # the server and its engine-core stand-in
        child.stdin.write("go\n")
        child.stdin.flush()
        if how == "sigterm":
            child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == (0 if how == "exit" else 128 + signal.SIGTERM)
        for _ in range(100):
            if not group_members(pgid):
                break
            time.sleep(0.05)
        assert group_members(pgid) == [], how


def test_the_sandbox_fork_server_starts_before_the_model_server(tmp_path, monkeypatch):
    """The kernel's order: Harness.start builds the sandbox (fork server) before the engine,
    whose start() launches the server that takes the GPU."""
    from submission.harness import Harness

    env_for_standin(monkeypatch, START_S="0.5")
    config = standin_config(tmp_path)
    harness = Harness.start(config)
    try:
        assert harness.wait_ready(timeout_s=60)
        fork_server = psutil.Process(harness.core.solver.sandbox.server_pid)
        model_server = psutil.Process(harness.core.engine.server.process.pid)
        assert fork_server.create_time() <= model_server.create_time()
        assert fork_server.pid not in {p.pid for p in model_server.children(recursive=True)}
    finally:
        pgid = harness.core.engine.server.process.pid
        harness.close()
    assert group_members(pgid) == []


# -- transformers serve 5.25: a real OpenAI-compatible server, launched for real ----------


@pytest.fixture(scope="module")
def tiny_model(request: pytest.FixtureRequest) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("fastapi")  # transformers[serving]
    from submission.standin import build_random_qwen2
    from tests.helpers import cached

    return cached(request, "qwen2-tiny-random-v2", build_random_qwen2)


def transformers_sets(model: Path) -> list[str]:
    return [
        "engine.kind=openai",
        "engine.server.kind=transformers",
        f"engine.server.model={model}",
        f"engine.server.port={free_port()}",
        "engine.server.args=--device,cpu",
        "engine.server.env=HF_HUB_OFFLINE=1",
        "engine.server.health_poll_s=0.2",
        "engine.server.startup_timeout_s=240",
    ]


async def test_transformers_serve_launched_for_real_streams_completions(tiny_model, caplog):
    caplog.set_level("INFO")
    config = load_config("aimo3", None, transformers_sets(tiny_model))
    engine = OpenaiEngine.from_config(config)
    await engine.start()
    pgid = engine.server.process.pid
    try:
        url = engine.base_urls[0]
        assert engine.dialects[url] == "plain"  # owned_by "local": OpenAI's fields only
        assert engine.model == str(tiny_model)  # from GET /v1/models
        prompt = "<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n"
        greedy = SamplingParams(max_tokens=12, temperature=0.0, seed=5)
        first = await collect(engine, prompt, greedy)
        assert first[-1].finish_reason == "length" and first[-1].error is None
        assert sum(c.tokens for c in first) == 12  # the server's usage, sent after the finish
        stop = text_of(first)[4:8]
        stopped = SamplingParams(max_tokens=12, temperature=0.0, stop=(stop,))
        cut = await collect(engine, prompt, stopped)
        assert (cut[-1].finish_reason, cut[-1].stop) == ("stop", stop)
        assert text_of(cut) == text_of(first)[: text_of(first).index(stop)]
    finally:
        await engine.close()
    assert group_members(pgid) == []
    assert any(r.getMessage().startswith("[transformers] ") for r in caplog.records)
    assert not any("HTTP 4" in r.getMessage() for r in caplog.records)


def test_replay_through_transformers_serve_runs_the_tir_loop_with_no_http_error(
    tiny_model, tmp_path
):
    """`python -m submission replay --set engine.kind=openai` with the server launched:
    random weights, so the answers don't matter (replay says so: nothing solved, exit 1);
    no request may fail."""
    out = tmp_path / "out"
    sets = [
        *transformers_sets(tiny_model),
        "generation.max_tokens=48",
        "solver.attempts=2",
        "prompt.family=tora",
    ]
    argv = [sys.executable, "-m", "submission", "replay", "--limit", "2", "--out", str(out)]
    for item in sets:
        argv += ["--set", item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    # Random weights write no box: every answer is a fallback, which replay calls a failure.
    assert done.returncode == 1, done.stderr[-3000:]
    assert "every answer is a fallback" in done.stderr
    import polars as pl

    attempts = pl.read_parquet(out / "attempts.parquet")
    assert attempts.height == 4
    assert attempts.filter(pl.col("finish_reason") == "error").height == 0
    assert set(attempts["finish_reason"]) <= {"length", "stop"}
    assert (attempts["tokens"] > 0).all()
    report = (out / "report.md").read_text()
    assert "| attempts ended by an engine error | 0 |" in report
    assert "HTTP 4" not in done.stderr


def test_the_preflight_checks_the_servers_package_weights_and_port(tmp_path):
    from submission.preflight import check_model_server

    config = standin_config(tmp_path)
    found = {c.name: c for c in check_model_server(config)}
    assert found["model server"].status == "ok"  # the stand-in file
    assert found["server model"].status == "fail"  # no config.json: not attached
    assert found["server port"].status == "ok"
    (tmp_path / "model" / "config.json").write_text("{}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", config.engine.server.port))
        busy.listen()
        found = {c.name: c for c in check_model_server(config)}
    assert found["server model"].status == "ok"
    assert found["server port"].status == "fail"
    vllm = load_config("aimo3", None, ["engine.kind=openai", "engine.server.kind=vllm"])
    package = next(c for c in check_model_server(vllm) if c.name == "vllm")
    if importlib.util.find_spec("vllm") is None:
        assert package.status == "fail" and package.detail == "not installed"
    else:
        assert package.status == "ok"
