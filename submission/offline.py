"""Install the offline wheelhouse (offline_wheels/download.py's dataset folder) with no index.

The Kaggle kernel has no internet: it calls `install_offline_wheels(DIR)` with
the attached wheel dataset before importing anything pinned. Pure stdlib, so it
runs before those wheels are installed; it never raises (the kernel decides
what to do when it returns False).

A wheelhouse is built for one CPython (offline_wheels/download.py
`--python-version`): its version-specific wheels say which (`cp312-cp312`).
Another interpreter is refused before pip runs, with both versions named
(`wheelhouse_python_problem`). pip installs with `--no-compile`: byte-compiling
every installed module (all of sympy and matplotlib) took 24.6 s of a 5.1 s
install here, while Python compiles only what it imports, on first import.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

LOG = logging.getLogger(__name__)
PACKAGE_NAME = "aimo-submission"


# A wheel built for one CPython: name-version-cp312-cp312-platform.whl (abi3 and
# py3-none wheels fit every later Python and say nothing).
_VERSION_SPECIFIC = re.compile(r"-cp(3)(\d+)-cp3\d+m?-[^-]+\.whl$")


def wheel_folder(dataset_dir: Path) -> Path:
    """DIR/wheels, or DIR itself when the wheels lie at its top."""
    return dataset_dir / "wheels" if (dataset_dir / "wheels").is_dir() else dataset_dir


def wheelhouse_pythons(wheels: Path) -> dict[str, str]:
    """CPython version ("3.12") -> one of its version-specific wheels in this folder."""
    found: dict[str, str] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        if (match := _VERSION_SPECIFIC.search(wheel.name)) is not None:
            found.setdefault(f"{match.group(1)}.{match.group(2)}", wheel.name)
    return found


def wheelhouse_python_problem(wheels: Path, python_version: str) -> str | None:
    """Why this wheelhouse cannot install into CPython `python_version` ("3.11"), or None."""
    pythons = wheelhouse_pythons(wheels)
    if not pythons or python_version in pythons:
        return None
    built_for = ", ".join(f"{v} ({name})" for v, name in sorted(pythons.items()))
    return (
        f"the wheelhouse {wheels} is for CPython {built_for}; this Python is {python_version}: "
        f"run it with Python {'/'.join(sorted(pythons))}, or rebuild it with "
        f"`python offline_wheels/download.py --python-version {python_version} --out DIR`"
    )


def install_command(dataset_dir: Path, python: str = sys.executable) -> list[str]:
    """pip install --no-index from DIR/wheels (or DIR itself) of DIR/requirements.txt."""
    requirements = dataset_dir / "requirements.txt"
    targets = ["-r", str(requirements)] if requirements.is_file() else [PACKAGE_NAME]
    return [
        *(python, "-m", "pip", "install", "--no-index", "--disable-pip-version-check"),
        *("--no-compile", "--find-links", str(wheel_folder(dataset_dir)), *targets),
    ]


def install_offline_wheels(wheel_dir: str | Path, timeout_s: float = 1800.0) -> bool:
    """Install the wheelhouse into this interpreter; True on success, False (logged) otherwise."""
    dataset_dir = Path(wheel_dir)
    argv = install_command(dataset_dir)
    wheels = wheel_folder(dataset_dir)
    if not any(wheels.glob("*.whl")):
        LOG.error("no wheels in %s: attach the offline_wheels dataset", wheels)
        return False
    this_python = "{}.{}".format(*sys.version_info[:2])
    if (problem := wheelhouse_python_problem(wheels, this_python)) is not None:
        LOG.error("offline install refused: %s", problem)
        return False
    LOG.info("installing offline wheels: %s", " ".join(argv))
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        LOG.error("offline install did not finish: %s", exc)
        return False
    if result.returncode != 0:
        LOG.error("offline install failed (exit %d):\n%s", result.returncode, result.stderr[-4000:])
        return False
    return True


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(0 if install_offline_wheels(sys.argv[1] if len(sys.argv) > 1 else ".") else 1)
