"""The kernel run in the rehearsal's tree, each mode in a fresh copy of the image venv.

- interactive: `python kernel.py` with no flags, as a notebook session runs it:
  the kernel installs the wheelhouse (no index), runs its preflight, and the
  real `run_local_gateway` on test.csv;
- rerun: the same with `KAGGLE_IS_COMPETITION_RERUN=1`, the kernel serving,
  and the real gateway (`AIMO3Gateway` / `AIMO2Gateway`) in another process
  dialling the host `inference_server`, which a generated `sitecustomize`
  resolves to loopback. When the gateway is done the kernel gets SIGTERM, as
  Kaggle stops it.

Each run's processes are an `IsolatedRun` (offline, in namespaces of their own
where allowed; none outlives the run); its logs go to the `logs` folder given,
which outlives the tree, and their key lines are shown as they are written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from submission.config import Config
from submission.rehearsal.isolation import IsolatedRun, Process
from submission.rehearsal.progress import Progress
from submission.rehearsal.tree import Tree
from submission.rehearsal.venvs import run_venv
from submission.rehearsal.verdict import SERVE_LIMIT_S, Verdict, check_output, read_log

# The gateway's host for the inference server in a rerun (kaggle_evaluation core/base_gateway.py).
SERVER_HOST = "inference_server"
SITECUSTOMIZE = f'''"""Rehearsal only: the gateway dials {SERVER_HOST!r}: this machine."""
import socket

_gethostbyname = socket.gethostbyname


def gethostbyname(name):
    return "127.0.0.1" if name == {SERVER_HOST!r} else _gethostbyname(name)


socket.gethostbyname = gethostbyname
try:
    import grpc
except ImportError:
    grpc = None
if grpc is not None:
    _insecure_channel = grpc.insecure_channel

    def insecure_channel(target, *args, **kwargs):
        target = target.replace({SERVER_HOST + ":"!r}, "127.0.0.1:")
        return _insecure_channel(target, *args, **kwargs)

    grpc.insecure_channel = insecure_channel
'''


@dataclass(frozen=True)
class RunSettings:
    """What every rehearsed run is given besides the tree, the config and its log folder."""

    image_python: Path  # the image venv's python (venvs.py: each run's venv sees its packages)
    gateway_python: str  # the rerun gateway's interpreter (grpcio, protobuf, pandas, polars)
    timeout_s: float  # per run
    progress: Progress


def kernel_env(tree: Tree, rerun: bool) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tree.root),
        "TMPDIR": str(tree.root / "tmp"),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",  # Kaggle's submission run has no internet
        "AIMO_KAGGLE_ROOT": str(tree.kaggle),
        "AIMO_CONFIG": str(tree.config_file),
    }
    if rerun:
        env["KAGGLE_IS_COMPETITION_RERUN"] = "1"
    return env


def working_dir(tree: Tree) -> Path:
    working = tree.kaggle / "working"
    shutil.rmtree(working, ignore_errors=True)
    working.mkdir(parents=True)
    return working


def rehearse_interactive(tree: Tree, config: Config, settings: RunSettings, logs: Path) -> Verdict:
    profile = config.profile.name
    verdict = Verdict("interactive", profile=profile, expected_rows=tree.test_rows)
    settings.progress.step(f"{profile} interactive: a fresh venv of the image's packages")
    python = run_venv(settings.image_python, tree.root / "venv-interactive")
    working = working_dir(tree)
    log_file = logs / "interactive.log"
    kernel = Process(
        "kernel",
        [str(python), str(tree.code_file)],
        kernel_env(tree, rerun=False),
        str(working),
        str(log_file),
    )
    settings.progress.step(f"{profile} interactive: python kernel.py, log {log_file}")
    code, launched = _supervise(
        verdict, [kernel], tree.root / "interactive.json", settings, {log_file: "kernel"}
    )
    if code != 0:
        verdict.faults.append(
            f"kernel exit {code}" if code is not None else "kernel timed out (stopped)"
        )
    read_log(verdict, log_file, launched, (" running the real ", " built-in gateway "))
    check_output(verdict, working / "submission.parquet", tree, config.profile)
    return verdict


def rehearse_rerun(tree: Tree, config: Config, settings: RunSettings, logs: Path) -> Verdict:
    profile = config.profile.name
    verdict = Verdict("rerun", profile=profile, expected_rows=tree.test_rows)
    settings.progress.step(f"{profile} rerun: a fresh venv of the image's packages")
    python = run_venv(settings.image_python, tree.root / "venv-rerun")
    working = working_dir(tree)
    hooks = tree.root / "gateway-hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    module = config.profile.gateway_module.replace("inference_server", "gateway")
    cls = config.profile.gateway_class.replace("InferenceServer", "Gateway")
    gateway_code = (
        f"import sys; sys.path.insert(0, {str(tree.competition)!r}); "
        f"from {module} import {cls}; {cls}(({str(tree.competition / 'test.csv')!r},)).run()"
    )
    kernel_log, gateway_log = logs / "rerun-kernel.log", logs / "rerun-gateway.log"
    env = kernel_env(tree, rerun=True)
    kernel = Process(
        "kernel", [str(python), str(tree.code_file)], env, str(working), str(kernel_log)
    )
    gateway = Process(
        "gateway",
        [settings.gateway_python, "-c", gateway_code],
        {**env, "PYTHONPATH": str(hooks)},
        str(working),
        str(gateway_log),
    )
    settings.progress.step(
        f"{profile} rerun: the kernel serving, {cls} dialling it; logs {kernel_log}, {gateway_log}"
    )
    code, launched = _supervise(
        verdict,
        [kernel, gateway],
        tree.root / "rerun.json",
        settings,
        {kernel_log: "kernel", gateway_log: "gateway"},
    )
    verdict.gateway_log = str(gateway_log)
    if "gateway" not in verdict.exits and verdict.exits.get("kernel") is not None:
        verdict.faults.append(
            f"the kernel exited {verdict.exits['kernel']} before the gateway was done "
            f"(its log: {kernel_log})"
        )
    elif code != 0:
        tail = gateway_log.read_text(errors="replace")[-1500:] if gateway_log.exists() else ""
        what = f"gateway exit {code}" if code is not None else "gateway timed out (stopped)"
        verdict.faults.append(f"{what}: {tail}")
    read_log(verdict, kernel_log, launched, (" serve(): ",))
    result = working / "result.json"
    if result.is_file() and not json.loads(result.read_text()).get("Succeeded"):
        verdict.faults.append(f"result.json: {result.read_text()[:500]}")
    if verdict.serve_s is not None and verdict.serve_s > SERVE_LIMIT_S:
        verdict.faults.append(f"serve() after {verdict.serve_s:.0f} s: past Kaggle's 15 minutes")
    check_output(verdict, working / "submission.parquet", tree, config.profile)
    return verdict


def _supervise(
    verdict: Verdict,
    processes: list[Process],
    spec_file: Path,
    settings: RunSettings,
    follow: dict[Path, str],
) -> tuple[int | None, float]:
    """Run the processes to the last one's end or the timeout: (its exit code or None, launch).

    The launch is on the wall clock (the kernel's log stamps are), and the run's
    wall time goes to the verdict. Whatever ends the wait (the run, the timeout,
    Ctrl-C, an error) the run is stopped before this returns or raises.
    """
    label = f"{verdict.profile} {verdict.mode}"
    for process in processes:
        Path(process.log).write_bytes(b"")  # this run's lines only
    tails = [settings.progress.follow(path, f"{label} {name}") for path, name in follow.items()]
    launched = time.time()
    run = IsolatedRun(processes, processes[-1].name, spec_file)
    timed_out = False
    try:
        while run.poll() is None:
            if time.monotonic() - run.started > settings.timeout_s:
                timed_out = True
                settings.progress.step(f"{label}: past {settings.timeout_s:.0f} s, stopping it")
                break
            for tail in tails:
                tail.poll()
            time.sleep(0.2)
    finally:
        code = run.stop()
        verdict.exits = run.exits()
        verdict.wall_s = time.monotonic() - run.started
        for tail in tails:
            tail.poll()
    return (None if timed_out else code), launched
