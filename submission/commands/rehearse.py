"""`python -m submission rehearse`: the kernel run as Kaggle runs it, before a push.

It lays out a Kaggle-shaped tree in a temporary folder (`input/<competition>/`
with test.csv and the real `kaggle_evaluation`, `input/aimo-offline-wheels/`
the wheelhouse, `working/`, the code file alone in `src/`), then, for each
mode in a fresh venv holding only the Kaggle image's own packages
(`--image-wheels`, installed with no index):

- interactive: `python kernel.py` with no flags, as a notebook session runs it:
  the kernel installs the wheelhouse (no index), runs its preflight, and the
  real `run_local_gateway` on test.csv;
- rerun: the same with `KAGGLE_IS_COMPETITION_RERUN=1`, the kernel serving,
  and the real gateway (`AIMO3Gateway` / `AIMO2Gateway`) in another process
  dialling the host `inference_server`, which a generated `sitecustomize`
  resolves to loopback; both inside a network namespace of their own when
  `unshare --net` is allowed (so port 50051 is theirs alone).

The config is the packaged `kaggle.toml` (or `--config`) with the `--set`
overrides, handed to the kernel through `$AIMO_CONFIG`; `$AIMO_KAGGLE_ROOT`
points the kernel's /kaggle paths at the tree. The verdict table: install
time, time to `serve()`, time to the first answer, rows, fallbacks with their
reasons, wall time, and pass/fail (exit 1 on any failure).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from submission.config import (
    PACKAGE_DATA,
    Config,
    ConfigError,
    ProfileConfig,
    add_config_arguments,
    as_dict,
    load_config,
)

log = logging.getLogger(__name__)

KERNEL_FILE = Path(__file__).resolve().parents[1] / "kernel.py"
PRODUCTION_CONFIG = Path(__file__).resolve().parents[1] / "kaggle.toml"
WHEELS_DATASET = "aimo-offline-wheels"
OWN_WHEEL_PREFIX = "aimo_submission-"
SERVE_LIMIT_S = 15 * 60.0  # a rerun's server must listen within 15 minutes
# The gateway's host for the inference server in a rerun (kaggle_evaluation core/base_gateway.py).
SERVER_HOST = "inference_server"
SITECUSTOMIZE = f'''"""Rehearsal only: the gateway dials {SERVER_HOST!r}: this machine."""
import socket

_gethostbyname = socket.gethostbyname


def gethostbyname(name):
    return "127.0.0.1" if name == {SERVER_HOST!r} else _gethostbyname(name)


socket.gethostbyname = gethostbyname
try:
    import grpc
except ImportError:
    grpc = None
if grpc is not None:
    _insecure_channel = grpc.insecure_channel

    def insecure_channel(target, *args, **kwargs):
        target = target.replace({SERVER_HOST + ":"!r}, "127.0.0.1:")
        return _insecure_channel(target, *args, **kwargs)

    grpc.insecure_channel = insecure_channel
'''
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
FALLBACK_LINE = re.compile(r" fallback (\S+): (.*)$")
INSTALL_LINE = re.compile(r"install: offline wheels from .* installed in ([\d.]+) s")


@dataclass
class Verdict:
    """One rehearsed run, as the table shows it."""

    mode: str
    passed: bool = False
    install_s: float | None = None
    serve_s: float | None = None
    first_answer_s: float | None = None
    rows: int = 0
    expected_rows: int = 0
    fallbacks: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    faults: list[str] = field(default_factory=list)
    log: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--wheelhouse", type=Path, required=True, help="offline_wheels/download.py's dataset folder"
    )
    parser.add_argument(
        "--image-wheels",
        type=Path,
        required=True,
        help="wheels of what the Kaggle image provides (grpcio, protobuf, pandas)",
    )
    parser.add_argument(
        "--kaggle-evaluation",
        type=Path,
        default=None,
        help="folder holding the competition's kaggle_evaluation (without it: "
        "the built-in replay, and no rerun)",
    )
    parser.add_argument(
        "--test-csv",
        type=Path,
        default=None,
        help="the competition's test.csv (default: the embedded reference problems)",
    )
    parser.add_argument(
        "--gateway-python",
        default=sys.executable,
        help="the gateway's interpreter (needs grpcio, protobuf, pandas, polars)",
    )
    parser.add_argument(
        "--no-rebuild", action="store_true", help="use the wheelhouse's own wheel as it is"
    )
    parser.add_argument("--keep", type=Path, default=None, help="lay the tree here and keep it")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per run")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.profile, args.config_file or PRODUCTION_CONFIG, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    test_csv = args.test_csv or PACKAGE_DATA / f"{config.profile.name}_reference.csv"
    for what, path in [
        ("wheelhouse", args.wheelhouse),
        ("image wheels", args.image_wheels),
        ("test csv", test_csv),
    ]:
        if not path.exists():
            print(f"error: {what} not found: {path}", file=sys.stderr)
            return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="aimo-rehearsal-"))
    try:
        tree = lay_out(
            root, config, test_csv, args.kaggle_evaluation, args.wheelhouse, not args.no_rebuild
        )
        verdicts = [rehearse_interactive(tree, config, args)]
        if args.kaggle_evaluation is not None:
            verdicts.append(rehearse_rerun(tree, config, args))
        print_verdicts(verdicts, config, as_json=args.json)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if all(v.passed for v in verdicts) else 1


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
        if item.name != "wheels":
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


def config_toml(config: Config) -> str:
    """The fields that differ from the profile's defaults, as TOML (JSON scalars are TOML)."""
    defaults = as_dict(load_config(config.profile.name))
    lines: list[str] = []

    def emit(section: str, values: dict[str, Any], base: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict) and v != base[k]}
        if scalars:
            lines.append(f"[{section}]")
            lines.extend(
                f"{key} = {json.dumps(list(v) if isinstance(v, tuple) else v)}"
                for key, v in scalars.items()
            )
        for key, value in values.items():
            if isinstance(value, dict):
                emit(f"{section}.{key}" if section else key, value, base[key])

    emit("", as_dict(config), defaults)
    return "\n".join(lines) + "\n"


def fresh_venv(path: Path, image_wheels: Path) -> Path:
    """A new venv with only the image's packages (no index); its python."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    wheels = sorted(str(w) for w in image_wheels.glob("*.whl"))
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--disable-pip-version-check",
            "--find-links",
            str(image_wheels),
            *wheels,
        ],
        check=True,
    )
    return python


def kernel_env(tree: Tree, rerun: bool) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tree.root),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",  # Kaggle's submission run has no internet
        "AIMO_KAGGLE_ROOT": str(tree.kaggle),
        "AIMO_CONFIG": str(tree.config_file),
    }
    if rerun:
        env["KAGGLE_IS_COMPETITION_RERUN"] = "1"
    return env


def working_dir(tree: Tree) -> Path:
    working = tree.kaggle / "working"
    shutil.rmtree(working, ignore_errors=True)
    working.mkdir(parents=True)
    return working


def rehearse_interactive(tree: Tree, config: Config, args: argparse.Namespace) -> Verdict:
    verdict = Verdict("interactive", expected_rows=tree.test_rows)
    python = fresh_venv(tree.root / "venv-interactive", args.image_wheels)
    working = working_dir(tree)
    log_file = tree.root / "interactive.log"
    launched = time.time()
    with log_file.open("w") as out:
        try:
            done = subprocess.run(
                [str(python), str(tree.code_file)],
                cwd=working,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=kernel_env(tree, rerun=False),
                timeout=args.timeout_s,
                check=False,
            )
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    verdict.wall_s = time.time() - launched
    if code != 0:
        verdict.faults.append(f"kernel exit {code}" if code is not None else "kernel timed out")
    read_log(verdict, log_file, launched, (" running the real ", " built-in gateway "))
    check_output(verdict, working / "submission.parquet", tree, config.profile)
    return verdict


def rehearse_rerun(tree: Tree, config: Config, args: argparse.Namespace) -> Verdict:
    verdict = Verdict("rerun", expected_rows=tree.test_rows)
    python = fresh_venv(tree.root / "venv-rerun", args.image_wheels)
    working = working_dir(tree)
    hooks = tree.root / "gateway-hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    module = config.profile.gateway_module.replace("inference_server", "gateway")
    cls = config.profile.gateway_class.replace("InferenceServer", "Gateway")
    gateway = (
        f"import sys; sys.path.insert(0, {str(tree.competition)!r}); "
        f"from {module} import {cls}; {cls}(({str(tree.competition / 'test.csv')!r},)).run()"
    )
    kernel_log, gateway_log = tree.root / "rerun-kernel.log", tree.root / "rerun-gateway.log"
    env = kernel_env(tree, rerun=True)
    gateway_env = {**env, "PYTHONPATH": str(hooks)}
    script = tree.root / "rerun.sh"
    kernel_cmd = f"{_env_prefix(env)} {python} {tree.code_file}"
    gateway_cmd = f"{_env_prefix(gateway_env)} {args.gateway_python} -c {_quote(gateway)}"
    script.write_text(
        "ip link set lo up 2>/dev/null || true\n"
        f"{kernel_cmd} > {kernel_log} 2>&1 &\n"
        "KERNEL=$!\n"
        f"{gateway_cmd} > {gateway_log} 2>&1\n"
        "GATEWAY=$?\n"
        # serve() never returns by itself: the kernel is stopped as Kaggle stops it
        "kill -TERM $KERNEL 2>/dev/null; wait $KERNEL 2>/dev/null\n"
        "exit $GATEWAY\n",
        encoding="utf-8",
    )
    wrapper = ["unshare", "--net", "--fork"] if own_network_allowed() else []
    launched = time.time()
    try:
        done = subprocess.run(
            [*wrapper, "sh", str(script)], cwd=working, timeout=args.timeout_s, check=False
        )
        code: int | None = done.returncode
    except subprocess.TimeoutExpired:
        code = None
    verdict.wall_s = time.time() - launched
    if code != 0:
        tail = gateway_log.read_text(errors="replace")[-1500:] if gateway_log.exists() else ""
        verdict.faults.append(f"gateway exit {code}: {tail}")
    read_log(verdict, kernel_log, launched, (" serve(): ",))
    result = working / "result.json"
    if result.is_file() and not json.loads(result.read_text()).get("Succeeded"):
        verdict.faults.append(f"result.json: {result.read_text()[:500]}")
    if verdict.serve_s is not None and verdict.serve_s > SERVE_LIMIT_S:
        verdict.faults.append(f"serve() after {verdict.serve_s:.0f} s: past Kaggle's 15 minutes")
    check_output(verdict, working / "submission.parquet", tree, config.profile)
    return verdict


def own_network_allowed() -> bool:
    """Whether `unshare --net` works here (root, or user namespaces allowed)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def read_log(verdict: Verdict, log_file: Path, launched: float, serving: tuple[str, ...]) -> None:
    """Install time, time to serve, first answer and fallbacks, from the kernel's log."""
    text = log_file.read_text(errors="replace") if log_file.is_file() else ""
    verdict.log = str(log_file)
    for line in text.splitlines():
        stamp = LOG_TIME.match(line)
        at = _seconds_since(stamp.group(1), launched) if stamp else None
        if (found := INSTALL_LINE.search(line)) is not None:
            verdict.install_s = float(found.group(1))
        if verdict.serve_s is None and at is not None and any(m in line for m in serving):
            verdict.serve_s = at
        answered = " problem 1/" in line or FALLBACK_LINE.search(line)
        if verdict.first_answer_s is None and at is not None and answered:
            verdict.first_answer_s = at
        if (fallback := FALLBACK_LINE.search(line)) is not None:
            verdict.fallbacks.setdefault(fallback.group(1), fallback.group(2))
        if " ERROR " in line and "preflight FAILED" in line:
            verdict.faults.append(line.split(": ", 1)[-1])


def check_output(verdict: Verdict, submission: Path, tree: Tree, profile: ProfileConfig) -> None:
    import polars as pl

    from submission.gateway import check_submission

    if not submission.is_file():
        verdict.faults.append("no submission.parquet")
    else:
        verdict.rows = pl.read_parquet(submission).height
        verdict.faults += check_submission(submission, tree.competition / "test.csv", profile)
    verdict.passed = not verdict.faults and verdict.rows == verdict.expected_rows


def print_verdicts(verdicts: list[Verdict], config: Config, as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(v) for v in verdicts], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    table = Table(title=f"rehearsal: {config.profile.name}, engine {config.engine.kind}")
    for column in (
        "run",
        "verdict",
        "install",
        "to serve()",
        "to 1st answer",
        "rows",
        "fallbacks",
        "wall",
    ):
        table.add_column(column)
    for v in verdicts:
        table.add_row(
            v.mode,
            "PASS" if v.passed else "FAIL",
            secs(v.install_s),
            secs(v.serve_s),
            secs(v.first_answer_s),
            f"{v.rows}/{v.expected_rows}",
            str(len(v.fallbacks)),
            secs(v.wall_s),
        )
    console = Console(width=120)
    console.print(table)
    for v in verdicts:
        for problem_id, why in sorted(v.fallbacks.items()):
            console.print(f"{v.mode}: fallback {problem_id}: {why}")
        for fault in v.faults:
            console.print(f"[red]{v.mode}[/red]: {fault}")
        if not v.passed and Path(v.log).is_file():
            print(f"{v.mode} log (last lines):\n" + _tail(Path(v.log), 30))
        console.print(f"{v.mode} log: {v.log}")


def _tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _seconds_since(stamp: str, launched: float) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() - launched


def _env_prefix(env: dict[str, str]) -> str:
    return "env -i " + " ".join(f"{key}={_quote(value)}" for key, value in env.items())


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
