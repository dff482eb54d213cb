"""`python -m submission rehearse`: its parts here; the whole of it against the real gateway.

The end-to-end test needs what the rehearsal itself needs and a clean clone
does not hold: the real `kaggle_evaluation` (public, not a dependency; see
docs/kaggle.md for where it comes from), a wheelhouse from
offline_wheels/download.py, and the image's wheels. Point
`AIMO_TEST_KAGGLE_EVALUATION` at a folder holding `aimo3/` and `aimo2/`,
`AIMO_TEST_WHEELHOUSE` and `AIMO_TEST_IMAGE_WHEELS` at the two wheel folders.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from submission.config import config_toml, load_config
from submission.config_fields import read_toml
from submission.rehearsal.runs import SITECUSTOMIZE
from submission.rehearsal.tree import WHEELS_DATASET, lay_out
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
    tree = lay_out(tmp_path / "r", config, test_csv, evaluation.parent, wheelhouse, rebuild=False)
    competition = tree.kaggle / "input" / "ai-mathematical-olympiad-progress-prize-2"
    assert tree.competition == competition and (competition / "test.csv").is_file()
    assert (competition / "kaggle_evaluation" / "__init__.py").is_file()
    wheels = tree.kaggle / "input" / WHEELS_DATASET
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
@pytest.mark.parametrize("profile", ["aimo3", "aimo2"])
def test_the_rehearsal_passes_against_the_real_gateway(
    profile: str, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluation, wheelhouse, image_wheels = real_inputs()
    from submission.__main__ import main

    log = shared_data / "attempts" / "hard50_dev_half.csv"
    code = main(
        [
            "rehearse",
            "--profile",
            profile,
            "--json",
            "--kaggle-evaluation",
            str(evaluation / profile),
            "--wheelhouse",
            str(wheelhouse),
            "--image-wheels",
            str(image_wheels),
            "--set",
            "engine.kind=sim",
            "--set",
            f"engine.sim.attempts_csv={log}",
            "--set",
            "engine.sim.speed=500",
            "--set",
            "engine.sim.chunk_s=0.05",
        ]
    )
    verdicts = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [v["mode"] for v in verdicts] == ["interactive", "rerun"]
    assert all(v["passed"] and v["rows"] == 10 for v in verdicts)
