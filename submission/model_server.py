"""Starts, watches and stops the model server the openai engine talks to (vLLM, SGLang, ...).

Built from `engine.server` in one place (`ModelServer.from_config`). The command
line is the kind's entry point, our flags (model, name, host, port, and the
concurrency sized from the policy's attempts), then `engine.server.args`; every
flag is checked against the server's own parser, dumped as data at a pinned
version (`submission/data/server_flags/<kind>.json`,
offline_wheels/dump_server_flags.py), so an unknown flag fails here, before
anything starts, and not after minutes of loading.

`start()`: reads the weights once into the page cache (the AIMO-3 notebooks
did, before their 15-minute health wait), starts the server in a session of
its own (its process group: vLLM's engine-core process included), streams its
output into our log line by line with a `[vllm]` prefix, and waits for health
(GET /health, then GET /v1/models answering a model) up to
`startup_timeout_s`. A server that dies, while starting or later, is started
again `restarts` times (default once), each time with the last lines of its
output in the log. `stop()` sends SIGTERM to the whole process group, then
SIGKILL after `stop_grace_s`; an `atexit` hook does the same if the process
ends without `stop()` (the kernel turns SIGTERM into SystemExit, so it runs).

The kernel's order holds by construction: the harness starts the sandbox (its
fork server) before it builds the engine, and the engine starts the server in
its own `start()` (tests/test_model_server.py checks the order).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from submission.config import PACKAGE_DATA, Config, ModelServerConfig

log = logging.getLogger(__name__)

FLAG_DATA = PACKAGE_DATA / "server_flags"
# Each kind's entry point (argv after the interpreter) and its sizing flags.
ENTRY_POINTS: dict[str, tuple[str, ...]] = {
    "vllm": ("-m", "vllm.entrypoints.openai.api_server"),
    "sglang": ("-m", "sglang.launch_server"),
    "transformers": ("-m", "transformers.cli.transformers", "serve"),
}
# Lines of the server's output kept to explain a death.
TAIL_LINES = 40
PREREAD_CHUNK = 256 * 1024 * 1024
PREREAD_SUFFIXES = (".safetensors", ".bin", ".pt")


class ModelServerError(RuntimeError):
    """A server that cannot be started as configured, or did not become healthy."""


@dataclass(frozen=True)
class ServerFlags:
    """A server's accepted flags (each: takes a value?), read from its parser at a version."""

    server: str
    version: str
    takes_value: dict[str, bool]

    @classmethod
    def load(cls, kind: str) -> ServerFlags:
        data = json.loads((FLAG_DATA / f"{kind}.json").read_text(encoding="utf-8"))
        return cls(data["server"], data["version"], data["takes_value"])

    def problems(self, argv: list[str]) -> list[str]:
        """What the server's parser would refuse in `argv` (flags and their values)."""
        problems = []
        i = 0
        while i < len(argv):
            item = argv[i]
            i += 1
            if not item.startswith("-"):
                problems.append(f"{item!r} is not a flag (a value with no flag before it)")
                continue
            flag, has_value, _ = item.partition("=")
            if flag not in self.takes_value:
                problems.append(f"{flag} is not a {self.server} {self.version} flag")
            elif self.takes_value[flag] and not has_value:
                if i >= len(argv) or argv[i].startswith("--"):
                    problems.append(f"{flag} needs a value")
                else:
                    i += 1
            elif not self.takes_value[flag] and has_value:
                problems.append(f"{flag} takes no value")
        return problems


def sized_flags(kind: str, config: ModelServerConfig, attempts: int) -> list[str]:
    """The flags that size the server to the policy: one sequence per attempt, and its share
    of the GPU (SGLang names them --max-running-requests and --mem-fraction-static)."""
    seqs = config.max_num_seqs or max(1, attempts)
    if kind == "vllm":
        return [
            "--max-num-seqs",
            str(seqs),
            "--gpu-memory-utilization",
            f"{config.gpu_memory_utilization:g}",
        ]
    if kind == "sglang":
        return [
            "--max-running-requests",
            str(seqs),
            "--mem-fraction-static",
            f"{config.gpu_memory_utilization:g}",
        ]
    return []  # transformers serve: no such flags (a CPU stand-in)


def server_argv(kind: str, config: ModelServerConfig, attempts: int) -> list[str]:
    """The server's flags: model, name, host and port, the sizing, then engine.server.args."""
    if kind == "transformers":
        argv = [config.model, "--host", config.host, "--port", str(config.port)]
    else:
        model_flag = "--model-path" if kind == "sglang" else "--model"
        argv = [model_flag, config.model, "--host", config.host, "--port", str(config.port)]
        if config.served_model_name:
            argv += ["--served-model-name", config.served_model_name]
    return [*argv, *sized_flags(kind, config, attempts), *config.args]


class ModelServer:
    """One model server process (and its process group), from start to stop."""

    def __init__(self, config: ModelServerConfig, attempts: int) -> None:
        if config.kind == "none":
            raise ModelServerError("engine.server.kind is none: there is no server to start")
        if not config.model:
            raise ModelServerError("set engine.server.model (the weights folder)")
        self.config = config
        self.kind = config.kind
        self.flags = ServerFlags.load(config.kind)
        self.argv = server_argv(config.kind, config, attempts)
        # transformers serve's model is a positional argument: check the flags after it.
        checked = self.argv[1:] if config.kind == "transformers" else self.argv
        if problems := self.flags.problems(checked):
            raise ModelServerError(f"engine.server: {'; '.join(problems)}")
        self.base_url = f"http://{config.host}:{config.port}/v1"
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0  # how many times the server was started
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._stopping = False
        self._pump: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        atexit.register(self.kill)

    @classmethod
    def from_config(cls, config: Config) -> ModelServer:
        return cls(config.engine.server, attempts=config.solver.attempts)

    @property
    def command(self) -> list[str]:
        entry = self.config.entrypoint
        program = [entry] if entry else list(ENTRY_POINTS[self.kind])
        return [sys.executable, *program, *self.argv]

    async def start(self) -> None:
        """Start the server and wait until it is healthy (ModelServerError when it is not)."""
        if self.config.preread_weights:
            seconds, size = await asyncio.to_thread(preread, Path(self.config.model))
            gigabytes = size / 1e9
            log.info("server: %.1f GB of weights pre-read in %.1f s", gigabytes, seconds)
        while True:
            await self._spawn()
            try:
                await self._wait_healthy()
                break
            except ModelServerError as exc:
                if self.process is not None and self.process.returncode is None:
                    await self.stop()  # hung: no restart helps a server that never answers
                    raise
                if self.starts > self.config.restarts:
                    raise ModelServerError(f"{exc}; it was started {self.starts} times") from None
                log.error("server: %s; starting it again", exc)
        self._watch = asyncio.ensure_future(self._restart_on_death())

    async def _spawn(self) -> None:
        self.starts += 1
        env = dict(os.environ)
        env.update(item.split("=", 1) for item in self.config.env)
        log.info("server: starting %s (%d): %s", self.kind, self.starts, " ".join(self.command))
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped whole
        )
        self._pump = asyncio.ensure_future(self._stream_log(self.process))

    async def _stream_log(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            log.info("[%s] %s", self.kind, line)

    async def _wait_healthy(self) -> None:
        import httpx

        root = self.base_url.removesuffix("/v1")
        deadline = time.monotonic() + self.config.startup_timeout_s
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.returncode is not None:
                    self.kill()  # what it left in its group holds its output pipe open
                    await self._drain()
                    raise ModelServerError(
                        f"{self.kind} exited with code {self.process.returncode} while starting;"
                        f" its last lines: {' | '.join(list(self.tail)[-5:])}"
                    )
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, IndexError):
                    if (await client.get(f"{root}/health")).status_code == 200:
                        models = (await client.get(f"{self.base_url}/models")).json()
                        log.info("server: healthy, serving %s", models["data"][0]["id"])
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.process.wait(), self.config.health_poll_s)
        raise ModelServerError(
            f"{self.kind} not healthy after {self.config.startup_timeout_s:g} s (GET {root}/health)"
        )

    async def _drain(self) -> None:
        """Let the log pump read what the dead process wrote last."""
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), 5.0)

    async def _restart_on_death(self) -> None:
        """While serving: a server that dies is started again, `restarts` times in all."""
        while not self._stopping:
            assert self.process is not None
            code = await self._exited(self.process)
            if self._stopping:
                return
            self.kill()  # what the dead server left in its group (its engine-core process)
            await self._drain()
            last = " | ".join(list(self.tail)[-5:])
            if self.starts > self.config.restarts:
                log.error("server: %s died (code %d), no restart left: %s", self.kind, code, last)
                return
            log.error("server: %s died (code %d); starting it again: %s", self.kind, code, last)
            await self._spawn()
            try:
                await self._wait_healthy()
            except ModelServerError as exc:
                log.error("server: the restart failed: %s", exc)
                return

    async def _exited(self, process: asyncio.subprocess.Process) -> int:
        """The exit code, once the server itself exits (`wait()` would also wait for its
        output pipe, which a child left in its group may hold open)."""
        while process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), self.config.health_poll_s)
        return process.returncode

    async def stop(self) -> None:
        """SIGTERM to the server's process group; SIGKILL after the grace; wait for the end."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited(process), self.config.stop_grace_s)
            if process.returncode is None:
                log.warning("server: no exit %g s after SIGTERM: SIGKILL", self.config.stop_grace_s)
        self.kill()  # the whole group, whatever is left in it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), self.config.stop_grace_s)
        await self._drain()
        # SIGKILL is delivered asynchronously: wait (bounded) until the group has no member.
        deadline = time.monotonic() + self.config.stop_grace_s
        while _group_alive(process.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("server: stopped (code %s)", process.returncode)

    def kill(self) -> None:
        """SIGKILL the server's whole process group (at exit, and after a stop's grace)."""
        if self.process is not None:
            _signal_group(self.process.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Whether a live process is left in the group (zombies don't count: a container's
    init may never reap the ones it inherits)."""
    import psutil

    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)  # the server leads its own session: its pid is the group id


def preread(folder: Path) -> tuple[float, int]:
    """Read the weight files under `folder` once (threads), so the server loads from memory."""
    began = time.monotonic()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in PREREAD_SUFFIXES)

    def read(path: Path) -> int:
        size = 0
        with path.open("rb") as f:
            while chunk := f.read(PREREAD_CHUNK):
                size += len(chunk)
        return size

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        total = sum(pool.map(read, files))
    return time.monotonic() - began, total


def server_for(config: Config) -> ModelServer | None:
    """The ModelServer `engine.server` asks for, or None for kind "none"."""
    return None if config.engine.server.kind == "none" else ModelServer.from_config(config)
