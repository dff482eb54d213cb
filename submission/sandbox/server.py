"""The harness's end of the fork server: starts it with an allow-listed environment,
sends it one request at a time, and replaces it when it dies (a new generation)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from submission.config import SandboxConfig
from submission.sandbox import protocol

log = logging.getLogger(__name__)
# The server never blocks for long; silence this long means it is stuck.
_SERVER_TIMEOUT_S = 120.0
# Set for every session whatever the harness has: no GPU, single-threaded BLAS
# (fork-safe, and one core per session).
FIXED_ENVIRONMENT = {
    "CUDA_VISIBLE_DEVICES": "",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class SandboxError(RuntimeError):
    """The sandbox machinery itself failed (not the code it ran)."""


class ForkServerClient:
    """Requests to the fork server; `generation` counts the servers started so far."""

    def __init__(
        self,
        config: SandboxConfig,
        user: tuple[int, int] | None,
        probe_uid: int | None,
        on_replaced: Callable[[int], None],
    ) -> None:
        self._settings = {
            "preload": list(config.preload),
            "user": user,
            "probe_uid": probe_uid,
            "namespaces": config.use_namespaces,
            "seccomp": config.use_seccomp,
        }
        self._environment = session_environment(config.environment)
        self._on_replaced = on_replaced
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self.hello: dict[str, Any] = {}
        self.generation = 0
        self.closed = False
        self._start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def ready(self) -> dict[str, Any]:
        """What the server found it may do here (waits for its imports the first time)."""
        with self._lock:
            try:
                self._read_hello()
            except (OSError, protocol.ProtocolError) as exc:
                raise SandboxError(f"fork server failed to start: {exc}") from exc
            return self.hello

    def request(self, request: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        """One request; a dead server is replaced once (its sessions die with it)."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    self._read_hello()
                    if self._channel is None:
                        raise OSError("fork server is not running")
                    protocol.send(self._channel, request, fds)
                    reply, _ = protocol.recv(self._channel)
                    return reply
                except (OSError, protocol.ProtocolError) as exc:
                    if attempt == 2 or self.closed:
                        raise SandboxError(f"fork server failed: {exc}") from exc
                    log.warning("sandbox fork server failed (%s); starting a new one", exc)
                    self._stop()
                    self._start()
                    self._on_replaced(self.generation - 1)
            raise AssertionError("unreachable")

    def check(self) -> None:
        """Replace the server now if it has died (its sessions are then restored before
        their next cell runs, rather than failing it). A live server costs no lock: a call
        never waits here for another session's request."""
        process = self._process
        if self.closed or process is None or process.poll() is None:
            return
        with self._lock:
            if self.closed or self._process is None or self._process.poll() is None:
                return
            log.warning("sandbox fork server died; starting a new one")
            self._stop()
            self._start()
            self._on_replaced(self.generation - 1)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._stop()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "submission.sandbox.forkserver",
                str(theirs.fileno()),
                json.dumps(self._settings),
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=self._environment,
            cwd="/",  # so the harness's folder is not on the server's sys.path
        )
        theirs.close()
        ours.settimeout(_SERVER_TIMEOUT_S)
        self._channel = ours
        self.hello = {}
        self.generation += 1

    def _read_hello(self) -> None:
        if self.hello:
            return
        if self._channel is None:
            raise OSError("fork server is not running")
        hello, _ = protocol.recv(self._channel)
        if hello.get("failed_preloads"):
            log.warning("sandbox could not preload %s", hello["failed_preloads"])
        self.hello = hello

    def _stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


def session_environment(allowed: tuple[str, ...]) -> dict[str, str]:
    """The fork server's (and so every session's) environment: the allowed variables
    of the harness's, the fixed ones, and a PYTHONPATH that finds this package."""
    environment = {name: os.environ[name] for name in allowed if name in os.environ}
    environment.update(FIXED_ENVIRONMENT)
    package_root = str(Path(__file__).parents[2])
    with contextlib.suppress(KeyError):
        if os.environ["PYTHONPATH"]:
            package_root += os.pathsep + os.environ["PYTHONPATH"]
    environment["PYTHONPATH"] = package_root
    return environment
