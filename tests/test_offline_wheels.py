"""The offline path: wheelhouse -> fresh venv with no index -> `python -m submission` works."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import venv
from pathlib import Path

import polars as pl
import pytest

from submission import offline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "offline_wheels"))

import download  # noqa: E402


def no_pip_config_env() -> dict[str, str]:
    """The environment minus every pip setting: only the wheelhouse may be seen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env.pop("PYTHONPATH", None)
    return env


def test_install_without_wheels_returns_false(tmp_path: Path) -> None:
    assert offline.install_offline_wheels(tmp_path / "missing") is False
    (tmp_path / "wheels").mkdir()
    assert offline.install_offline_wheels(tmp_path) is False


def test_install_command_reads_the_dataset_layout(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    assert offline.install_command(tmp_path, "py")[-3:] == [
        "--find-links",
        str(tmp_path / "wheels"),
        "aimo-submission",
    ]
    (tmp_path / "requirements.txt").write_text("aimo-submission==0.1.0\n")
    argv = offline.install_command(tmp_path, "py")
    assert argv[:7] == [
        *("py", "-m", "pip", "install", "--no-index", "--disable-pip-version-check"),
        "--no-compile",
    ]
    assert argv[-2:] == ["-r", str(tmp_path / "requirements.txt")]


def test_a_wheelhouse_for_another_python_is_refused_naming_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    this = "{}.{}".format(*sys.version_info[:2])
    other = "3.13" if this != "3.13" else "3.12"
    tag = "cp" + other.replace(".", "")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / f"numpy-2.4.6-{tag}-{tag}-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (tmp_path / "wheels" / "psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.whl").write_bytes(b"")
    assert offline.wheelhouse_pythons(tmp_path / "wheels") == {
        other: f"numpy-2.4.6-{tag}-{tag}-manylinux_2_28_x86_64.whl"
    }
    assert offline.install_offline_wheels(tmp_path) is False
    assert f"is for CPython {other}" in caplog.text and f"this Python is {this}" in caplog.text
    assert f"--python-version {this}" in caplog.text  # and how to get the right one


def test_a_broken_wheel_fails_cleanly(tmp_path: Path) -> None:
    # A name nothing has installed, so pip must open the wheel (an installed
    # aimo-submission would be "already satisfied" and the broken file never read).
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "aimo_offline_probe-0.1.0-py3-none-any.whl").write_bytes(b"not a zip")
    (tmp_path / "requirements.txt").write_text("aimo-offline-probe==0.1.0\n")
    assert offline.install_offline_wheels(tmp_path, timeout_s=120) is False


def test_download_command_targets_the_kaggle_image() -> None:
    argv = download.download_command(Path("r.txt"), Path("w"), "3.11", download.DEFAULT_PLATFORMS)
    assert argv[1:8] == [
        *("-m", "pip", "download", "--disable-pip-version-check"),
        *("--only-binary=:all:", "--python-version", "3.11"),
    ]
    assert argv.count("--platform") == len(download.DEFAULT_PLATFORMS)
    assert "manylinux2014_x86_64" in argv
    assert argv[-4:] == ["-r", "r.txt", "-d", "w"]


def test_requirements_pin_everything_pyproject_needs() -> None:
    import tomllib

    from packaging.requirements import Requirement

    pins = {
        Requirement(line).name.lower(): Requirement(line)
        for line in (REPO / "offline_wheels" / "requirements-kaggle.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert all(str(r.specifier).startswith("==") for r in pins.values())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        needed = Requirement(line)
        assert needed.name.lower() in pins, f"{needed.name} is not pinned for Kaggle"
        version = str(pins[needed.name.lower()].specifier).removeprefix("==")
        assert needed.specifier.contains(version), f"{needed.name}: pin {version} vs {line}"


def test_the_harmony_pins_are_the_harmony_extra(tmp_path: Path) -> None:
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert download.pins("requirements-harmony.txt") == extra["optional-dependencies"]["harmony"]
    download.write_dataset_folder(tmp_path, False, "me/wheels", "wheels", with_harmony=True)
    lines = (tmp_path / "requirements.txt").read_text().splitlines()
    assert lines[1:] == ["openai-harmony==0.0.8"]


@pytest.mark.slow
@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the wheelhouse targets manylinux x86_64",
)
def test_offline_install_into_a_fresh_venv(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # Downloads are cached in pytest's cache dir (pip skips wheels it already has), if enabled.
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("offline-wheelhouse")) if cache is not None else tmp_path
    dataset = root / "dataset"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    download.build_wheelhouse(
        dataset, python_version, dataset_id="me/aimo-wheels", title="AIMO wheels"
    )
    assert (dataset / "requirements.txt").read_text().startswith("aimo-submission==")
    assert (dataset / "dataset-metadata.json").is_file()

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    env = no_pip_config_env()
    # As the kernel does: the harness source on sys.path, install_offline_wheels from it.
    install = subprocess.run(
        [
            python,
            "-c",
            f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            "from submission.offline import install_offline_wheels; "
            f"sys.exit(0 if install_offline_wheels({str(dataset)!r}) else 1)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    # From outside the checkout, so the installed package is what runs.
    work = tmp_path / "outside"
    work.mkdir()
    help_run = subprocess.run(
        [python, "-m", "submission", "--help"], cwd=work, env=env, capture_output=True, text=True
    )
    assert help_run.returncode == 0, help_run.stderr[-3000:]
    assert "replay" in help_run.stdout and "build" in help_run.stdout
    where = subprocess.run(
        [python, "-c", "import submission; print(submission.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert str(env_dir) in where.stdout, where.stdout

    replay = subprocess.run(
        [python, "-m", "submission", "replay", "--limit", "3", "--out", str(work / "out")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    submission = pl.read_parquet(work / "out" / "submission.parquet")
    assert submission.height == 3
    assert submission.columns[:2] == ["id", "answer"]


def test_with_vllm_the_kernel_installs_the_pinned_vllm(tmp_path: Path) -> None:
    """The gpt-oss profile's server comes from the wheels dataset: vLLM at the version whose
    flags the launcher checks against (submission/data/server_flags/vllm.json)."""
    import json

    from offline_wheels.download import write_dataset_folder
    from submission.model_server import ServerFlags

    write_dataset_folder(tmp_path, False, "someone/wheels", "wheels", with_vllm=True)
    pins = (tmp_path / "requirements.txt").read_text().splitlines()
    assert f"vllm=={ServerFlags.load('vllm').version}" in pins
    assert json.loads((tmp_path / "dataset-metadata.json").read_text())["id"] == "someone/wheels"
