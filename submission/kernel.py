"""The Kaggle kernel's code file (kaggle_metadata.json's `code_file`).

Pushed alone as a script (or as the notebook `python -m submission
kaggle-metadata --stage` makes of it), it runs four stages, each logged and timed:

1. install: finds the `submission` package in an attached dataset (or
   `--code-dir` / `$AIMO_CODE_DIR`, or the checkout it sits in; else the
   installed package; else it installs our own wheel from the wheel dataset),
   installs the offline wheels if a wheel folder is attached, points
   `$TIKTOKEN_ENCODINGS_BASE` at its harmony vocabulary (tiktoken_encodings/),
   reads the config;
2. preflight: every `doctor` check (packages, GPU, engine folder, the engine
   built from the config, one sandbox call). A failure stops an interactive
   session with the reason at the top of the log (exit 3); a competition rerun
   still serves, so that fallback answers keep the submission valid;
3. engine: starts the harness: the sandbox first (before anything touches
   CUDA), the asyncio loop, and the engine's loading in the background;
4. serve: `serve()` within seconds in a competition rerun
   (`$KAGGLE_IS_COMPETITION_RERUN`; the first `predict` waits for the engine);
   otherwise, once the engine has loaded, the real `run_local_gateway` on the
   competition's test.csv (or, with no `kaggle_evaluation` found, the built-in
   gateway replay), then the attempt log and report next to the submission.

With no flags (as on Kaggle) the config is `$AIMO_CONFIG` or `kaggle.toml`
inside the package; the profile is the one whose `kaggle_evaluation` or
competition folder is attached. `$AIMO_KAGGLE_ROOT` stands in for `/kaggle`
(the rehearsal's Kaggle-shaped folder): /kaggle paths in the config move there.

The run's global budget counts from this process's start.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from submission.config import Config, ProfileConfig
    from submission.harness import Harness

# Named, not __name__: Kaggle runs this file as __main__.
log = logging.getLogger("submission.kernel")

ENV_KAGGLE_ROOT = "AIMO_KAGGLE_ROOT"
KAGGLE_ROOT = Path(os.environ.get(ENV_KAGGLE_ROOT, "/kaggle"))
KAGGLE_INPUT = KAGGLE_ROOT / "input"
ENV_CODE_DIR = "AIMO_CODE_DIR"
ENV_WHEEL_DIR = "AIMO_WHEEL_DIR"
ENV_CONFIG = "AIMO_CONFIG"
PACKAGE_NAME = "aimo-submission"  # our wheel's name in the wheel dataset
# The production config inside the package (engine kind and paths), used when no --config.
DEFAULT_CONFIG = "kaggle.toml"
# Exit codes: 1 the run failed (gateway, submission); 2 bad config or test file;
# 3 the preflight or the engine failed (interactive sessions only).
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_READY = 1, 2, 3


class KernelStop(RuntimeError):
    """A stage that cannot go on: the exit code and the reason (a notebook cell raises it)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class KernelRun:
    """What the stages hand on: the config, the run's clock, and where things are."""

    config: Config
    started_at: float
    data_dir: Path | None = None
    test_csv: Path | None = None
    out_dir: Path | None = None
    install_s: float = 0.0
    problems_total: int | None = None  # the local test file's rows (a rerun: the profile's)
    harness: Harness | None = None


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
    if here := globals().get("__file__"):  # a notebook cell has no __file__
        candidates.append(Path(here).resolve().parents[1])
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


# --- the stages ---------------------------------------------------------------------------


def install_stage(argv: list[str] | None = None) -> KernelRun:
    """Stage 1: the package, the offline wheels, the config (raises KernelStop)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--code-dir", type=Path, default=None)
    pre.add_argument("--wheel-dir", type=Path, default=None)
    early, rest = pre.parse_known_args(argv)
    if not make_package_importable(early.code_dir, early.wheel_dir):
        raise KernelStop(EXIT_FAILED, "the submission package is not importable (see above)")
    install_s = install_wheels(early.wheel_dir)
    if missing := missing_runtime_packages():
        raise KernelStop(
            EXIT_NOT_READY,
            f"runtime packages not installed: {', '.join(missing)} "
            "(the offline wheels did not install: see above)",
        )
    use_dataset_vocabulary(early.wheel_dir)
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
        args.profile = detect_profile(args.profile, args.data_dir)
    log.info("config: %s, profile %s", args.config_file or "defaults", args.profile)
    try:
        config = on_kaggle_root(config_from_args(args))
    except ConfigError as exc:
        raise KernelStop(EXIT_BAD_INPUT, f"config: {exc}") from None
    session = "competition rerun" if _rerun() else "interactive session"
    log.info(
        "engine: %s, %d attempts a problem; %s", config.engine.kind, config.solver.attempts, session
    )
    return KernelRun(config, started_at, args.data_dir, args.test_csv, args.out, install_s)


def preflight_stage(run: KernelRun) -> None:
    """Stage 2: every doctor check; a failure stops an interactive session (raises KernelStop)."""
    from submission.preflight import run_checks

    if not _rerun():
        run.problems_total = _count_problems(run)
    began = time.monotonic()
    checks = run_checks(run.config)
    failed = [c for c in checks if c.status == "fail"]
    for check in failed:  # first, so the cause is at the top of the log
        log.error("preflight FAILED: %s: %s", check.name, check.detail)
    for check in (c for c in checks if c.status == "warn"):
        log.warning("preflight: %s: %s", check.name, check.detail)
    passed = [c.name for c in checks if c.status == "ok"]
    seconds = time.monotonic() - began
    log.info(
        "preflight: %d/%d ok in %.1f s (%s)", len(passed), len(checks), seconds, ", ".join(passed)
    )
    if not failed:
        return
    reasons = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    if _rerun():
        log.error(
            "competition rerun: serving anyway; answers may all be the fallback (%s)", reasons
        )
        return
    raise KernelStop(EXIT_NOT_READY, f"preflight failed: {reasons}")


def engine_stage(run: KernelRun, start_harness: Callable[..., Any] | None = None) -> Harness:
    """Stage 3: the sandbox, the loop, and the engine loading in the background (at once)."""
    if start_harness is None:
        from submission.harness import Harness

        start_harness = Harness.start
    run.harness = start_harness(
        run.config, started_at=run.started_at, problems_total=run.problems_total
    )
    return run.harness


def serve_stage(run: KernelRun) -> int:
    """Stage 4: serve the gateway; the exit code (a rerun returns only when the server does)."""
    from submission import kaggle

    harness, config, profile = run.harness, run.config, run.config.profile
    assert harness is not None, "engine_stage comes first"
    root = kaggle.find_kaggle_evaluation(run.data_dir, profile)
    if _rerun():
        if root is None:
            harness.close()
            log.error("competition rerun, but no kaggle_evaluation found: cannot serve")
            return EXIT_FAILED
        kaggle.configure(harness, config, started_at=run.started_at)
        try:
            log.info("serve(): %.1f s after the process start", time.monotonic() - run.started_at)
            kaggle.serve_competition(root, profile)  # blocks until the gateway ends the run
        finally:
            kaggle.configure(None)
            harness.close()
        return 0
    return _serve_locally(run, harness, root)


def _serve_locally(run: KernelRun, harness: Harness, root: Path | None) -> int:
    from submission.local_run import usable_out_dir

    try:
        harness.wait_ready()  # an interactive session can wait: no gateway clock runs yet
    except Exception as exc:
        harness.close()
        log.error("the engine failed to load: %s", exc)
        return EXIT_NOT_READY
    out = usable_out_dir(run.out_dir or Path(run.config.output.out_dir))
    test = run.test_csv or default_test_csv(root, run.config.profile)
    from submission.local_run import run_locally

    outcome = run_locally(harness, run.config, test, out, root, started_at=run.started_at)
    return 0 if outcome.ok else EXIT_FAILED


def run_kernel(
    config: Config,
    started_at: float,
    data_dir: Path | None = None,
    test_csv: Path | None = None,
    out_dir: Path | None = None,
    start_harness: Callable[..., Any] | None = None,
) -> int:
    """Stages 2-4 for a config: preflight, engine, serve (returns only outside a rerun)."""
    run = KernelRun(config, started_at, data_dir, test_csv, out_dir)
    try:
        preflight_stage(run)
    except KernelStop as stop:
        log.error("%s", stop)
        return stop.code
    engine_stage(run, start_harness)
    return serve_stage(run)


def _count_problems(run: KernelRun) -> int:
    """The local test file's rows (its k/N), or KernelStop with why it cannot be served."""
    from submission import kaggle
    from submission.local_run import ProblemFileError, read_problems

    if run.test_csv is None:
        root = kaggle.find_kaggle_evaluation(run.data_dir, run.config.profile)
        run.test_csv = default_test_csv(root, run.config.profile)
    try:
        return read_problems(run.test_csv).height
    except ProblemFileError as exc:
        raise KernelStop(EXIT_BAD_INPUT, str(exc)) from None


def _rerun() -> bool:
    from submission.kaggle import is_competition_rerun

    return is_competition_rerun()


def default_test_csv(root: Path | None, profile: ProfileConfig) -> Path:
    """The competition's test.csv when at hand, else the embedded reference problems."""
    from submission.config import PACKAGE_DATA

    for folder in (root, Path(profile.competition_dir)):
        if folder is not None and (folder / "test.csv").is_file():
            return folder / "test.csv"
    return PACKAGE_DATA / f"{profile.name}_reference.csv"


def install_wheels(wheel_dir: Path | None) -> float:
    """Install the attached offline wheels (the installer skips what is already there).

    Returns the seconds it took (0 when nothing is attached).
    """
    found = find_wheel_dir(wheel_dir)
    if found is None:
        return 0.0
    from submission.offline import install_offline_wheels

    began = time.monotonic()
    ok = install_offline_wheels(found)
    seconds = time.monotonic() - began
    if ok:
        log.info("install: offline wheels from %s installed in %.1f s", found, seconds)
    else:
        log.error("install: offline wheels from %s FAILED after %.1f s; going on", found, seconds)
    return seconds


def missing_runtime_packages() -> list[str]:
    """The runtime packages (preflight.RUNTIME_PACKAGES) this interpreter cannot import."""
    from submission.preflight import RUNTIME_PACKAGES

    return [name for name in RUNTIME_PACKAGES if importlib.util.find_spec(name) is None]


def use_dataset_vocabulary(wheel_dir: Path | None) -> None:
    """$TIKTOKEN_ENCODINGS_BASE to the wheel dataset's harmony vocabulary folder, unless set.

    Here, before anything imports openai_harmony (this process, and a model server
    started from it, inherit it); the preflight checks the file's hash.
    """
    from submission.families.harmony_vocab import (
        DATASET_FOLDER,
        ENCODINGS_ENV,
        VOCABULARY_FILE,
        use_vocabulary,
    )

    if os.environ.get(ENCODINGS_ENV):
        log.info("vocabulary: $%s is %s", ENCODINGS_ENV, os.environ[ENCODINGS_ENV])
        return
    found = find_wheel_dir(wheel_dir)
    if found is None:
        return
    for folder in (found / DATASET_FOLDER, found.parent / DATASET_FOLDER):
        if (folder / VOCABULARY_FILE).is_file():
            use_vocabulary(folder)
            log.info("vocabulary: $%s = %s", ENCODINGS_ENV, folder)
            return


def on_kaggle_root(config: Config) -> Config:
    """The config with its /kaggle/... paths moved under $AIMO_KAGGLE_ROOT (when set)."""

    def move(value: Any) -> Any:
        if isinstance(value, str):
            return on_kaggle_path(value)
        if isinstance(value, tuple):
            return tuple(move(v) for v in value)
        if dataclasses.is_dataclass(value):
            for item in dataclasses.fields(value):
                setattr(value, item.name, move(getattr(value, item.name)))
        return value

    return move(config)


def detect_profile(default: str, data_dir: Path | None = None) -> str:
    """The profile whose `kaggle_evaluation` server or competition folder is attached.

    Looks in `data_dir`, `$AIMO_KAGGLE_EVALUATION_DIR` (the package's server
    module tells AIMO-3 from AIMO-2), then each profile's competition folder
    (AIMO-3 first); else `default`.
    """
    from submission.config import PROFILES, load_config
    from submission.kaggle import ENV_KAGGLE_EVALUATION_DIR

    profiles = {name: load_config(name).profile for name in PROFILES}
    places = [data_dir, os.environ.get(ENV_KAGGLE_EVALUATION_DIR)]
    for place in (Path(p) for p in places if p):
        root = place.parent if place.name == "kaggle_evaluation" else place
        for name, profile in profiles.items():
            server = profile.gateway_module.rsplit(".", 1)[-1] + ".py"
            if (root / "kaggle_evaluation" / server).is_file():
                log.info("profile: %s (its %s is in %s)", name, server, root)
                return name
    for name, profile in profiles.items():
        competition_dir = on_kaggle_path(profile.competition_dir)
        if Path(competition_dir).is_dir():
            log.info("profile: %s (%s is attached)", name, competition_dir)
            return name
    return default


def on_kaggle_path(path: str) -> str:
    """A /kaggle/... path under $AIMO_KAGGLE_ROOT (unchanged without it)."""
    if path.startswith("/kaggle/"):
        return str(KAGGLE_ROOT / path.removeprefix("/kaggle/"))
    return path


def exit_on_sigterm() -> None:
    """SIGTERM ends the process through SystemExit, so the harness closes (sandbox included)."""

    def leave(signum: int, frame: object) -> None:
        log.warning("SIGTERM: closing the harness and leaving")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def configure_logging() -> None:
    """Timestamped lines on stderr (a notebook shows them as the cell's output)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # httpx logs every request at INFO: thousands of lines per run with the openai engine.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    exit_on_sigterm()
    log.info("kernel: python %s, pid %d", sys.version.split()[0], os.getpid())
    try:
        run = install_stage(argv)
    except KernelStop as stop:
        log.error("%s", stop)
        return stop.code
    return run_kernel(run.config, run.started_at, run.data_dir, run.test_csv, run.out_dir)


if __name__ == "__main__":
    sys.exit(main())
