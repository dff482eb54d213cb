"""The rehearsal's Kaggle-shaped tree: competition data, the wheel dataset, the code file, config.

root/kaggle/input/<competition>/{test.csv, kaggle_evaluation/},
root/kaggle/input/aimo-offline-wheels/ (the wheelhouse, our wheel rebuilt from
this checkout), root/kaggle/working/, root/src/kernel.py (the code file alone,
as it is pushed) and root/rehearsal.toml (the config the kernel reads).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from submission.config import Config, config_toml

KERNEL_FILE = Path(__file__).resolve().parents[1] / "kernel.py"
WHEELS_DATASET = "aimo-offline-wheels"
OWN_WHEEL_PREFIX = "aimo_submission-"


@dataclass(frozen=True)
class Tree:
    root: Path
    kaggle: Path
    competition: Path
    code_file: Path
    config_file: Path
    test_rows: int


def lay_out(
    root: Path,
    config: Config,
    test_csv: Path,
    evaluation: Path | None,
    wheelhouse: Path,
    rebuild: bool = True,
) -> Tree:
    """root/kaggle/{input/<competition>, input/aimo-offline-wheels, working}, src/kernel.py."""
    import polars as pl

    kaggle = root / "kaggle"
    competition = kaggle / "input" / Path(config.profile.competition_dir).name
    competition.mkdir(parents=True, exist_ok=True)
    shutil.copy2(test_csv, competition / "test.csv")
    if evaluation is not None:
        package = (
            evaluation
            if evaluation.name == "kaggle_evaluation"
            else evaluation / "kaggle_evaluation"
        )
        shutil.copytree(
            package,
            competition / "kaggle_evaluation",
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    lay_out_wheels(kaggle / "input" / WHEELS_DATASET, wheelhouse, rebuild)
    code_file = root / "src" / "kernel.py"
    code_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(KERNEL_FILE, code_file)  # pushed alone, as kaggle_metadata.json's code_file
    config_file = root / "rehearsal.toml"
    config_file.write_text(config_toml(config), encoding="utf-8")
    rows = pl.read_csv(test_csv, infer_schema=False).height
    return Tree(root, kaggle, competition, code_file, config_file, rows)


def lay_out_wheels(dataset: Path, wheelhouse: Path, rebuild: bool) -> None:
    """The wheel dataset: the wheelhouse's files, our own wheel rebuilt from this checkout.

    A wheelhouse built before the last code change holds stale code: rebuilding
    our wheel rehearses what the checkout would push (`--no-rebuild`: as it is).
    """
    shutil.rmtree(dataset, ignore_errors=True)
    (dataset / "wheels").mkdir(parents=True)
    for item in wheelhouse.iterdir():
        if item.is_dir() and item.name != "wheels":  # e.g. tiktoken_encodings/
            shutil.copytree(item, dataset / item.name)
        elif item.name != "wheels":
            shutil.copy2(item, dataset / item.name)
    for wheel in (wheelhouse / "wheels").glob("*.whl"):
        if not (rebuild and wheel.name.startswith(OWN_WHEEL_PREFIX)):
            (dataset / "wheels" / wheel.name).symlink_to(wheel.resolve())
    if rebuild:
        build_own_wheel(dataset / "wheels")


def build_own_wheel(dest: Path) -> Path:
    """Our wheel from this checkout (a copy: setuptools' build/ would land in the repo's)."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "pyproject.toml").is_file():
        raise FileNotFoundError(f"no checkout at {repo} to build our wheel from (--no-rebuild)")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(
            repo / "submission",
            source / "submission",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(repo / name, source / name)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "--disable-pip-version-check",
                "-w",
                str(dest),
                str(source),
            ],
            check=True,
        )
    (built,) = dest.glob(f"{OWN_WHEEL_PREFIX}*.whl")
    return built
