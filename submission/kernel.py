"""The Kaggle kernel's code file (kaggle_metadata.json's `code_file`).

Pushed alone as a script, it first finds the `submission` package in an
attached dataset (or `--code-dir` / `$AIMO_CODE_DIR`, or the checkout it sits
in; else the installed package; else it installs our own wheel from the wheel
dataset), then installs the offline wheels if a wheel folder is attached, and then:

1. starts the harness: the sandbox first (before anything touches CUDA), the
   asyncio loop, and the engine's loading in the background;
2. points `submission.kaggle.predict` at it (the first call waits for the engine);
3. within seconds of starting, serves the gateway: `serve()` in a competition
   rerun (`$KAGGLE_IS_COMPETITION_RERUN`), otherwise the real
   `run_local_gateway` on the competition's test.csv, or, with no
   `kaggle_evaluation` found, the built-in gateway replay;
4. outside a rerun, writes the attempt log and report next to the submission.

With no flags (as on Kaggle) the config is `$AIMO_CONFIG` or `kaggle.toml`
inside the package, when present; else the defaults.

The run's global budget counts from this process's start.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from submission.config import Config, ProfileConfig

# Named, not __name__: Kaggle runs this file as __main__.
log = logging.getLogger("submission.kernel")

KAGGLE_INPUT = Path("/kaggle/input")
ENV_CODE_DIR = "AIMO_CODE_DIR"
ENV_WHEEL_DIR = "AIMO_WHEEL_DIR"
ENV_CONFIG = "AIMO_CONFIG"
PACKAGE_NAME = "aimo-submission"  # our wheel's name in the wheel dataset
# The production config inside the package (engine kind and paths), used when no --config.
DEFAULT_CONFIG = "kaggle.toml"


def process_started_at() -> float:
    """This process's start on the monotonic clock (the harness's clock)."""
    import psutil

    age_s = time.time() - psutil.Process().create_time()
    return time.monotonic() - max(0.0, age_s)


def find_code_root(code_dir: Path | None) -> Path | None:
    """The folder holding the `submission` package: flag, env, this checkout, attached datasets."""
    candidates: list[Path] = []
    if code_dir is not None:
        candidates.append(code_dir)
    if env_dir := os.environ.get(ENV_CODE_DIR):
        candidates.append(Path(env_dir))
    candidates.append(Path(__file__).resolve().parents[1])
    if KAGGLE_INPUT.is_dir():
        candidates += sorted(KAGGLE_INPUT.glob("*")) + sorted(KAGGLE_INPUT.glob("*/*"))
    for candidate in candidates:
        if (candidate / "submission" / "__init__.py").is_file():
            log.info("code: %s", candidate)
            return candidate
    log.info("code: no submission package in %s", [str(c) for c in candidates])
    return None


def make_package_importable(code_dir: Path | None, wheel_dir: Path | None) -> bool:
    """Source on sys.path; else an installed package; else our wheel from the wheel dataset."""
    root = find_code_root(code_dir)
    if root is not None:
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        return True
    if importlib.util.find_spec("submission") is not None:
        log.info("code: the installed submission package")
        return True
    wheels = find_wheel_dir(wheel_dir)
    if wheels is None:
        log.error("code: no source, no installed package, no wheel dataset: attach one")
        return False
    # Our own wheel alone (stdlib only: submission.offline is inside it); its dependencies follow.
    # --ignore-installed: `submission` is not importable, so metadata saying it is installed
    # (a broken or hidden install) must not make pip skip it.
    folder = wheels / "wheels" if (wheels / "wheels").is_dir() else wheels
    argv = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--ignore-installed"]
    argv += ["--disable-pip-version-check", "--find-links", str(folder), PACKAGE_NAME]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    importlib.invalidate_caches()
    if done.returncode != 0 or importlib.util.find_spec("submission") is None:
        log.error(
            "code: installing %s from %s failed:\n%s", PACKAGE_NAME, folder, done.stderr[-2000:]
        )
        return False
    log.info("code: installed %s from %s", PACKAGE_NAME, folder)
    return True


def find_wheel_dir(wheel_dir: Path | None) -> Path | None:
    """The attached wheel dataset (its wheels/ or itself holding *.whl): flag, env, datasets."""
    candidates: list[Path] = []
    if wheel_dir is not None:
        candidates.append(wheel_dir)
    if env_dir := os.environ.get(ENV_WHEEL_DIR):
        candidates.append(Path(env_dir))
    if KAGGLE_INPUT.is_dir():
        candidates += sorted(KAGGLE_INPUT.glob("*")) + sorted(KAGGLE_INPUT.glob("*/*"))
    for candidate in candidates:
        if any(candidate.glob("wheels/*.whl")) or any(candidate.glob("*.whl")):
            log.info("wheels: %s", candidate)
            return candidate
    log.info("wheels: none attached (looked in %d places)", len(candidates))
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from submission.config import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--data-dir", type=Path, default=None, help="competition data folder")
    parser.add_argument("--test-csv", type=Path, default=None, help="problems for a local run")
    parser.add_argument("--out", type=Path, default=None, help="output folder (local runs)")


def run_kernel(
    config: Config,
    started_at: float,
    data_dir: Path | None = None,
    test_csv: Path | None = None,
    out_dir: Path | None = None,
    start_harness: Callable[..., Any] | None = None,
) -> int:
    """Start the harness, then serve the gateway (returns only outside a rerun)."""
    from submission import gateway, kaggle

    if start_harness is None:
        from submission.harness import Harness

        start_harness = Harness.start
    profile = config.profile
    harness = start_harness(config, started_at=started_at)  # returns at once
    kaggle.configure(harness, config, started_at=started_at)
    try:
        root = kaggle.find_kaggle_evaluation(data_dir, profile)
        if kaggle.is_competition_rerun():
            if root is None:
                log.error("competition rerun, but no kaggle_evaluation found: cannot serve")
                return 1
            kaggle.serve_competition(root, profile)  # blocks until the gateway ends the run
            return 0
        out = out_dir or Path(config.output.out_dir)
        test = test_csv or default_test_csv(root, profile)
        code = 0
        try:
            if root is not None:
                submission = kaggle.run_real_local_gateway(root, config, test, out)
            else:
                submission = gateway.run_builtin_gateway(kaggle.predict, test, profile, out)
            for problem in gateway.check_submission(submission, test, profile):
                log.error("submission: %s", problem)
                code = 1
        except Exception:  # the gateway failed the run: say why, keep what was solved
            log.exception("the gateway failed")
            code = 1
        harness.write_outputs(out)
        return code
    finally:
        kaggle.configure(None)
        harness.close()


def default_test_csv(root: Path | None, profile: ProfileConfig) -> Path:
    """The competition's test.csv when at hand, else the embedded reference problems."""
    from submission.config import PACKAGE_DATA

    for folder in (root, Path(profile.competition_dir)):
        if folder is not None and (folder / "test.csv").is_file():
            return folder / "test.csv"
    return PACKAGE_DATA / f"{profile.name}_reference.csv"


def install_wheels(wheel_dir: Path | None) -> None:
    """Install the attached offline wheels (the installer skips what is already there)."""
    found = find_wheel_dir(wheel_dir)
    if found is None:
        return
    from submission.offline import install_offline_wheels

    if not install_offline_wheels(found):
        log.error("installing the offline wheels from %s failed; going on with what is here", found)


def detect_profile(default: str) -> str:
    """The profile whose competition folder is attached (AIMO-3 first), else `default`."""
    from submission.config import PROFILES, ProfileConfig

    for name, fields in PROFILES.items():
        competition_dir = fields.get("competition_dir", ProfileConfig.competition_dir)
        if Path(competition_dir).is_dir():
            return name
    return default


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--code-dir", type=Path, default=None)
    pre.add_argument("--wheel-dir", type=Path, default=None)
    early, rest = pre.parse_known_args(argv)
    if not make_package_importable(early.code_dir, early.wheel_dir):
        return 1
    install_wheels(early.wheel_dir)
    started_at = process_started_at()
    from submission.config import ConfigError, config_from_args

    parser = argparse.ArgumentParser(prog="kernel.py", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(rest)
    if args.config_file is None:  # on Kaggle there are no flags: $AIMO_CONFIG or kaggle.toml
        import submission

        package_dir = Path(submission.__file__).resolve().parent
        default = Path(os.environ.get(ENV_CONFIG, package_dir / DEFAULT_CONFIG))
        args.config_file = default if default.is_file() else None
    # On Kaggle (no flags): the profile of the competition whose data is attached.
    if not any(arg.split("=")[0] == "--profile" for arg in rest):
        args.profile = detect_profile(args.profile)
    log.info("config: %s, profile %s", args.config_file or "defaults", args.profile)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        log.error("config: %s", exc)
        return 2
    return run_kernel(config, started_at, args.data_dir, args.test_csv, args.out)


if __name__ == "__main__":
    sys.exit(main())
