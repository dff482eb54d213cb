"""Inside a rehearsed run: start its processes, wait for the main one, end every one of them.

Run as `python -m submission.rehearsal.supervisor SPEC.json` by `isolation.py`,
as the first process of the run's own PID and network namespace where the
machine allows one (then, when it exits, the kernel kills whatever is left in
the namespace). It brings loopback up (a new network namespace starts with it
down, and the gateway reaches the server over 127.0.0.1), starts each process
of the spec with its output in its log, and waits for the `main` one. Then,
or on SIGTERM/SIGINT, it sends SIGTERM to every process it started and to
every descendant (it is their subreaper, so processes that left their parent
are still its descendants), waits `grace_s`, and SIGKILLs what is left; a
process other than the main one that ends first ends the run too. It writes
the exit codes of the processes that ended by themselves to the spec's
`exits` file; its own exit code is the main process's (143 when it was stopped
first).

Standard library and psutil only: it runs with the rehearsing interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

PR_SET_CHILD_SUBREAPER = 36
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
STOPPED_EXIT = 128 + signal.SIGTERM


def loopback_up() -> None:
    """Set lo up in this network namespace (what `ip link set lo up` does; needs CAP_NET_ADMIN)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def end_all(grace_s: float) -> None:
    """SIGTERM every descendant, then SIGKILL those still there after `grace_s`."""
    me = psutil.Process()
    tree = me.children(recursive=True)
    for process in tree:
        _signal(process, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    # Processes started during the grace (a fork server's last fork) count too.
    for process in {*alive, *me.children(recursive=True)}:
        _signal(process, signal.SIGKILL)
    psutil.wait_procs(me.children(recursive=True), timeout=5.0)


def _signal(process: psutil.Process, signum: int) -> None:
    with contextlib.suppress(psutil.Error):  # already gone
        process.send_signal(signum)


def run(spec: dict[str, Any]) -> int:
    become_subreaper()
    if spec.get("loopback"):
        loopback_up()
    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started: dict[str, subprocess.Popen[bytes]] = {}
    for item in spec["processes"]:
        with Path(item["log"]).open("ab") as log:
            started[item["name"]] = subprocess.Popen(
                item["argv"],
                env=item["env"],
                cwd=item["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    # The run ends with the main process, or with any other that ends first (a kernel that
    # stopped will never serve the gateway waiting for it).
    while all(p.poll() is None for p in started.values()) and not stop["requested"]:
        time.sleep(0.1)
    ended = {name: _shell_code(p.returncode) for name, p in started.items() if p.poll() is not None}
    Path(spec["exits"]).write_text(json.dumps(ended), encoding="utf-8")
    code = ended.get(spec["main"], STOPPED_EXIT)
    end_all(float(spec.get("grace_s", 20.0)))
    for process in started.values():
        process.poll()
    return code


def _shell_code(returncode: int | None) -> int | None:
    """A signal's death (-9) as a shell reports it (137)."""
    return None if returncode is None else (returncode if returncode >= 0 else 128 - returncode)


if __name__ == "__main__":
    sys.exit(run(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
