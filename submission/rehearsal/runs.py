"""The kernel run in the rehearsal's tree, each mode in a fresh venv of the image's packages.

- interactive: `python kernel.py` with no flags, as a notebook session runs it:
  the kernel installs the wheelhouse (no index), runs its preflight, and the
  real `run_local_gateway` on test.csv;
- rerun: the same with `KAGGLE_IS_COMPETITION_RERUN=1`, the kernel serving,
  and the real gateway (`AIMO3Gateway` / `AIMO2Gateway`) in another process
  dialling the host `inference_server`, which a generated `sitecustomize`
  resolves to loopback; both inside a network namespace of their own when
  `unshare --net` is allowed (so port 50051 is theirs alone).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from submission.config import Config
from submission.rehearsal.tree import Tree
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
    """What every rehearsed run is given besides the tree and the config."""

    image_wheels: Path  # wheels of what the Kaggle image provides (installed with no index)
    timeout_s: float  # per run
    gateway_python: str = sys.executable  # the rerun gateway's interpreter


def fresh_venv(path: Path, image_wheels: Path) -> Path:
    """A new venv with only the image's packages (no index); its python."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    wheels = sorted(str(w) for w in image_wheels.glob("*.whl"))
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--disable-pip-version-check",
            "--find-links",
            str(image_wheels),
            *wheels,
        ],
        check=True,
    )
    return python


def kernel_env(tree: Tree, rerun: bool) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tree.root),
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


def rehearse_interactive(tree: Tree, config: Config, settings: RunSettings) -> Verdict:
    verdict = Verdict("interactive", expected_rows=tree.test_rows)
    python = fresh_venv(tree.root / "venv-interactive", settings.image_wheels)
    working = working_dir(tree)
    log_file = tree.root / "interactive.log"
    launched = time.time()
    with log_file.open("w") as out:
        try:
            done = subprocess.run(
                [str(python), str(tree.code_file)],
                cwd=working,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=kernel_env(tree, rerun=False),
                timeout=settings.timeout_s,
                check=False,
            )
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    verdict.wall_s = time.time() - launched
    if code != 0:
        verdict.faults.append(f"kernel exit {code}" if code is not None else "kernel timed out")
    read_log(verdict, log_file, launched, (" running the real ", " built-in gateway "))
    check_output(verdict, working / "submission.parquet", tree, config.profile)
    return verdict


def rehearse_rerun(tree: Tree, config: Config, settings: RunSettings) -> Verdict:
    verdict = Verdict("rerun", expected_rows=tree.test_rows)
    python = fresh_venv(tree.root / "venv-rerun", settings.image_wheels)
    working = working_dir(tree)
    hooks = tree.root / "gateway-hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    module = config.profile.gateway_module.replace("inference_server", "gateway")
    cls = config.profile.gateway_class.replace("InferenceServer", "Gateway")
    gateway = (
        f"import sys; sys.path.insert(0, {str(tree.competition)!r}); "
        f"from {module} import {cls}; {cls}(({str(tree.competition / 'test.csv')!r},)).run()"
    )
    kernel_log, gateway_log = tree.root / "rerun-kernel.log", tree.root / "rerun-gateway.log"
    env = kernel_env(tree, rerun=True)
    gateway_env = {**env, "PYTHONPATH": str(hooks)}
    script = tree.root / "rerun.sh"
    kernel_cmd = f"{_env_prefix(env)} {python} {tree.code_file}"
    gateway_cmd = f"{_env_prefix(gateway_env)} {settings.gateway_python} -c {shlex.quote(gateway)}"
    script.write_text(
        "ip link set lo up 2>/dev/null || true\n"
        f"{kernel_cmd} > {kernel_log} 2>&1 &\n"
        "KERNEL=$!\n"
        f"{gateway_cmd} > {gateway_log} 2>&1\n"
        "GATEWAY=$?\n"
        # serve() never returns by itself: the kernel is stopped as Kaggle stops it
        "kill -TERM $KERNEL 2>/dev/null; wait $KERNEL 2>/dev/null\n"
        "exit $GATEWAY\n",
        encoding="utf-8",
    )
    wrapper = ["unshare", "--net", "--fork"] if own_network_allowed() else []
    launched = time.time()
    try:
        done = subprocess.run(
            [*wrapper, "sh", str(script)], cwd=working, timeout=settings.timeout_s, check=False
        )
        code: int | None = done.returncode
    except subprocess.TimeoutExpired:
        code = None
    verdict.wall_s = time.time() - launched
    if code != 0:
        tail = gateway_log.read_text(errors="replace")[-1500:] if gateway_log.exists() else ""
        verdict.faults.append(f"gateway exit {code}: {tail}")
    read_log(verdict, kernel_log, launched, (" serve(): ",))
    result = working / "result.json"
    if result.is_file() and not json.loads(result.read_text()).get("Succeeded"):
        verdict.faults.append(f"result.json: {result.read_text()[:500]}")
    if verdict.serve_s is not None and verdict.serve_s > SERVE_LIMIT_S:
        verdict.faults.append(f"serve() after {verdict.serve_s:.0f} s: past Kaggle's 15 minutes")
    check_output(verdict, working / "submission.parquet", tree, config.profile)
    return verdict


def own_network_allowed() -> bool:
    """Whether `unshare --net` works here (root, or user namespaces allowed)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def _env_prefix(env: dict[str, str]) -> str:
    return "env -i " + " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
