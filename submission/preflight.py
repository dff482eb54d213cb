"""Is this machine ready to run the configured harness: the checks, as a list of functions.

Each check is reported as ok / warn / fail with a one-line reason: the Python
version, the runtime packages, the optional engine's package, a GPU, the
engine folder and its manifest (for `trtllm`), what the engine was built with
against the run (prefix reuse, its GPUs against the machine's), the interpreter
and MPI the pinned TensorRT-LLM needs, the engine built from the config, the
model server the openai engine would start (its package, the weights folder, a
free port), the model family's own needs (harmony: openai-harmony and its
vocabulary's hash), the embedded default data, and the sandbox (one real call
that also imports a module no session preloaded, with its guards). `CHECKS` is the
list, in order: one function per check, taking the config and yielding its
findings. `python -m submission doctor` prints them; the kernel runs them all as
its preflight (submission/kernel.py), so a check added here runs there too.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from submission.config import PACKAGE_DATA, Config

Status = Literal["ok", "warn", "fail"]
RUNTIME_PACKAGES = ("polars", "pyarrow", "numpy", "sympy", "psutil", "rich", "matplotlib")
ENGINE_PACKAGES = {"trtllm": "tensorrt_llm", "hf": "transformers", "openai": "httpx"}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


def run_checks(config: Config, sandbox: bool = True) -> list[Check]:
    """Every check's findings, in `CHECKS` order (`sandbox=False` skips the sandbox call)."""
    checks = [c for c in CHECKS if sandbox or c is not check_sandbox]
    return [found for check in checks for found in check(config)]


def check_python(config: Config) -> Iterator[Check]:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info >= (3, 11)
    yield Check("python", "ok" if ok else "fail", version if ok else f"{version} < 3.11")


def check_packages(config: Config) -> Iterator[Check]:
    """The runtime packages, and the configured engine's own."""
    for name in RUNTIME_PACKAGES:
        yield _package(name)
    engine_package = ENGINE_PACKAGES.get(config.engine.kind)
    if engine_package is not None:
        yield _package(engine_package, required=True)


def check_gpu(config: Config) -> Iterator[Check]:
    required = config.engine.kind == "trtllm"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        yield Check("gpu", "fail" if required else "warn", "nvidia-smi not found")
        return
    try:
        query = [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        yield Check("gpu", "fail" if required else "warn", f"nvidia-smi failed: {exc}")
        return
    yield Check("gpu", "ok", "; ".join(out.stdout.strip().splitlines()))


def check_engine_dir(config: Config) -> Iterator[Check]:
    if config.engine.kind == "trtllm":
        yield _engine_dir(config)


def check_engine_build(config: Config) -> Iterator[Check]:
    """For trtllm: what the engine was built with against the run's needs: prefix reuse
    (--use_paged_context_fmha) and the GPUs it is split over against the machine's."""
    if config.engine.kind != "trtllm":
        return
    from submission.engines.base import EngineError
    from submission.engines.trtllm_folder import inspect_engine_dir

    trtllm = config.engine.trtllm
    try:
        facts = inspect_engine_dir(
            Path(trtllm.engine_dir), Path(trtllm.tokenizer_dir or trtllm.engine_dir), False
        )
    except EngineError:
        return  # "engine dir" says why
    if trtllm.enable_block_reuse:
        if facts.paged_context_fmha is False:
            yield Check(
                "kv block reuse",
                "warn",
                "engine.trtllm.enable_block_reuse is on, but the engine was built without "
                "--use_paged_context_fmha enable, which reuse needs (TensorRT-LLM "
                "docs/source/kv_cache_reuse.md): no prompt prefix will be reused; rebuild",
            )
        else:
            known = "built with" if facts.paged_context_fmha else "not recorded:"
            yield Check("kv block reuse", "ok", f"{known} --use_paged_context_fmha enable")
    gpus = _gpu_count()
    wanted = config.profile.gpus
    if gpus is not None and gpus < facts.tp_size:
        yield Check(
            "engine gpus",
            "fail",
            f"the engine is split over {facts.tp_size} GPUs (tp_size), this machine has {gpus}",
        )
    elif facts.tp_size < wanted:
        yield Check(
            "engine gpus",
            "warn",
            f"the engine uses {facts.tp_size} of {config.profile.name}'s {wanted} GPUs: "
            f"build it with tp_size {wanted} (docs/kaggle.md, first-push checklist)",
        )
    else:
        yield Check("engine gpus", "ok", f"tp_size {facts.tp_size}, {gpus or '?'} GPUs here")


def _gpu_count() -> int | None:
    """GPUs nvidia-smi lists (None: no nvidia-smi, or it failed)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def check_engine(config: Config) -> Iterator[Check]:
    """The engine object the run would build (a bad path or setting fails here, not later)."""
    from submission.engines.registry import create_engine

    try:
        engine = create_engine(config)
    except Exception as exc:  # any constructor failure is this check's finding
        yield Check("engine", "fail", f"{config.engine.kind}: {type(exc).__name__}: {exc}")
        return
    yield Check("engine", "ok", f"{config.engine.kind} ({type(engine).__name__}) built")


def check_model_server(config: Config) -> Iterator[Check]:
    """The server engine.server starts: its package (or stand-in file), weights, port."""
    server = config.engine.server
    if config.engine.kind != "openai" or server.kind == "none":
        return
    if server.entrypoint:
        found = Path(server.entrypoint).is_file()
        detail = f"entry point {server.entrypoint}" + ("" if found else " not found")
        yield Check("model server", "ok" if found else "fail", detail)
    else:
        yield _package(server.kind)  # vllm, sglang, transformers: the module is the kind
    model = Path(server.model)
    found = (model / "config.json").is_file()
    detail = f"{model}: " + ("config.json found" if found else "no config.json (attach the model)")
    yield Check("server model", "ok" if found else "fail", detail)
    with socket.socket() as sock:
        try:
            sock.bind((server.host, server.port))
            yield Check("server port", "ok", f"{server.host}:{server.port} free")
        except OSError as exc:
            yield Check("server port", "fail", f"{server.host}:{server.port}: {exc}")


def check_family(config: Config) -> Iterator[Check]:
    """The harmony family: openai-harmony installed, and its vocabulary file's sha256."""
    if config.prompt.family != "harmony":
        return
    from submission.families.harmony_vocab import (
        VOCABULARY_FILE,
        vocabulary_dir,
        vocabulary_problem,
    )

    yield _package("openai_harmony")
    folder = vocabulary_dir(config.prompt.harmony.vocabulary_dir)
    problem = vocabulary_problem(folder)
    detail = problem or f"{folder / VOCABULARY_FILE}: sha256 ok"
    yield Check("harmony vocabulary", "fail" if problem else "ok", detail)


def check_embedded_data(config: Config) -> Iterator[Check]:
    files = sorted(p.name for p in PACKAGE_DATA.glob("*.jsonl"))
    yield Check("embedded data", "ok" if files else "fail", ", ".join(files) or "missing")


# A module no session preloads, imported in the sandbox call: the first cell that needs a
# module the fork server did not import (sympy's nroots does) fails here, not in an attempt,
# when sessions cannot see the interpreter's files (a venv under /tmp behind a private /tmp).
LAZY_IMPORT = "sympy.tensor.tensor"


def check_sandbox(config: Config) -> Iterator[Check]:
    from submission.families.registry import create_family
    from submission.sandbox import Sandbox

    cell = f"import {LAZY_IMPORT}\nimport sympy\nprint(sympy.factorint(360))"
    try:
        with Sandbox.from_config(config, create_family(config).session_prelude) as sandbox:
            result = sandbox.run(cell, "doctor", 30.0)
            guards = "; ".join(f"{name}: {how}" for name, how in sandbox.guards().items())
    except Exception as exc:  # report any failure to start as a failed check, not a crash
        yield Check("sandbox", "fail", f"{type(exc).__name__}: {exc}")
        return
    ok = result.status == "ok" and "{2: 3, 3: 2, 5: 1}" in result.stdout
    detail = f"{result.status} in {result.seconds * 1000:.1f} ms; guards: {guards}"
    if not ok:
        error = (result.stderr.strip().splitlines() or ["no output"])[-1]
        detail = f"`import {LAZY_IMPORT}` in a session: {result.status}, {error}; {detail}"
    yield Check("sandbox", "ok" if ok else "fail", detail)


def _package(module: str, required: bool = True) -> Check:
    if importlib.util.find_spec(module) is None:
        return Check(module, "fail" if required else "warn", "not installed")
    try:
        version = importlib.metadata.version(module.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "installed"
    return Check(module, "ok", version)


def _engine_dir(config: Config) -> Check:
    from submission.manifest import ManifestError, read_manifest, verify_files

    engine_dir = Path(config.engine.trtllm.engine_dir)
    if not (engine_dir / "config.json").is_file():
        return Check("engine dir", "fail", f"no config.json in {engine_dir!s}")
    try:
        manifest = read_manifest(engine_dir)
    except ManifestError as exc:
        return Check("engine dir", "fail", str(exc))
    problems = verify_files(engine_dir, manifest)
    if problems:
        return Check("engine dir", "fail", f"{len(problems)} file problem(s): {problems[0]}")
    greedy = " (GREEDY drafter: attempts identical)" if manifest.greedy_drafter else ""
    return Check(
        "engine dir",
        "warn" if greedy else "ok",
        f"TensorRT-LLM {manifest.tensorrt_llm_version}, {manifest.quantization}, "
        f"max_seq_len {manifest.max_seq_len}{greedy}",
    )


def _trtllm_python(config: Config) -> Check:
    """This interpreter against engine.trtllm.python_version and the TensorRT-LLM wheels."""
    from submission.engines.trtllm_folder import wheel_python_problem

    python = "{}.{}".format(*sys.version_info[:2])
    version, source = _tensorrt_llm_version(Path(config.engine.trtllm.engine_dir))
    wanted = config.engine.trtllm.python_version
    problem = wheel_python_problem(python, wanted, version)
    if problem is not None:
        return Check("python for trtllm", "fail", f"{problem} ({source})")
    return Check(
        "python for trtllm", "ok", f"CPython {python}, TensorRT-LLM {version or '?'} ({source})"
    )


def _tensorrt_llm_version(engine_dir: Path) -> tuple[str, str]:
    """The TensorRT-LLM version the engine needs (manifest, config.json), else the installed one."""
    import json

    from submission.manifest import ManifestError, read_manifest

    try:
        return read_manifest(engine_dir).tensorrt_llm_version, "manifest"
    except ManifestError:
        pass
    try:
        return str(json.loads((engine_dir / "config.json").read_text())["version"]), "config.json"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return importlib.metadata.version("tensorrt-llm"), "installed"
    except importlib.metadata.PackageNotFoundError:
        return "", "no engine folder, TensorRT-LLM not installed"


def _mpi() -> Check:
    """mpi4py and its MPI library: importing tensorrt_llm imports mpi4py (llmapi/mpi_session.py).

    Checked in a child process: MPI must not be initialised in this one before the
    sandbox forks.
    """
    probe = "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])"
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return Check("mpi4py", "fail", f"could not run the probe: {exc}")
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("mpi4py", "fail", f"`from mpi4py import MPI` failed: {last}")
    return Check("mpi4py", "ok", out.stdout.strip())


def check_trtllm_runtime(config: Config) -> Iterator[Check]:
    """For trtllm: this interpreter against the engine's wheels, and mpi4py."""
    if config.engine.kind == "trtllm":
        yield _trtllm_python(config)
        yield _mpi()


# Every check, in the order reported. Each takes the config and yields what it found
# (nothing when it does not apply to this config).
CHECKS: list[Callable[[Config], Iterator[Check]]] = [
    check_python,
    check_packages,
    check_gpu,
    check_engine_dir,
    check_engine_build,
    check_trtllm_runtime,
    check_engine,
    check_model_server,
    check_family,
    check_embedded_data,
    check_sandbox,
]
