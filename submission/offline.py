"""Install the offline wheelhouse (offline_wheels/download.py's dataset folder) with no index.

The Kaggle kernel has no internet: it calls `install_offline_wheels(DIR)` with
the attached wheel dataset before importing anything pinned. Pure stdlib, so it
runs before those wheels are installed; it never raises (the kernel decides
what to do when it returns False).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

LOG = logging.getLogger(__name__)
PACKAGE_NAME = "aimo-submission"


def install_command(dataset_dir: Path, python: str = sys.executable) -> list[str]:
    """pip install --no-index from DIR/wheels (or DIR itself) of DIR/requirements.txt."""
    wheels = dataset_dir / "wheels" if (dataset_dir / "wheels").is_dir() else dataset_dir
    requirements = dataset_dir / "requirements.txt"
    targets = ["-r", str(requirements)] if requirements.is_file() else [PACKAGE_NAME]
    return [
        *(python, "-m", "pip", "install", "--no-index", "--disable-pip-version-check"),
        *("--find-links", str(wheels), *targets),
    ]


def install_offline_wheels(wheel_dir: str | Path, timeout_s: float = 1800.0) -> bool:
    """Install the wheelhouse into this interpreter; True on success, False (logged) otherwise."""
    dataset_dir = Path(wheel_dir)
    argv = install_command(dataset_dir)
    wheels = Path(argv[argv.index("--find-links") + 1])
    if not any(wheels.glob("*.whl")):
        LOG.error("no wheels in %s: attach the offline_wheels dataset", wheels)
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
