"""The rehearsal's Kaggle-shaped tree: competition data, the wheel dataset, the code file, config.

root/kaggle/input/<competition>/{test.csv, kaggle_evaluation/},
root/kaggle/input/<kaggle.wheels_slug>/ (the wheelhouse, our wheel rebuilt from
this checkout), root/kaggle/working/, root/src/kernel.py (the code file alone,
as it is pushed), root/rehearsal.toml (the config the kernel reads) and
root/tmp (the runs' TMPDIR, so that nothing of theirs outlives the tree).

The root is a new folder on a RAM disk (/dev/shm) when it has room, else in
the temp folder: the runs' venvs hold ~30k files, and on this shared machine's
disk deleting them took 20-90 s, writing them as long again. A rehearsal
killed before removing its root leaves it behind: the next one removes every
root whose owner process is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from submission.config import PROFILES, Config, config_toml, load_config

KERNEL_FILE = Path(__file__).resolve().parents[1] / "kernel.py"
ROOT_PREFIX = "aimo-rehearsal-"
RAM_DISK = Path("/dev/shm")
RAM_DISK_ROOM = 4 << 30  # bytes free on the RAM disk for a tree there (two profiles: ~1.3 GB)
OWNER_FILE = "owner.pid"
OWN_WHEEL_PREFIX = "aimo_submission-"


def make_root(ram_disk: Path = RAM_DISK) -> Path:
    """A new, empty folder for the trees, owned by this process; stale ones removed first."""
    roomy = ram_disk.is_dir() and os.access(ram_disk, os.W_OK)
    roomy = roomy and shutil.disk_usage(ram_disk).free >= RAM_DISK_ROOM
    base = ram_disk if roomy else Path(tempfile.gettempdir())
    remove_stale_roots(base)
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=base))
    (root / OWNER_FILE).write_text(str(os.getpid()), encoding="utf-8")
    return root


def remove_stale_roots(base: Path) -> None:
    """Remove the roots in `base` whose owner process is gone (a rehearsal killed outright)."""
    import psutil

    for root in base.glob(f"{ROOT_PREFIX}*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or not yet written
        if not psutil.pid_exists(owner):
            shutil.rmtree(root, ignore_errors=True)


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
    own_wheel: Path | None = None,
) -> Tree:
    """root/kaggle/{input/<competition>, input/<wheels slug>, working}, src/kernel.py.

    `own_wheel` (built by `build_own_wheel`) replaces the wheelhouse's own wheel.
    """
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
    lay_out_wheels(kaggle / "input" / config.kaggle.wheels_slug, wheelhouse, own_wheel)
    (root / "tmp").mkdir(exist_ok=True)
    code_file = root / "src" / "kernel.py"
    code_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(KERNEL_FILE, code_file)  # pushed alone, as kaggle_metadata.json's code_file
    config_file = root / "rehearsal.toml"
    config_file.write_text(config_toml(config), encoding="utf-8")
    rows = pl.read_csv(test_csv, infer_schema=False).height
    return Tree(root, kaggle, competition, code_file, config_file, rows)


def evaluation_profiles(folder: Path) -> list[str]:
    """The profiles whose server module the `kaggle_evaluation` in `folder` (or `folder`) holds."""
    root = folder.parent if folder.name == "kaggle_evaluation" else folder
    found = []
    for name in PROFILES:
        server = load_config(name).profile.gateway_module.rsplit(".", 1)[-1] + ".py"
        if (root / "kaggle_evaluation" / server).is_file():
            found.append(name)
    return found


def lay_out_wheels(dataset: Path, wheelhouse: Path, own_wheel: Path | None) -> None:
    """The wheel dataset: the wheelhouse's files, with `own_wheel` for its own wheel if given.

    A wheelhouse built before the last code change holds stale code: our wheel
    rebuilt from the checkout rehearses what it would push (`--no-rebuild`: as it is).
    """
    shutil.rmtree(dataset, ignore_errors=True)
    (dataset / "wheels").mkdir(parents=True)
    for item in wheelhouse.iterdir():
        if item.is_dir() and item.name != "wheels":  # e.g. tiktoken_encodings/
            shutil.copytree(item, dataset / item.name)
        elif item.name != "wheels":
            shutil.copy2(item, dataset / item.name)
    for wheel in (wheelhouse / "wheels").glob("*.whl"):
        if not (own_wheel is not None and wheel.name.startswith(OWN_WHEEL_PREFIX)):
            (dataset / "wheels" / wheel.name).symlink_to(wheel.resolve())
    if own_wheel is not None:
        (dataset / "wheels" / own_wheel.name).symlink_to(own_wheel.resolve())


def missing_dependency_wheels(wheelhouse: Path) -> list[str]:
    """The checkout's runtime dependencies (pyproject.toml) that have no wheel in the
    wheelhouse: a wheelhouse built before they were added cannot install our rebuilt wheel."""
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    project = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {_normal(re.match(r"[A-Za-z0-9_.-]+", d).group(0)) for d in project["dependencies"]}
    have = {_normal(w.name.split("-")[0]) for w in (wheelhouse / "wheels").glob("*.whl")}
    return sorted(names - have)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


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
