"""From a collected log to a submission: simulate's --out and progress (issue 21 item 9),
a speed profile named by simulate, the held-out table against every anchor, and the tuned
policy written as TOML, loaded by kernel.py --config and used in a local kernel run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from submission.__main__ import main
from submission.config import PACKAGE_DATA, load_config
from submission.gateway import check_submission
from submission.policy.anchors import anchor_policies
from submission.speed_profile import load_profile
from tests.helpers import fast_sim

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--seeds", "2", "--fractions", "1", "--tick", "5"]
FAST_SIM = fast_sim(attempts=6, concurrency=12)


def test_simulate_writes_its_outputs_to_out_and_shows_progress(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 item 9: `simulate --out` was rejected, and it printed nothing for minutes."""
    from submission.commands import progress_bar

    monkeypatch.setattr(progress_bar, "LOG_EVERY_S", 0.0)  # a line per run, not per 10 s
    out = tmp_path / "sim"
    with caplog.at_level(logging.INFO):
        assert main(["simulate", *QUICK, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"simulate.md", "simulate.json", "simulate.png"}
    rows = json.loads((out / "simulate.json").read_text())
    assert len(rows) == 1 + len(anchor_policies())
    assert "| 1 | default |" in (out / "simulate.md").read_text()
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("simulate: ")]
    assert progress[0].startswith("simulate: 1/10 runs") and progress[-1].startswith(
        "simulate: 10/10 runs (100%)"
    )
    assert any("engine model: the log's fit" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sim engine's stand-in model collected on the embedded sim problems (10 x 6)."""
    folder = tmp_path_factory.mktemp("collected")
    problems = folder / "problems.csv"
    pl.read_csv(PACKAGE_DATA / "synthetic_problems.csv").head(10).write_csv(problems)
    argv = ["collect", "--problems", str(problems), "--out", str(folder / "log"), *FAST_SIM]
    assert main(argv) == 0
    return folder / "log"


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A speed profile measured by `bench speed` on a sim engine with R1 2000, a 0.087."""
    path = tmp_path_factory.mktemp("profile") / "profile.json"
    argv = ["bench", "speed", "--streams", "1", "4", "--max-tokens", "3000"]
    argv += ["--code-cells", "3", "--out", str(path)]
    # Chunks of 0.25 s: a loaded machine's late wake-ups are a small part of each.
    sim = ["engine.kind=sim", "engine.sim.tokens_per_s=2000", "engine.sim.code_call_s=0"]
    sim += ["engine.sim.chunk_s=0.25", "engine.sim.concurrency=1"]
    assert main([*argv, *(a for s in sim for a in ("--set", s))]) == 0
    return path


def test_bench_speed_measures_the_engine_model(profile: Path) -> None:
    measured = load_profile(profile)
    assert measured.streams == (1, 4) and measured.engine == "sim"
    assert measured.single_stream_rate == pytest.approx(2000, rel=0.15)
    assert measured.contention == pytest.approx(0.087, abs=0.03)
    assert measured.code_call_s > 0


def test_simulate_says_which_speed_profile_it_used(
    collected: Path, profile: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["simulate", "--attempts", str(collected / "attempts.parquet"), *QUICK, "--plot", ""]
    with caplog.at_level(logging.INFO):
        assert main([*argv, "--speed-profile", str(profile)]) == 0
    said = caplog.text
    assert f"engine model: speed profile {profile}" in said
    assert "each attempt's recorded concurrency" in said and "implies budget fraction" in said
    assert main([*argv, "--speed-profile", str(profile.with_name("none.json"))]) == 2


def test_a_tuned_policy_from_a_collected_log_runs_in_the_kernel(
    collected: Path, tmp_path: Path
) -> None:
    """collect -> simulate --cross-validate --write-policy -> kernel.py --config."""
    base = tmp_path / "base.toml"  # what the kernel will run: the stand-in replaying the log
    base.write_text(
        "[engine]\n"
        'kind = "sim"\n'
        "[engine.sim]\n"
        f'attempts_csv = "{collected / "attempts.parquet"}"\n'
        "code_call_s = 0.0\n"
        "chunk_s = 0.05\n"
        "[solver]\n"
        "attempts = 4\n"
    )
    policy = tmp_path / "policy.toml"
    out = tmp_path / "cv"
    argv = ["simulate", "--attempts", str(collected / "attempts.parquet"), *QUICK]
    argv += ["--cross-validate", "--config", str(base), "--write-policy", str(policy)]
    assert main([*argv, "--out", str(out)]) == 0
    (row,) = json.loads((out / "cross_validation.json").read_text())
    assert [a["anchor"] for a in row["anchors"]] == [a.name for a in anchor_policies()]
    assert all(
        a["lead"] == pytest.approx(row["score_mean"] - a["anchor_mean"]) for a in row["anchors"]
    )
    assert "± " in (out / "cross_validation.md").read_text()
    text = policy.read_text()
    assert text.startswith("# Policy tuned by")
    # The tuned fields are stated even where they equal the defaults.
    assert "[budget]\nbase_shares = " in text and "[early_stop]\npatient_tokens = " in text
    tuned = load_config("aimo3", policy)
    assert tuned.engine.kind == "sim" and tuned.solver.attempts == 4  # the base config kept
    assert tuned.budget.base_shares in (1.4, 1.8, 2.2)
    assert tuned.early_stop.patient_tokens in (40_000, 10**9)
    assert not (out / "policy.toml").exists()  # --write-policy named another place
    # The header's --set flags give the same policy on the command line.
    sets = text.split("(the same as ", 1)[1].split(")", 1)[0].split()
    by_sets = load_config("aimo3", None, [v for v in sets if v != "--set"])
    assert by_sets.budget == tuned.budget and by_sets.early_stop == tuned.early_stop

    test_csv = tmp_path / "test.csv"
    pl.read_csv(PACKAGE_DATA / "synthetic_problems.csv").head(10).select("id", "problem").write_csv(
        test_csv
    )
    kernel_out = tmp_path / "kernel"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "submission" / "kernel.py"),
            "--code-dir",
            str(REPO),
            "--config",
            str(policy),
            "--set",
            f"profile.competition_dir={tmp_path / 'none'}",
            "--test-csv",
            str(test_csv),
            "--out",
            str(kernel_out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"config: {policy}" in done.stderr
    assert check_submission(kernel_out / "submission.parquet", test_csv, tuned.profile) == []
    answers = pl.read_parquet(kernel_out / "attempts.parquet")
    assert answers["answer"].is_not_null().sum() > 0  # the stand-in answered, not the fallback


def test_a_tuned_policy_passes_the_rehearsal(collected: Path, tmp_path: Path) -> None:
    """The same hand-over through `rehearse` (fresh venvs from the wheelhouse, the built-in
    gateway): needs the two wheel folders (docs/kaggle.md), so it runs where
    AIMO_TEST_WHEELHOUSE and AIMO_TEST_IMAGE_WHEELS name them; the kernel.py test above is
    its counterpart everywhere."""
    wheelhouse, image = (
        os.environ.get(n) for n in ("AIMO_TEST_WHEELHOUSE", "AIMO_TEST_IMAGE_WHEELS")
    )
    if not (wheelhouse and image):
        pytest.skip("set AIMO_TEST_WHEELHOUSE and AIMO_TEST_IMAGE_WHEELS to rehearse")
    policy = tmp_path / "policy.toml"  # over the production config, as docs/own-model.md says
    argv = ["simulate", "--attempts", str(collected / "attempts.parquet"), *QUICK]
    argv += ["--config", str(REPO / "submission" / "kaggle.toml")]
    assert main([*argv, "--cross-validate", "--write-policy", str(policy)]) == 0
    test_csv = tmp_path / "test.csv"
    pl.read_csv(PACKAGE_DATA / "synthetic_problems.csv").head(10).write_csv(test_csv)
    rehearse = ["rehearse", "--wheelhouse", wheelhouse, "--image-wheels", image, "--json"]
    rehearse += [
        "--config",
        str(policy),
        "--test-csv",
        str(test_csv),
        "--keep",
        str(tmp_path / "tree"),
    ]
    sim = ["engine.kind=sim", f"engine.sim.attempts_csv={collected / 'attempts.parquet'}"]
    assert main([*rehearse, *(a for s in sim for a in ("--set", s))]) == 0
    kernel_config = load_config("aimo3", tmp_path / "tree" / "rehearsal.toml")
    tuned = load_config("aimo3", policy)
    assert kernel_config.budget == tuned.budget and kernel_config.early_stop == tuned.early_stop
