"""The rehearsal's interpreters: the Kaggle image's Python, its packages, and the gateway's.

Each run's kernel gets a fresh venv that sees only the Kaggle image's own
packages (`--image-wheels`, installed with no index), as the notebook starts
with them and installs the rest from the wheel dataset. The image's packages
are installed once per rehearsal, into the image venv; each run's venv is an
empty one (no pip of its own, 0.1 s) whose `.pth` file puts the image venv's
site-packages (a site dir) after its own, as an image's packages sit beside
what the kernel installs: pip (the image's) installs into the run's venv and
counts the image's packages as installed. Copying the image venv instead cost
a second a run and, under load, a minute to delete 100k files at the end.
The real gateway runs in another such venv with polars and pyarrow added from
the wheelhouse (`kaggle_evaluation` imports grpc, pandas, polars and pyarrow;
the image wheels hold the first two).

The interpreter is the one the wheelhouse was built for: this one when it
fits, else `pythonX.Y` on PATH, else an error that says both versions before
anything runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from submission.offline import wheel_folder, wheelhouse_python_problem, wheelhouse_pythons

GATEWAY_PACKAGES = ("polars", "pyarrow")  # what kaggle_evaluation needs beyond the image wheels


class PythonChoiceError(ValueError):
    """No interpreter fits the wheelhouse: the reason, with both versions."""


def python_version(python: str) -> str | None:
    """ "3.12" for an interpreter that runs, else None."""
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    try:
        done = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def choose_python(wheelhouse: Path, image_wheels: Path, given: str | None) -> tuple[str, str]:
    """(interpreter, its version) for the kernel venvs: `given`, this one, or pythonX.Y."""
    wanted = sorted(wheelhouse_pythons(wheel_folder(wheelhouse)))
    candidates = [given] if given else [sys.executable, *(f"python{v}" for v in wanted)]
    tried: list[str] = []
    for python in candidates:
        version = python_version(python)
        if version is None:
            tried.append(f"{python}: does not run")
            continue
        problem = wheelhouse_python_problem(wheel_folder(wheelhouse), version)
        problem = problem or wheelhouse_python_problem(image_wheels, version)
        if problem is None:
            return python, version
        tried.append(f"{python} ({version}): {problem}")
    raise PythonChoiceError(
        "no interpreter fits the wheels: "
        + "; ".join(tried)
        + " (--python PATH picks the Kaggle image's Python, e.g. a python3.12)"
    )


def build_image_venv(path: Path, python: str, image_wheels: Path) -> Path:
    """A venv of `python` holding pip and the image's packages (no index); its python."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(path)], check=True)
    wheels = sorted(str(w) for w in image_wheels.glob("*.whl"))
    if wheels:
        _pip_install(path / "bin" / "python", image_wheels, wheels)
    return path / "bin" / "python"


def run_venv(image_python: Path, path: Path) -> Path:
    """A fresh, empty venv for one run that sees the image venv's packages after its own."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([str(image_python), "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    own, image = (_site_packages(p) for p in (python, image_python))
    # A site dir, as the image's is: its own .pth files (editable installs) are read too.
    line = f"import site; site.addsitedir({str(image)!r})\n"
    (own / "_kaggle_image.pth").write_text(line, encoding="utf-8")
    return python


def build_gateway_venv(image_python: Path, path: Path, wheelhouse: Path) -> Path:
    """A run venv plus polars and pyarrow from the wheelhouse: the real gateway's python."""
    python = run_venv(image_python, path)
    _pip_install(python, wheel_folder(wheelhouse), list(GATEWAY_PACKAGES))
    return python


def _site_packages(python: Path) -> Path:
    probe = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def _pip_install(python: Path, find_links: Path, targets: list[str]) -> None:
    subprocess.run(
        [
            *(str(python), "-m", "pip", "install", "-q", "--no-index", "--no-compile"),
            *("--disable-pip-version-check", "--find-links", str(find_links), *targets),
        ],
        check=True,
        env=no_pip_settings(),
    )


def no_pip_settings() -> dict[str, str]:
    """This environment without pip's settings (a find-links or index of the host's own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}
