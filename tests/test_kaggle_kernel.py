"""The kernel's code file: serve() within seconds, the local gateway, the built-in fallback.

`kaggle_evaluation` is replaced by a contract fake written from the real
packages' source (AIMO-3: kaggle_evaluation v0.9.0 `core/templates.py`
InferenceServer + `core/relay.py` define_server; AIMO-2: v0.3.0, same files):
the constructor rejects what `define_server` rejects (no listener, a
non-function, a lambda), `serve()` is where a rerun blocks, and
`run_local_gateway(data_paths)` serves `data_paths[0]` row by row and writes
submission.parquet in the working directory (here via the built-in replay,
which tests/test_gateway_real.py checks against the real gateway).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import venv
from pathlib import Path

import polars as pl
import pytest

from submission import kaggle, kernel
from submission.answer import normalize_integer
from submission.config import PACKAGE_DATA, Config, load_config
from submission.engines.replay import ReplayEngine
from submission.gateway import check_submission
from submission.harness import Harness
from submission.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")

pytestmark = pytest.mark.usefixtures("kaggle_state_restored")

FAKE_SERVER = '''
"""Contract fake of {module} ({version}); see tests/test_kaggle_kernel.py."""
import os
import time
from pathlib import Path
from types import FunctionType

EVENTS = []


class {cls}:
    def __init__(self, {params}):
        listeners = {listeners}
        if not listeners:
            raise ValueError("Must pass at least one endpoint listener, e.g. `predict`")
        for func in listeners:
            if not isinstance(func, FunctionType):
                raise ValueError(f"Endpoint listeners passed to `serve` must be functions")
            if func.__name__ == "<lambda>":
                raise ValueError("Functions passed as endpoint listeners must be named")
        self.listeners = {{func.__name__: func for func in listeners}}

    def serve(self):
        # The real one starts the gRPC server; in a rerun it then blocks until terminated.
        EVENTS.append(("serve", time.monotonic(), os.getenv("KAGGLE_IS_COMPETITION_RERUN")))

    def run_local_gateway(self, data_paths=None):
        EVENTS.append(("run_local_gateway", tuple(data_paths)))
        from submission.config import load_config
        from submission.gateway import run_builtin_gateway

        profile = load_config("{profile}").profile
        run_builtin_gateway(self.listeners["predict"], Path(data_paths[0]), profile, Path.cwd())
'''


def write_fake_kaggle_evaluation(root: Path, profile: str) -> None:
    package = root / "kaggle_evaluation"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if profile == "aimo3":
        module, cls, version = "aimo_3_inference_server", "AIMO3InferenceServer", "v0.9.0"
        params, listeners = "*endpoint_listeners", "endpoint_listeners"
    else:  # v0.3.0 passes its one argument on to define_server(*endpoint_listeners)
        module, cls, version = "aimo_2_inference_server", "AIMO2InferenceServer", "v0.3.0"
        params, listeners = "endpoint_listeners", "(endpoint_listeners,)"
    source = FAKE_SERVER.format(
        module=module, version=version, cls=cls, params=params, listeners=listeners, profile=profile
    )
    (package / f"{module}.py").write_text(source)


def fake_events() -> list[tuple[object, ...]]:
    for name, module in sys.modules.items():
        if name.startswith("kaggle_evaluation.aimo_"):
            return module.EVENTS
    return []


class SlowLoadingEngine(ReplayEngine):
    """Loads only when released (a 14B engine takes minutes)."""

    release = threading.Event()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.loaded = False

    async def start(self) -> None:
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        self.loaded = True


def replay_config(profile: str, tmp_path: Path) -> Config:
    config = load_config(
        profile, overrides=["prompt.family=tora", "solver.attempts=2", "engine.kind=replay"]
    )
    config.profile.competition_dir = str(tmp_path / "no-competition-here")
    return config


def small_test_csv(tmp_path: Path, rows: int = 3) -> Path:
    path = tmp_path / "test.csv"
    frame = pl.read_csv(PACKAGE_DATA / "gsm8k_first250.csv").head(rows)
    frame.select("id", "problem").write_csv(path)
    return path


@pytest.mark.parametrize("profile", ["aimo2", "aimo3"])
def test_a_rerun_serves_before_the_engine_has_loaded(
    profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_kaggle_evaluation(tmp_path / "data", profile)
    monkeypatch.setenv(kaggle.ENV_RERUN, "1")
    config = replay_config(profile, tmp_path)
    engines: list[SlowLoadingEngine] = []

    def start_harness(config: Config, started_at: float, problems_total: int | None) -> Harness:
        engine = SlowLoadingEngine.from_config(config)
        engines.append(engine)  # type: ignore[arg-type]
        return Harness.start(
            config,
            engine=engine,
            sandbox=Sandbox.from_config(config),
            started_at=started_at,
            problems_total=problems_total,
        )

    SlowLoadingEngine.release.clear()
    started_at = kernel.time.monotonic()
    code = kernel.run_kernel(
        config, started_at, data_dir=tmp_path / "data", start_harness=start_harness
    )
    assert code == 0
    (event,) = fake_events()
    assert event[0] == "serve" and event[2] == "1"
    assert not engines[0].loaded  # serve() came first; loading goes on in the background


def test_a_rerun_without_kaggle_evaluation_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(kaggle.ENV_RERUN, "1")
    config = replay_config("aimo3", tmp_path)
    code = kernel.run_kernel(config, kernel.time.monotonic(), data_dir=tmp_path / "empty")
    assert code == 1
    assert "no kaggle_evaluation found" in caplog.text


@pytest.mark.parametrize("profile", ["aimo2", "aimo3"])
def test_a_local_run_uses_the_real_local_gateway(profile: str, tmp_path: Path) -> None:
    write_fake_kaggle_evaluation(tmp_path / "data", profile)
    config = replay_config(profile, tmp_path)
    test_csv = small_test_csv(tmp_path)
    out = tmp_path / "out"
    code = kernel.run_kernel(
        config, kernel.time.monotonic(), tmp_path / "data", test_csv=test_csv, out_dir=out
    )
    assert code == 0
    assert fake_events() == [("run_local_gateway", (str(test_csv.resolve()),))]
    assert check_submission(out / "submission.parquet", test_csv, config.profile) == []
    assert (out / "attempts.parquet").is_file()


def test_the_kernel_file_runs_standalone_with_the_builtin_replay(tmp_path: Path) -> None:
    """As Kaggle runs it: a script, from another folder, finding the package by itself."""
    test_csv = small_test_csv(tmp_path, rows=4)
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "submission" / "kernel.py"),
            "--code-dir",
            str(REPO),
            "--config",  # not the production submission/kaggle.toml (TensorRT-LLM)
            str(REPO / "submission" / "data" / "replay_gsm8k.toml"),
            "--set",
            "prompt.family=tora",
            "--set",
            "solver.attempts=2",
            "--set",
            f"profile.competition_dir={tmp_path / 'none'}",
            "--test-csv",
            str(test_csv),
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kaggle_evaluation: not in" in done.stderr  # it says where it looked
    profile = load_config("aimo3").profile
    assert check_submission(out / "submission.parquet", test_csv, profile) == []
    # Each answer is one the recordings reached (the replay engine answered, not the fallback).
    engine = ReplayEngine.from_config(replay_config("aimo3", tmp_path))
    problems = dict(pl.read_csv(test_csv).iter_rows())
    for pid, answer in pl.read_parquet(out / "submission.parquet").iter_rows():
        recorded = {normalize_integer(r.predicted) for r in engine.recordings_for(problems[pid])}
        assert answer in recorded, (pid, answer, recorded)


def test_a_kernel_without_its_runtime_packages_stops_clearly(tmp_path: Path) -> None:
    """A wheelhouse for another Python installs nothing: the kernel says so and stops (exit 3).

    Before: 'offline install failed ... pyarrow', then a psutil traceback (issue 21 item 2).
    """
    other = "3.13" if sys.version_info[:2] != (3, 13) else "3.12"
    wheels = tmp_path / "aimo-offline-wheels" / "wheels"
    wheels.mkdir(parents=True)
    tag = "cp" + other.replace(".", "")
    (wheels / f"pyarrow-26.0.1-{tag}-{tag}-manylinux_2_28_x86_64.whl").write_bytes(b"")
    done = subprocess.run(
        # -S: no site-packages, as in a fresh venv before the wheels are installed
        [sys.executable, "-S", str(REPO / "submission" / "kernel.py"), "--code-dir", str(REPO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), kernel.ENV_WHEEL_DIR: str(wheels)},
    )
    this = "{}.{}".format(*sys.version_info[:2])
    assert done.returncode == kernel.EXIT_NOT_READY, done.stderr[-3000:]
    assert f"is for CPython {other}" in done.stderr and f"this Python is {this}" in done.stderr
    assert "runtime packages not installed: polars, pyarrow" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_wheel_dataset_is_found_and_installed_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import submission.offline

    dataset = tmp_path / "aimo-offline-wheels"
    (dataset / "wheels").mkdir(parents=True)
    (dataset / "wheels" / "polars-2.1.0-py3-none-any.whl").write_bytes(b"")
    installed: list[Path] = []
    monkeypatch.setattr(
        submission.offline, "install_offline_wheels", lambda d: installed.append(d) or True
    )
    monkeypatch.delenv(kernel.ENV_WHEEL_DIR, raising=False)
    monkeypatch.setattr(kernel, "KAGGLE_INPUT", tmp_path / "no-kaggle-input")
    kernel.install_wheels(None)  # nothing attached: nothing to install
    assert installed == []
    monkeypatch.setenv(kernel.ENV_WHEEL_DIR, str(dataset))
    kernel.install_wheels(None)
    kernel.install_wheels(dataset / "wheels")  # the wheels folder itself works too
    assert installed == [dataset, dataset / "wheels"]


def test_a_failing_gateway_is_reported_and_the_log_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_fake_kaggle_evaluation(tmp_path / "data", "aimo3")
    server = tmp_path / "data" / "kaggle_evaluation" / "aimo_3_inference_server.py"
    server.write_text(
        server.read_text().replace(
            'EVENTS.append(("run_local_gateway"',
            'raise RuntimeError("GATEWAY_RAISED_EXCEPTION")\n        EVENTS.append(("x"',
        )
    )
    config = replay_config("aimo3", tmp_path)
    out = tmp_path / "out"
    code = kernel.run_kernel(
        config, kernel.time.monotonic(), tmp_path / "data", small_test_csv(tmp_path), out
    )
    assert code == 1
    assert "the gateway failed" in caplog.text
    assert (out / "report.md").is_file()  # what was solved (here nothing) is still reported


def venv_without_our_package(env_dir: Path) -> None:
    """A venv that sees this interpreter's site-packages (polars & co.) but not our package.

    The folders go in through a plain `.pth` line, which adds each to sys.path without
    running the `.pth` files inside: so an editable install of aimo-submission there
    (its finder is started by such a file) stays invisible, as on a fresh Kaggle image.
    """
    venv.create(env_dir)
    site_dirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    purelib = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "parent_site.pth").write_text("\n".join(site_dirs) + "\n")


@pytest.mark.slow
def test_the_kernel_bootstraps_from_our_wheel_alone(tmp_path: Path) -> None:
    """No source dataset attached: kernel.py installs our wheel from the wheel dataset."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "submission", source / "submission", ignore=IGNORE)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    dataset = tmp_path / "aimo-offline-wheels"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    build = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [sys.executable, "-m", *build, "-w", str(dataset / "wheels"), str(source)],
        check=True,
        capture_output=True,
        timeout=240,
        env=env,
    )
    venv_without_our_package(tmp_path / "venv")
    alone = tmp_path / "src" / "kernel.py"  # as Kaggle runs the pushed code file
    alone.parent.mkdir()
    shutil.copy2(REPO / "submission" / "kernel.py", alone)
    test_csv = small_test_csv(tmp_path, rows=2)
    out = tmp_path / "out"
    python = str(tmp_path / "venv" / "bin" / "python")
    flags = ["--config", str(REPO / "submission" / "data" / "replay_gsm8k.toml")]
    flags += ["--set", "prompt.family=tora", "--set", f"profile.competition_dir={tmp_path}/x"]
    flags += ["--test-csv", str(test_csv), "--out", str(out)]
    done = subprocess.run(
        [python, str(alone), "--wheel-dir", str(dataset), *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "code: installed aimo-submission" in done.stderr
    profile = load_config("aimo3").profile
    assert check_submission(out / "submission.parquet", test_csv, profile) == []


def test_production_config_and_profile_detection(tmp_path: Path, monkeypatch) -> None:
    """With no flags (as on Kaggle): the packaged kaggle.toml, and the attached competition."""
    production = load_config(toml_path=REPO / "submission" / "kaggle.toml")
    assert production.engine.kind == "trtllm"
    assert production.engine.trtllm.engine_dir.startswith("/kaggle/input/")
    assert production.prompt.family == "openmath"
    aimo2_dir = tmp_path / "aimo2"
    aimo2_dir.mkdir()
    from submission import config as config_module

    patched = {**config_module.PROFILES["aimo2"], "competition_dir": str(aimo2_dir)}
    monkeypatch.setitem(config_module.PROFILES, "aimo2", patched)
    monkeypatch.setitem(
        config_module.PROFILES, "aimo3", {"competition_dir": str(tmp_path / "absent")}
    )
    assert kernel.detect_profile("aimo3") == "aimo2"
    aimo2_dir.rmdir()
    assert kernel.detect_profile("aimo3") == "aimo3"


def test_the_kernel_and_replay_exit_with_the_same_codes() -> None:
    """kernel.py keeps its own (it runs before the package is importable): the same numbers."""
    from submission import local_run

    assert (kernel.EXIT_FAILED, kernel.EXIT_BAD_INPUT, kernel.EXIT_NOT_READY) == (
        local_run.EXIT_FAILED,
        local_run.EXIT_BAD_INPUT,
        local_run.EXIT_NOT_READY,
    )
