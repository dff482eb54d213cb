"""Build the offline wheelhouse: a Kaggle dataset folder the kernel installs with no index.

    python offline_wheels/download.py --out DIR [--python-version 3.12] [--with-trtllm]
        [--with-harmony] [--with-vllm] [--dataset-id OWNER/SLUG] [--title TITLE]

The dataset's id and title default to the config's identity (submission/kaggle.toml
[kaggle]: owner/wheels_slug, wheels_title), as kaggle_metadata.json's dataset sources do.

DIR gets:
  wheels/*.whl           binary wheels for the Kaggle image (pip download --only-binary=:all:
                         --python-version X --platform manylinux...), and our own wheel
  requirements.txt       what the kernel installs: our package (and TensorRT-LLM,
                         openai-harmony, vLLM), pinned
  tiktoken_encodings/    with --with-harmony: o200k_base.tiktoken, the harmony family's
                         vocabulary (official URL, else rebuilt from gpt-oss's tokenizer;
                         hash-checked: `python -m submission vocab`)
  install.sh             the same install from a shell
  dataset-metadata.json  for `kaggle datasets create -p DIR`
Run it again to refresh: pip skips wheels already in DIR/wheels.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

LOG = logging.getLogger("offline_wheels.download")
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
if str(REPO_ROOT) not in sys.path:  # run by path from a checkout: find the harness package
    sys.path.insert(0, str(REPO_ROOT))

from submission.commands.vocab import VocabularyError, prepare  # noqa: E402
from submission.config import PLACEHOLDER_OWNER, KaggleConfig, TrtllmEngineConfig  # noqa: E402
from submission.engines.trtllm_folder import wheel_pythons  # noqa: E402
from submission.families.harmony_vocab import DATASET_FOLDER  # noqa: E402

# The kernel's production config: its [kaggle] identity names the wheel dataset.
HARNESS_CONFIG = REPO_ROOT / "submission" / "kaggle.toml"
# The one setting for the Kaggle image's Python (the preflight checks the same value).
KAGGLE_PYTHON = TrtllmEngineConfig().python_version
# The Kaggle image is Ubuntu 22.04 (glibc 2.35): every manylinux level up to it is listed
# explicitly (older pips do not widen a given tag). `none-any` wheels always match.
DEFAULT_PLATFORMS = (
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
# NVIDIA's TensorRT-LLM wheels carry the plain linux tag.
TRTLLM_PLATFORMS = ("linux_x86_64",)


def project_version() -> tuple[str, str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["name"], project["version"]


def download_command(
    requirements: Path, wheels: Path, python_version: str, platforms: tuple[str, ...]
) -> list[str]:
    argv = [
        *(sys.executable, "-m", "pip", "download", "--disable-pip-version-check"),
        *("--only-binary=:all:", "--python-version", python_version),
    ]
    for platform in platforms:
        argv += ["--platform", platform]
    return [*argv, "-r", str(requirements), "-d", str(wheels)]


def build_isolation_options(python: str) -> list[str]:
    """`--no-build-isolation` when `python` can build a wheel itself, else nothing.

    A fresh Python 3.11 venv has setuptools 65 without the `wheel` package, so
    it has no `bdist_wheel` command: there pip must build in an isolated
    environment (setuptools and wheel from the index, which this script needs anyway).
    """
    probe = (
        "try:\n    import setuptools.command.bdist_wheel\n"
        "except ImportError:\n    import wheel.bdist_wheel\n"
    )
    done = subprocess.run([python, "-c", probe], capture_output=True, check=False)
    return ["--no-build-isolation"] if done.returncode == 0 else []


def build_own_wheel(wheels: Path) -> Path:
    """Our wheel, built from a copy of the source (setuptools' in-tree `build/` would land in
    the repo's build/ pipeline folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (REPO_ROOT / name).is_file():
                shutil.copy2(REPO_ROOT / name, source / name)
        shutil.copytree(
            REPO_ROOT / "submission",
            source / "submission",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "wheel", "--no-deps"),
                *build_isolation_options(sys.executable),
                *("--disable-pip-version-check", "-w", str(wheels), str(source)),
            ],
            check=True,
        )
    name, version = project_version()
    built = list(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not built:
        raise RuntimeError(f"pip wheel left no {name} {version} wheel in {wheels}")
    LOG.info("our wheel: %s", built[0].name)
    return built[0]


def pins(requirements: str) -> list[str]:
    """The `name==version` lines of a requirements file (no comments, no index options)."""
    lines = (HERE / requirements).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith(("#", "-"))]


def write_dataset_folder(
    out: Path,
    with_trtllm: bool,
    dataset_id: str,
    title: str,
    with_harmony: bool = False,
    with_vllm: bool = False,
) -> None:
    name, version = project_version()
    lines = [f"{name}=={version}"]
    if with_trtllm:
        lines += pins("requirements-trtllm.txt")
    if with_harmony:
        lines += pins("requirements-harmony.txt")
    if with_vllm:
        lines += pins("requirements-vllm.txt")
    (out / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy2(HERE / "install.sh", out / "install.sh")
    metadata = {"title": title, "id": dataset_id, "licenses": [{"name": "other"}]}
    (out / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


def pinned_trtllm_version() -> str:
    """The `tensorrt_llm==X` pin of requirements-trtllm.txt."""
    for line in (HERE / "requirements-trtllm.txt").read_text(encoding="utf-8").splitlines():
        name, _, version = line.partition("==")
        if name.strip().replace("-", "_") == "tensorrt_llm":
            return version.strip()
    raise RuntimeError("requirements-trtllm.txt pins no tensorrt_llm==VERSION")


def trtllm_python_problem(python_version: str) -> str | None:
    """Why the pinned TensorRT-LLM has no wheel for `python_version`, or None."""
    version = pinned_trtllm_version()
    pythons = wheel_pythons(version)
    if python_version in pythons:
        return None
    return (
        f"TensorRT-LLM {version} publishes wheels for CPython {'/'.join(pythons)}, "
        f"not {python_version}: pick a Kaggle image with one of those"
    )


def identity(config_file: Path = HARNESS_CONFIG) -> KaggleConfig:
    """The [kaggle] identity of the production config (the one `kaggle-metadata --write` sets)."""
    from submission.config import load_config

    return load_config("aimo3", config_file).kaggle


def build_wheelhouse(
    out: Path,
    python_version: str,
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    with_trtllm: bool = False,
    dataset_id: str | None = None,
    title: str | None = None,
    with_harmony: bool = False,
    with_vllm: bool = False,
) -> Path:
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        download_command(HERE / "requirements-kaggle.txt", wheels, python_version, platforms),
        check=True,
    )
    if with_trtllm:
        subprocess.run(
            download_command(
                HERE / "requirements-trtllm.txt",
                wheels,
                python_version,
                platforms + TRTLLM_PLATFORMS,
            ),
            check=True,
        )
    if with_harmony:
        subprocess.run(
            download_command(HERE / "requirements-harmony.txt", wheels, python_version, platforms),
            check=True,
        )
        for line in prepare(out / DATASET_FOLDER, with_tokenizer=False):
            LOG.info("%s", line)
    if with_vllm:
        subprocess.run(
            download_command(HERE / "requirements-vllm.txt", wheels, python_version, platforms),
            check=True,
        )
    build_own_wheel(wheels)
    kaggle = identity()
    dataset_id = dataset_id or kaggle.dataset_id(kaggle.wheels_slug)
    if dataset_id.split("/")[0] == PLACEHOLDER_OWNER:
        LOG.warning(
            "dataset-metadata.json names the placeholder owner %r: set yours "
            "(python -m submission kaggle-metadata --write --id USER/SLUG) before "
            "`kaggle datasets create`",
            PLACEHOLDER_OWNER,
        )
    title = title or kaggle.wheels_title
    write_dataset_folder(out, with_trtllm, dataset_id, title, with_harmony, with_vllm)
    LOG.info("wheelhouse ready: %d wheels in %s", len(list(wheels.glob("*.whl"))), wheels)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python offline_wheels/download.py", description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument(
        "--python-version",
        default=KAGGLE_PYTHON,
        help="the Kaggle image's Python (default: engine.trtllm.python_version)",
    )
    parser.add_argument("--platform", action="append", default=None, help="wheel platform tag")
    parser.add_argument(
        "--with-trtllm", action="store_true", help="add TensorRT-LLM (NVIDIA index)"
    )
    parser.add_argument(
        "--with-harmony",
        action="store_true",
        help="add openai-harmony and its vocabulary (the harmony family, gpt-oss)",
    )
    parser.add_argument(
        "--with-vllm",
        action="store_true",
        help="add vLLM (requirements-vllm.txt) for engine.server.kind = vllm",
    )
    parser.add_argument(
        "--dataset-id", default=None, help="default: the config's [kaggle] owner/wheels_slug"
    )
    parser.add_argument("--title", default=None, help="default: the config's wheels_title")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.with_trtllm and (problem := trtllm_python_problem(args.python_version)):
        LOG.error("%s", problem)
        return 1
    try:
        build_wheelhouse(
            args.out,
            args.python_version,
            tuple(args.platform) if args.platform else DEFAULT_PLATFORMS,
            args.with_trtllm,
            args.dataset_id,
            args.title,
            args.with_harmony,
            args.with_vllm,
        )
    except (subprocess.CalledProcessError, RuntimeError, VocabularyError, OSError) as exc:
        LOG.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
