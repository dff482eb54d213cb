"""A competitor's first submission (issue 12): loud when misconfigured, valid when it serves.

Each test pins one blocker or painful point the issue found. `kaggle_evaluation`
is a contract fake written from the real packages' source (AIMO-3 v0.9.0
`core/templates.py` InferenceServer: `serve()` starts the gRPC server, in a
rerun it then blocks, and the gateway calls the `predict` listener once per
test.csv row; AIMO-2 v0.3.0 the same): its `serve()` calls `predict` for each
row of `$FAKE_TEST_CSV` and records the rows, then returns, or blocks when
`$FAKE_SERVE_BLOCKS` is set (as the real one does until it is killed).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from submission import kaggle, kernel
from submission.config import PACKAGE_DATA, Config, load_config
from submission.engines.base import EngineError
from submission.harness import Harness
from submission.local_run import run_locally, usable_out_dir

REPO = Path(__file__).resolve().parents[1]
REPLAY_TOML = REPO / "submission" / "data" / "replay_gsm8k.toml"

pytestmark = pytest.mark.usefixtures("kaggle_state_restored")

FAKE_SERVER = '''
"""Contract fake of {module} ({version}); see tests/test_kaggle_first_submission.py."""
import os
import re
import time

import polars as pl


class {cls}:
    def __init__(self, *endpoint_listeners):
        listeners = endpoint_listeners[0] if {aimo2} else endpoint_listeners
        listeners = listeners if isinstance(listeners, tuple) else (listeners,)
        self.listeners = {{func.__name__: func for func in listeners}}

    def serve(self):
        print("fake serve() listening", flush=True)
        rows = []
        test = pl.read_csv(os.environ["FAKE_TEST_CSV"])
        for row in test.iter_slices(n_rows=1):
            rows.append(self.listeners["predict"](*row.get_columns()))
        pl.concat(rows).write_parquet(os.environ["FAKE_SERVED"])
        while os.environ.get("FAKE_SERVE_BLOCKS"):
            time.sleep(0.1)

    def run_local_gateway(self, data_paths=None):
        raise AssertionError("these tests serve; local runs use the built-in gateway")
'''


def fake_kaggle_evaluation(root: Path, profile: str) -> Path:
    package = root / "kaggle_evaluation"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    number = profile[-1]
    source = FAKE_SERVER.format(
        module=f"aimo_{number}_inference_server",
        version="v0.3.0" if profile == "aimo2" else "v0.9.0",
        cls=f"AIMO{number}InferenceServer",
        aimo2=profile == "aimo2",
    )
    (package / f"aimo_{number}_inference_server.py").write_text(source)
    return root


def gsm8k_test_csv(path: Path, rows: int = 3) -> Path:
    frame = pl.read_csv(PACKAGE_DATA / "gsm8k_first250.csv").head(rows)
    frame.select("id", "problem").write_csv(path)
    return path


def replay_config(tmp_path: Path, *overrides: str, profile: str = "aimo3") -> Config:
    config = load_config(
        profile,
        REPLAY_TOML,
        ["prompt.family=tora", "solver.attempts=2", *overrides],
    )
    config.profile.competition_dir = str(tmp_path / "no-competition-here")
    return config


def run_kernel_file(tmp_path: Path, *flags: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """kernel.py as a script, from another folder, as Kaggle runs it."""
    return subprocess.run(
        [sys.executable, str(REPO / "submission" / "kernel.py"), "--code-dir", str(REPO), *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **(env or {})},
    )


# --- Blocker 1: a misconfigured engine scores 0 silently -------------------------------------


@pytest.mark.parametrize(
    ("flags", "cause"),
    [
        # The documented local command: no --config, so the production kaggle.toml (trtllm).
        ((), "no config.json in /kaggle/input/aimo-engine-openmath-14b-fp8-redrafter"),
        # A wrong engine path in an engine that runs here.
        (
            (
                "--config",
                str(REPLAY_TOML),
                "--set",
                "engine.kind=sim",
                "--set",
                "engine.sim.attempts_csv=/no/such/attempt-log.csv",
            ),
            "/no/such/attempt-log.csv",
        ),
    ],
)
def test_a_misconfigured_engine_stops_an_interactive_run_naming_the_cause_early(
    tmp_path: Path, flags: tuple[str, ...], cause: str
) -> None:
    test_csv = gsm8k_test_csv(tmp_path / "my.csv")
    out = tmp_path / "out"
    done = run_kernel_file(tmp_path, *flags, "--test-csv", str(test_csv), "--out", str(out))
    assert done.returncode == kernel.EXIT_NOT_READY, done.stderr[-3000:]
    first_20 = done.stderr.splitlines()[:20]
    assert any(cause in line and "FAILED" in line for line in first_20), first_20
    assert not (out / "submission.parquet").exists()  # no file of zeros to submit by mistake


def test_wait_ready_raises_the_loading_error_instead_of_swallowing_it() -> None:
    config = load_config(overrides=["engine.kind=sim", "engine.sim.attempts_csv=/no/log.csv"])
    harness = Harness.start(config)
    try:
        with pytest.raises(EngineError, match=re.escape("/no/log.csv")):
            harness.wait_ready(30)
        assert "/no/log.csv" in str(harness.load_error)
    finally:
        harness.close()


def test_a_rerun_with_an_engine_that_cannot_be_built_still_serves_valid_fallbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On today's code the engine's constructor error crashed the kernel before serve()."""
    data = fake_kaggle_evaluation(tmp_path / "data", "aimo3")
    test_csv = gsm8k_test_csv(tmp_path / "test.csv")
    served = tmp_path / "served.parquet"
    monkeypatch.setenv(kaggle.ENV_RERUN, "1")
    monkeypatch.setenv("FAKE_TEST_CSV", str(test_csv))
    monkeypatch.setenv("FAKE_SERVED", str(served))
    config = replay_config(tmp_path, "engine.kind=sim", "engine.sim.attempts_csv=/no/log.csv")
    caplog.set_level(logging.INFO)
    code = kernel.run_kernel(config, time.monotonic(), data_dir=data)
    assert code == 0
    answers = pl.read_parquet(served)
    assert answers.height == 3 and answers["answer"].to_list() == [0, 0, 0]
    assert "serving anyway" in caplog.text  # the preflight's verdict, logged
    fallbacks = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fallback ")]
    assert len(fallbacks) == 3 and all("/no/log.csv" in line for line in fallbacks)


def test_the_report_counts_predict_level_fallbacks_with_their_reasons(tmp_path: Path) -> None:
    """On today's code report.md said "problems 0": these fallbacks bypassed the history."""
    config = replay_config(tmp_path, "engine.kind=sim", "engine.sim.attempts_csv=/no/log.csv")
    test_csv = gsm8k_test_csv(tmp_path / "test.csv")
    harness = Harness.start(config, problems_total=3)
    run = run_locally(harness, config, test_csv, tmp_path / "out", None)
    assert run.ok  # a valid submission of fallbacks
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| problems | 3 |" in report
    assert "| problems with no answer (fallback) | 3 |" in report
    assert report.count("/no/log.csv") == 3  # each problem's reason


# --- Blocker 2: download.py in a fresh Python 3.11 venv -------------------------------------


def test_our_wheel_is_built_without_build_isolation_only_where_bdist_wheel_exists(
    tmp_path: Path,
) -> None:
    sys.path.insert(0, str(REPO / "offline_wheels"))
    import download  # offline_wheels/download.py

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")], check=True)
    bare = str(tmp_path / "v" / "bin" / "python")  # no setuptools, no wheel: no bdist_wheel
    assert download.build_isolation_options(bare) == []
    here_can = (
        subprocess.run(
            [sys.executable, "-c", "import setuptools.command.bdist_wheel"], check=False
        ).returncode
        == 0
        or subprocess.run([sys.executable, "-c", "import wheel"]).returncode == 0
    )
    assert download.build_isolation_options(sys.executable) == (
        ["--no-build-isolation"] if here_can else []
    )


# --- Commands and settings ------------------------------------------------------------------


def test_the_one_placeholder_is_rejected_and_replaced(tmp_path: Path) -> None:
    import json

    from submission.commands.kaggle_metadata import (
        DEFAULT_PATH,
        PLACEHOLDER_OWNER,
        PRODUCTION_CONFIG,
        check_metadata,
        metadata_from_config,
    )

    sys.path.insert(0, str(REPO / "offline_wheels"))
    import download

    committed = json.loads(DEFAULT_PATH.read_text())
    config = load_config("aimo3", PRODUCTION_CONFIG)
    errors = check_metadata(committed, DEFAULT_PATH.parent, config)
    assert len(errors) == 1 and PLACEHOLDER_OWNER in errors[0]  # nothing else is wrong
    config.kaggle.owner = "kagtester"
    written = metadata_from_config(config, committed)
    assert check_metadata(written, DEFAULT_PATH.parent, config) == []
    assert all(s.startswith("kagtester/") for s in written["dataset_sources"])
    # download.py's dataset id comes from the same identity (one owner to set).
    assert download.identity().owner == PLACEHOLDER_OWNER
    # No dataset that nothing builds: our code ships as our wheel in the wheels dataset.
    assert not any("aimo-submission-code" in s for s in committed["dataset_sources"])


def test_profile_detection_reads_the_kaggle_evaluation_it_is_pointed_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On today's code an AIMO-2 package named by the env ran the AIMO-3 profile."""
    aimo2 = fake_kaggle_evaluation(tmp_path / "aimo2", "aimo2")
    aimo3 = fake_kaggle_evaluation(tmp_path / "aimo3", "aimo3")
    monkeypatch.setattr(kernel, "KAGGLE_ROOT", tmp_path / "no-kaggle")
    monkeypatch.setenv(kaggle.ENV_KAGGLE_EVALUATION_DIR, str(aimo2))
    assert kernel.detect_profile("aimo3") == "aimo2"
    monkeypatch.setenv(kaggle.ENV_KAGGLE_EVALUATION_DIR, str(aimo2 / "kaggle_evaluation"))
    assert kernel.detect_profile("aimo3") == "aimo2"
    assert kernel.detect_profile("aimo2", data_dir=aimo3) == "aimo3"  # --data-dir first
    monkeypatch.delenv(kaggle.ENV_KAGGLE_EVALUATION_DIR)
    assert kernel.detect_profile("aimo3") == "aimo3"  # nothing attached: the default


def test_the_production_out_dir_is_not_created_outside_kaggle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    absent = tmp_path / "kaggle"
    chosen = usable_out_dir(absent / "working", kaggle_root=absent)
    assert chosen == tmp_path / "out" and not absent.exists()
    assert "on Kaggle only" in caplog.text
    absent.mkdir()
    assert usable_out_dir(absent / "working", kaggle_root=absent) == absent / "working"
    production = load_config(toml_path=REPO / "submission" / "kaggle.toml")
    assert Path(production.output.out_dir).is_relative_to("/kaggle")  # what this guards


def test_outputs_are_readable_by_others(tmp_path: Path) -> None:
    """On today's code every output was 0600 (mkstemp's mode kept by the rename)."""
    config = replay_config(tmp_path)
    test_csv = gsm8k_test_csv(tmp_path / "test.csv", rows=1)
    old = os.umask(0o022)
    try:
        run = run_locally(Harness.start(config), config, test_csv, tmp_path / "out", None)
    finally:
        os.umask(old)
    assert run.ok
    for name in ("submission.parquet", "attempts.parquet", "report.md", "generations.jsonl"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o644, name


def test_invalid_utf8_in_test_csv_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On today's code: exit 1, a traceback from the gateway, and no submission."""
    test_csv = tmp_path / "test.csv"
    test_csv.write_bytes(b"id,problem\nab12,What is 2+2? \xff\xfe\n")
    config = replay_config(tmp_path)
    code = kernel.run_kernel(config, time.monotonic(), test_csv=test_csv, out_dir=tmp_path / "o")
    assert code == kernel.EXIT_BAD_INPUT
    assert f"problem file {test_csv} is not a readable CSV" in caplog.text
    assert "Traceback" not in caplog.text


# --- Rehearsing a rerun ---------------------------------------------------------------------


def test_a_killed_serving_kernel_leaves_no_sandbox_folders(tmp_path: Path) -> None:
    data = fake_kaggle_evaluation(tmp_path / "data", "aimo3")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        kaggle.ENV_RERUN: "1",
        "TMPDIR": str(scratch),
        "FAKE_TEST_CSV": str(gsm8k_test_csv(tmp_path / "test.csv", rows=1)),
        "FAKE_SERVED": str(tmp_path / "served.parquet"),
        "FAKE_SERVE_BLOCKS": "1",
    }
    flags = [
        "--config",
        str(REPLAY_TOML),
        "--set",
        "prompt.family=tora",
        # Private mount namespaces keep session folders off the host's /tmp altogether;
        # without them the folders live in TMPDIR, the case a killed kernel could leave.
        "--set",
        "sandbox.use_namespaces=false",
        "--data-dir",
        str(data),
    ]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "submission" / "kernel.py"), "--code-dir", str(REPO), *flags],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
    )
    deadline = time.monotonic() + 180
    while not (tmp_path / "served.parquet").exists() and time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        time.sleep(0.1)
    assert any(scratch.glob("aimo-sandbox-*"))  # the sandbox's sessions are up
    process.send_signal(signal.SIGTERM)  # how a serving kernel is stopped
    output, _ = process.communicate(timeout=120)
    assert "SIGTERM: closing the harness" in output
    assert not list(scratch.glob("aimo-sandbox-*")), output[-2000:]


# --- The run log ----------------------------------------------------------------------------


def test_the_run_log_a_competitor_wants(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = replay_config(tmp_path)
    test_csv = gsm8k_test_csv(tmp_path / "test.csv")
    code = kernel.run_kernel(config, time.monotonic(), test_csv=test_csv, out_dir=tmp_path / "o")
    assert code == 0
    text = caplog.text
    assert "engine replay loaded in" in text
    assert "preflight:" in text
    for k in (1, 2, 3):  # k/N, answer with votes, time, elapsed and left
        line = next(r.getMessage() for r in caplog.records if f"problem {k}/3 " in r.getMessage())
        assert "votes" in line and "elapsed" in line and " left " in line
    assert "summary: 3 rows" in text
    caplog.clear()
    quiet = replay_config(tmp_path, "output.progress=false")
    kernel.run_kernel(quiet, time.monotonic(), test_csv=test_csv, out_dir=tmp_path / "q")
    assert "problem 1/3" not in caplog.text  # output.progress is honoured
    assert "summary: 3 rows" in caplog.text


def test_the_offline_install_is_timed_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import submission.offline

    caplog.set_level(logging.INFO)
    dataset = tmp_path / "aimo-offline-wheels"
    (dataset / "wheels").mkdir(parents=True)
    (dataset / "wheels" / "polars-2.1.0-py3-none-any.whl").write_bytes(b"")
    monkeypatch.setattr(
        submission.offline, "install_offline_wheels", lambda d: time.sleep(0.2) or True
    )
    seconds = kernel.install_wheels(dataset)
    assert seconds >= 0.2
    assert f"install: offline wheels from {dataset} installed in" in caplog.text
