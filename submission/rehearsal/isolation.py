"""A rehearsed run's processes, kept together so that none outlives the rehearsal.

`IsolatedRun` starts `supervisor.py` (which starts the run's processes) in a
new session, with a parent-death signal, and, where `unshare` may make them,
in PID, mount and network namespaces of its own (`unshare --pid --fork
--kill-child --mount-proc --net`): the run is offline, its port 50051 is its
own, and when the supervisor ends, every process of the namespace ends with
it. Whatever happens to the rehearsal (a timeout, Ctrl-C, SIGTERM, even
SIGKILL: the parent-death signal reaches `unshare`, whose `--kill-child`
reaches the supervisor) the run's processes end. Without namespaces the
supervisor is its processes' subreaper and ends them itself (SIGTERM, then
SIGKILL), and its own parent-death signal is SIGTERM.
"""

from __future__ import annotations

import ctypes
import functools
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

PR_SET_PDEATHSIG = 1
NAMESPACES = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net")


@dataclass(frozen=True)
class Process:
    """One process of a run: its command, environment, folder and log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    log: str


@functools.cache
def own_namespaces_allowed() -> bool:
    """Whether `unshare` may give a run its own PID, mount and network namespaces here."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*NAMESPACES, "true"], capture_output=True, check=False)
    return probe.returncode == 0


def loopback_is_up() -> bool:
    """Whether this network namespace's lo is up (a run without its own namespace needs it)."""
    state = Path("/sys/class/net/lo/flags")
    try:
        return bool(int(state.read_text(), 16) & 0x1)
    except (OSError, ValueError):
        return True  # no sysfs to ask: assume the usual


def _die_with_parent(signum: int) -> None:
    """In the child before exec: `signum` when the rehearsal's process ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


class IsolatedRun:
    """The supervised processes of one run; `main` names the one whose end ends the run."""

    def __init__(
        self, processes: list[Process], main: str, spec_file: Path, grace_s: float = 20.0
    ) -> None:
        self.namespaces = own_namespaces_allowed()
        self.exits_file = spec_file.with_suffix(".exits.json")
        self.exits_file.unlink(missing_ok=True)
        spec = {
            "processes": [asdict(p) for p in processes],
            "main": main,
            "grace_s": grace_s,
            "loopback": self.namespaces,
            "exits": str(self.exits_file),
        }
        spec_file.write_text(json.dumps(spec, indent=1), encoding="utf-8")
        supervisor = [sys.executable, "-m", "submission.rehearsal.supervisor", str(spec_file)]
        argv = [*NAMESPACES, *supervisor] if self.namespaces else supervisor
        death = signal.SIGKILL if self.namespaces else signal.SIGTERM
        self.grace_s = grace_s
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C reaches the rehearsal only
            preexec_fn=functools.partial(_die_with_parent, death),
        )

    def poll(self) -> int | None:
        return self.process.poll()

    def exits(self) -> dict[str, int | None]:
        """The exit codes of the run's processes that ended by themselves (after stop())."""
        try:
            return json.loads(self.exits_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def stop(self) -> int:
        """End the run now: SIGTERM to the supervisor (it ends its processes), then SIGKILL."""
        if self.process.poll() is None:
            for target in self._supervisors():
                target.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.grace_s + 10.0)
            except subprocess.TimeoutExpired:
                self.process.kill()  # unshare's --kill-child then ends the namespace
                self.process.wait()
        return self.process.returncode

    def _supervisors(self) -> list[psutil.Process]:
        """The supervisor: the process started, or unshare's one child."""
        try:
            outer = psutil.Process(self.process.pid)
            return outer.children() if self.namespaces else [outer]
        except psutil.Error:
            return []
