"""`python -m submission rehearse`: its parts here; the whole of it against the real gateway.

The end-to-end test needs what the rehearsal itself needs and a clean clone
does not hold: the real `kaggle_evaluation` (public, not a dependency; see
docs/kaggle.md for where it comes from), a wheelhouse from
offline_wheels/download.py, and the image's wheels. Point
`AIMO_TEST_KAGGLE_EVALUATION` at a folder holding `aimo3/` and `aimo2/`,
`AIMO_TEST_WHEELHOUSE` and `AIMO_TEST_IMAGE_WHEELS` at the two wheel folders.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from submission.config import config_toml, load_config
from submission.config_fields import read_toml
from submission.rehearsal import isolation as rehearsal_isolation
from submission.rehearsal.isolation import Process, own_namespaces_allowed
from submission.rehearsal.progress import Progress
from submission.rehearsal.runs import SITECUSTOMIZE, RunSettings, _supervise
from submission.rehearsal.tree import lay_out
from submission.rehearsal.verdict import Verdict, read_log

REPO = Path(__file__).resolve().parents[1]


def test_the_rehearsal_config_is_the_config(tmp_path: Path) -> None:
    """What the kernel reads through $AIMO_CONFIG is the config the rehearsal was given."""
    overrides = [
        "engine.kind=sim",
        "engine.sim.attempts_csv=/data/log.csv",
        "engine.sim.speed=500",
        "generation.stop=['</s>']",
        "output.progress=false",
    ]
    production = REPO / "submission" / "kaggle.toml"
    for profile in ("aimo3", "aimo2"):
        config = load_config(profile, production, overrides)
        path = tmp_path / f"{profile}.toml"
        path.write_text(config_toml(config))
        read_toml(path)  # valid TOML
        assert load_config(profile, path) == config


def test_the_gateway_hook_resolves_inference_server_to_loopback(tmp_path: Path) -> None:
    import importlib.util

    # A failure, not a skip: the README's test command installs grpc (the kaggle extra).
    assert importlib.util.find_spec("grpc"), "no grpc: pip install -e '.[kaggle]' (README)"
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    probe = (
        "import socket, grpc\n"
        "print(socket.gethostbyname('inference_server'))\n"
        "print(socket.gethostbyname('localhost'))\n"
        "seen = []\n"
        "import sitecustomize\n"
        "sitecustomize._insecure_channel = lambda target, *a, **k: seen.append(target)\n"
        "grpc.insecure_channel('inference_server:50051')\n"
        "grpc.insecure_channel('localhost:60053')\n"
        "print(seen)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "127.0.0.1"
    assert lines[1] == socket.gethostbyname("localhost")
    assert lines[2] == "['127.0.0.1:50051', 'localhost:60053']"


def test_the_verdict_is_read_from_the_kernel_log(tmp_path: Path) -> None:
    """Lines as the kernel writes them (a rehearsal's rerun log, shortened)."""
    log = tmp_path / "kernel.log"
    log.write_text(
        "2026-11-30 00:46:31,596 INFO submission.kernel: kernel: python 3.11.7, pid 8714\n"
        "2026-11-30 00:47:38,431 INFO submission.kernel: install: offline wheels from "
        "/r/kaggle/input/aimo-offline-wheels installed in 60.9 s\n"
        "2026-11-30 00:47:40,313 INFO submission.kernel: serve(): 70.0 s after the process start\n"
        "2026-11-30 00:47:45,757 WARNING submission.harness: fallback 641659: no attempt answered\n"
        "2026-11-30 00:47:46,105 INFO submission.harness: problem 2/50 9c1c5f: answer 64 "
        "(5/16 votes, 7 answered) in 0.3 s (5 agree) | elapsed 75 s, left 17325 s\n"
    )
    from datetime import datetime

    launched = datetime(2026, 11, 30, 0, 46, 30, 596000).timestamp()
    verdict = Verdict("rerun")
    read_log(verdict, log, launched, (" serve(): ",))
    assert verdict.install_s == 60.9
    assert verdict.serve_s == pytest.approx(69.717, abs=1e-3)
    assert verdict.first_answer_s == pytest.approx(75.161, abs=1e-3)  # a fallback answers too
    assert verdict.fallbacks == {"641659": "no attempt answered"}


def test_the_tree_is_kaggle_shaped(tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    (wheelhouse / "wheels").mkdir(parents=True)
    (wheelhouse / "wheels" / "polars-2.1.0-py3-none-any.whl").write_bytes(b"")
    (wheelhouse / "requirements.txt").write_text("aimo-submission==0.1.0\n")
    # download.py --with-harmony puts the vocabulary folder beside the wheels.
    (wheelhouse / "tiktoken_encodings").mkdir()
    (wheelhouse / "tiktoken_encodings" / "o200k_base.tiktoken").write_text("vocabulary\n")
    evaluation = tmp_path / "real" / "kaggle_evaluation"
    evaluation.mkdir(parents=True)
    (evaluation / "__init__.py").write_text("")
    config = load_config("aimo2")
    test_csv = REPO / "submission" / "data" / "aimo2_reference.csv"
    tree = lay_out(tmp_path / "r", config, test_csv, evaluation.parent, wheelhouse)
    competition = tree.kaggle / "input" / "ai-mathematical-olympiad-progress-prize-2"
    assert tree.competition == competition and (competition / "test.csv").is_file()
    assert (competition / "kaggle_evaluation" / "__init__.py").is_file()
    wheels = tree.kaggle / "input" / "aimo-offline-wheels"  # kaggle.wheels_slug
    assert (wheels / "requirements.txt").is_file()
    assert (wheels / "wheels" / "polars-2.1.0-py3-none-any.whl").is_symlink()
    assert (wheels / "tiktoken_encodings" / "o200k_base.tiktoken").read_text() == "vocabulary\n"
    assert tree.code_file.read_text() == (REPO / "submission" / "kernel.py").read_text()
    assert tree.test_rows == 10


def real_inputs() -> tuple[Path, Path, Path]:
    names = ("AIMO_TEST_KAGGLE_EVALUATION", "AIMO_TEST_WHEELHOUSE", "AIMO_TEST_IMAGE_WHEELS")
    values = [os.environ.get(name) for name in names]
    if not all(values):
        pytest.skip(f"set {', '.join(names)} to rehearse against the real gateway")
    return tuple(Path(v) for v in values)  # type: ignore[arg-type,return-value]


@pytest.mark.slow
def test_the_rehearsal_passes_against_the_real_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented command (docs/kaggle.md), both competitions in one run.

    `AIMO_TEST_REHEARSAL_PYTHON` names the wheelhouse's interpreter when it is
    not this one (the default wheelhouse is for Kaggle's Python 3.12).
    """
    evaluation, wheelhouse, image_wheels = real_inputs()
    from submission.__main__ import main

    python = os.environ.get("AIMO_TEST_REHEARSAL_PYTHON")
    code = main(
        [
            *("rehearse", "--sim", "--json", "--out", str(tmp_path / "out")),
            *("--kaggle-evaluation", str(evaluation / "aimo3")),
            *("--kaggle-evaluation", str(evaluation / "aimo2")),
            *("--wheelhouse", str(wheelhouse), "--image-wheels", str(image_wheels)),
            *(("--python", python) if python else ()),
        ]
    )
    verdicts = json.loads(capsys.readouterr().out)
    assert code == 0, verdicts
    runs = [(v["profile"], v["mode"]) for v in verdicts]
    assert runs == [(p, m) for p in ("aimo3", "aimo2") for m in ("interactive", "rerun")]
    assert all(v["passed"] and v["rows"] == 10 for v in verdicts)
    assert all(Path(v["log"]).is_file() for v in verdicts)  # the logs outlive the tree


# --- nothing outlives a rehearsal (issue 21 item 3) -------------------------------------------

DRIVER = """
import json, signal, sys
from pathlib import Path
from submission.commands.rehearse import _interrupt
from submission.config import PACKAGE_DATA, load_config
from submission.rehearsal.progress import Progress
from submission.rehearsal.runs import RunSettings, rehearse_interactive
from submission.rehearsal.tree import lay_out

root, logs, wheelhouse = (Path(a) for a in sys.argv[1:4])
signal.signal(signal.SIGTERM, _interrupt)  # as the command does
if sys.argv[5] == "no-namespaces":  # as on a machine where unshare is not allowed
    import submission.rehearsal.isolation as isolation
    isolation.own_namespaces_allowed = lambda: False
# An engine that never finishes loading: the kernel waits with its sandbox up.
config = load_config("aimo3", overrides=["engine.kind=sim", "engine.sim.start_delay_s=600"])
tree = lay_out(root, config, PACKAGE_DATA / "aimo3_reference.csv", None, wheelhouse)
settings = RunSettings(Path(sys.executable), sys.executable, float(sys.argv[4]), Progress())
print(json.dumps(rehearse_interactive(tree, config, settings, logs).faults), flush=True)
"""


def run_processes(tree_root: Path) -> list[psutil.Process]:
    """Processes of a rehearsed run: its environment or command line names its tree."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        env = process.info["environ"] or {}
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(tree_root) in env.get("AIMO_KAGGLE_ROOT", "") or str(tree_root) in cmdline:
            found.append(process)
    return found


def gone_within(tree_root: Path, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := run_processes(tree_root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [" ".join(p.info["cmdline"] or [])[:120] for p in left]


def start_driver(tmp_path: Path, isolation: str) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "wheelhouse" / "wheels").mkdir(parents=True)
    root = tmp_path / "tree"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DRIVER,
            str(root),
            str(tmp_path / "logs"),
            str(tmp_path / "wheelhouse"),
            "600",
            isolation,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    (tmp_path / "logs").mkdir()
    deadline = time.monotonic() + 120
    # Deep enough to leak: the kernel has started its sandbox's fork server.
    while not any("forkserver" in " ".join(p.info["cmdline"] or []) for p in run_processes(root)):
        assert driver.poll() is None, f"the driver ended early: {driver.stdout.read()}"
        assert time.monotonic() < deadline, "the kernel never started its sandbox"
        time.sleep(0.5)
    return driver, root


ISOLATIONS = ["namespaces", "no-namespaces"]


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_killed_rehearsal_leaves_no_process_behind(tmp_path: Path, isolation: str) -> None:
    """Before: the kernel, the gateway and the fork server ran on as orphans."""
    if isolation == "namespaces" and not own_namespaces_allowed():
        pytest.skip("unshare is not allowed on this machine")
    driver, root = start_driver(tmp_path, isolation)
    driver.kill()  # SIGKILL: the rehearsal gets no chance to clean up
    driver.wait()
    assert gone_within(root, 30) == []


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_stopped_rehearsal_stops_its_kernel_and_keeps_its_log(
    tmp_path: Path, isolation: str
) -> None:
    if isolation == "namespaces" and not own_namespaces_allowed():
        pytest.skip("unshare is not allowed on this machine")
    driver, root = start_driver(tmp_path, isolation)
    driver.terminate()  # SIGTERM (or Ctrl-C): the run is stopped as Kaggle stops a kernel
    driver.wait(timeout=60)
    assert gone_within(root, 10) == []
    log = (tmp_path / "logs" / "interactive.log").read_text()
    assert "SIGTERM: closing the harness" in log  # the kernel closed itself


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_run_past_its_timeout_is_stopped_with_every_descendant(
    tmp_path: Path, isolation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if isolation == "no-namespaces":
        monkeypatch.setattr(rehearsal_isolation, "own_namespaces_allowed", lambda: False)
    marker = str(tmp_path / "kaggle")
    # A child that leaves its session (as sandbox sessions do) must end too.
    escapee = "setsid sleep 600 & sleep 600"
    process = Process(
        "kernel",
        ["sh", "-c", escapee],
        {"PATH": os.environ["PATH"], "AIMO_KAGGLE_ROOT": marker},
        str(tmp_path),
        str(tmp_path / "kernel.log"),
    )
    settings = RunSettings(Path(sys.executable), sys.executable, 2.0, Progress(enabled=False))
    verdict = Verdict("interactive", profile="aimo3")
    code, _ = _supervise(verdict, [process], tmp_path / "spec.json", settings, {})
    assert code is None  # timed out
    assert gone_within(tmp_path, 10) == []


def test_a_run_is_offline_with_loopback_up(tmp_path: Path) -> None:
    """Before: inside `unshare --net` loopback was down and the interactive run hung."""
    probe = (
        "import os, socket\n"
        "server = socket.create_server(('127.0.0.1', 0))\n"
        "socket.create_connection(server.getsockname(), timeout=5)\n"
        "print('interfaces', sorted(name for _, name in socket.if_nameindex()))\n"
    )
    log = tmp_path / "probe.log"
    process = Process(
        "probe",
        [sys.executable, "-c", probe],
        {"PATH": os.environ["PATH"]},
        str(tmp_path),
        str(log),
    )
    settings = RunSettings(Path(sys.executable), sys.executable, 60.0, Progress(enabled=False))
    code, _ = _supervise(Verdict("probe"), [process], tmp_path / "spec.json", settings, {})
    assert code == 0, log.read_text()
    if own_namespaces_allowed():
        assert "interfaces ['lo']" in log.read_text()  # no way out but loopback


# --- what is said before anything runs (issue 21 item 2) ---------------------------------------


def rehearse_args(tmp_path: Path, *extra: str, cpython: str = "312") -> list[str]:
    wheelhouse, image = tmp_path / "wheelhouse", tmp_path / "image"
    (wheelhouse / "wheels").mkdir(parents=True, exist_ok=True)
    image.mkdir(exist_ok=True)
    # What offline_wheels/download.py makes (by default for Kaggle's Python 3.12).
    wheel = f"pyarrow-26.0.1-cp{cpython}-cp{cpython}-manylinux_2_28_x86_64.whl"
    (wheelhouse / "wheels" / wheel).write_bytes(b"")
    for name in ("polars", "numpy", "sympy", "psutil", "rich", "matplotlib", "httpx"):
        (wheelhouse / "wheels" / f"{name}-1.0-py3-none-any.whl").write_bytes(b"")
    return [
        "rehearse", "--sim", "--wheelhouse", str(wheelhouse), "--image-wheels", str(image),
        "--out", str(tmp_path / "out"), *extra,
    ]  # fmt: skip


def test_a_wheelhouse_for_another_python_is_said_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the kernel's log said 'offline install failed ... pyarrow', then a psutil
    traceback, minutes in."""
    from submission.__main__ import main

    monkeypatch.setenv("PATH", str(tmp_path / "no-python-here"))  # no python3.12 to find
    python = "{}.{}".format(*sys.version_info[:2])
    if python == "3.12":
        pytest.skip("this interpreter is the wheelhouse's")
    started = time.monotonic()
    assert main(rehearse_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "is for CPython 3.12 (pyarrow-26.0.1-cp312" in err
    assert f"this Python is {python}" in err and "--python" in err
    assert not (tmp_path / "out").exists()  # nothing ran
    assert time.monotonic() - started < 30


def test_each_kaggle_evaluation_picks_its_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from submission.commands import rehearse

    folders = []
    for profile, server in [("aimo3", "aimo_3"), ("aimo2", "aimo_2")]:
        package = tmp_path / profile / "kaggle_evaluation"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / f"{server}_inference_server.py").write_text("")
        folders += ["--kaggle-evaluation", str(package.parent)]
    parser = argparse.ArgumentParser()
    rehearse.add_arguments(parser)
    this_python = "{}{}".format(*sys.version_info[:2])
    args = parser.parse_args(rehearse_args(tmp_path, *folders, cpython=this_python)[1:])
    plan = rehearse.plan_rehearsal(args)
    assert list(plan.configs) == ["aimo3", "aimo2"]
    assert plan.evaluations == {"aimo3": Path(folders[1]), "aimo2": Path(folders[3])}
    assert plan.python == sys.executable
    assert plan.configs["aimo2"].engine.kind == "sim"  # --sim
    args = parser.parse_args(rehearse_args(tmp_path, "--kaggle-evaluation", str(tmp_path))[1:])
    with pytest.raises(rehearse.RehearsalInputError, match="no kaggle_evaluation"):
        rehearse.plan_rehearsal(args)
    args = parser.parse_args(
        rehearse_args(tmp_path, "--profile", "aimo2", "--kaggle-evaluation", folders[1])[1:]
    )
    with pytest.raises(rehearse.RehearsalInputError, match="holds aimo2's kaggle_evaluation"):
        rehearse.plan_rehearsal(args)


def test_a_wheelhouse_older_than_the_checkout_is_said_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wheelhouse built before the package needed httpx cannot install the rebuilt wheel
    (before: both kernels stopped, and the rerun's gateway waited out the timeout)."""
    from submission.__main__ import main

    args = rehearse_args(tmp_path)
    (tmp_path / "wheelhouse" / "wheels" / "httpx-1.0-py3-none-any.whl").unlink()
    assert main(args) == 2
    assert "has no wheel of httpx, which this checkout's package needs" in capsys.readouterr().err


def test_a_run_ends_when_its_kernel_ends_before_the_gateway(tmp_path: Path) -> None:
    """A kernel that stops (exit 3: its wheels did not install) will never serve: the rerun
    ends then, not at the timeout, and says why."""
    env = {"PATH": os.environ["PATH"], "AIMO_KAGGLE_ROOT": str(tmp_path / "kaggle")}
    kernel = Process("kernel", ["sh", "-c", "exit 3"], env, str(tmp_path), str(tmp_path / "k"))
    gateway = Process("gateway", ["sleep", "600"], env, str(tmp_path), str(tmp_path / "g"))
    settings = RunSettings(Path(sys.executable), sys.executable, 300.0, Progress(enabled=False))
    verdict = Verdict("rerun", profile="aimo3")
    started = time.monotonic()
    _supervise(verdict, [kernel, gateway], tmp_path / "spec.json", settings, {})
    assert time.monotonic() - started < 60
    assert verdict.exits == {"kernel": 3}
    assert gone_within(tmp_path, 10) == []
