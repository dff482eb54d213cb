"""Engine build pipeline: Hugging Face weights to a Kaggle-ready ReDrafter FP8 engine.

Run by path (a top-level package named `build` would shadow PyPA's `build`):

    python build/pipeline.py --config build/pipeline.toml [--stage NAME ...] [--dry-run]

Stages, in order: fetch, calibration, quantize, drafter, engine, package. Each
stage is a list of steps; a step is one command line with one output path. A
step is skipped when its output exists and its stamp (work_dir/.stamps/STEP.json)
holds the hash of its command line and of its inputs' fingerprints; so changing
an argument or rebuilding an input re-runs exactly what depends on it.
Before the expensive stages, `preflight.py` checks what can be known in
advance (GPU, disk, versions, dtypes, lengths) and stops with a clear message.
Every argument comes from the AIMO-2 winners' recipe (NeMo-Skills' tutorial
"Building an Efficient Inference Engine for Solving Math Problems", 2025-08-28,
NVIDIA/NeMo-Skills docs; its draft: alessiodevoto/NeMo-Skills, branch
aimo-inference, docs/openmathinstruct2/inference.md); the real flags are listed,
with their sources, in docs/build.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import shlex
import shutil
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import preflight

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run by path from a checkout: find the harness package
    sys.path.insert(0, str(REPO_ROOT))

from submission.config import load_config  # noqa: E402
from submission.config_fields import ConfigError, apply_mapping, read_toml  # noqa: E402

LOG = logging.getLogger("build.pipeline")
BUILD_DIR = Path(__file__).resolve().parent
# The kernel's production config: its [kaggle] identity names the engine dataset.
HARNESS_CONFIG = REPO_ROOT / "submission" / "kaggle.toml"
STAGES = ("fetch", "calibration", "quantize", "drafter", "engine", "package")
# Stages that take a GPU for minutes to hours: preflight checks run before them.
EXPENSIVE_STAGES = ("quantize", "drafter", "engine", "package")
# examples/redrafter/convert_checkpoint.py takes --base_model_checkpoint_dir (a quantized
# Qwen2 TRT-LLM checkpoint) only since "ReDrafter support for Qwen" (PR #4875, first listed
# in the 1.0 release notes); 0.x releases take --model_dir, an HF Llama only.
MIN_TENSORRT_LLM = (1, 0)


@dataclass
class FetchConfig:
    model_repo: str = "nvidia/OpenMath-Nemotron-14B-Kaggle"
    model_dir: str = "OpenMath-Nemotron-14B-kaggle"
    dataset_repo: str = "nvidia/OpenMathReasoning"
    dataset_dir: str = "OpenMathReasoning"
    # Only the tir split (and the card, whose `configs` let load_dataset find the splits).
    dataset_include: list[str] = field(default_factory=lambda: ["README.md", "data/tir-*"])


@dataclass
class CalibrationConfig:
    # A parquet file, a folder of parquet files, or a glob; empty = the fetched tir split.
    source: str = ""
    rows: int = 4096
    problem_column: str = "problem"
    # OpenMathReasoning's solution column (its card lists `generated_solution`).
    solution_column: str = "generated_solution"
    output_dir: str = "calibrate_openmathreasoning"
    # Harness TOML whose [prompt] renders the text (empty = the harness defaults).
    harness_config: str = ""
    harness_profile: str = "aimo3"


@dataclass
class QuantizeConfig:
    # "ns" (NeMo-Skills `ns convert`), "trtllm" (examples/quantization/quantize.py),
    # "auto" = ns when nemo_skills is installed and the format is fp8.
    tool: Literal["auto", "ns", "trtllm"] = "auto"
    # "fp8", "int8_wo", or "auto" = fp8 on GPUs with FP8 (Ada/Hopper, sm >= 8.9), else int8_wo.
    qformat: Literal["auto", "fp8", "int8_wo"] = "auto"
    # ns convert builds a base engine here and leaves the checkpoint in OUTPUT-tmp-ckpt.
    output_model: str = "OpenMath-Nemotron-14B-kaggle-fp8-trtllm"
    hf_model_name: str = "nvidia/OpenMath-Nemotron-14B-kaggle"
    model_type: str = "qwen"
    max_input_len: int = 30_000
    max_seq_len: int = 32_000
    calib_size: int = 4096
    num_gpus: int = 1
    cluster: str = ""  # ns --cluster; empty = NEMO_SKILLS_CONFIG
    trtllm_examples_dir: str = "TensorRT-LLM/examples"

    @property
    def checkpoint_dir(self) -> str:
        return f"{self.output_model}-tmp-ckpt"


@dataclass
class DrafterConfig:
    nproc_per_node: int = 1
    output_prefix: str = "redrafter_"
    dataset_split: str = "tir"
    bf16: bool = True
    num_train_epochs: int = 1
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    lr_scheduler_type: str = "cosine"
    logging_steps: int = 20
    tf32: bool = True
    model_max_length: int = 2048
    dataset_nrows: int = 100_000
    predict_n_tokens: int = 3
    num_layers: int = 2
    rnn: bool = True
    report_to: str = "none"
    # Conversion (TensorRT-LLM examples/redrafter/convert_checkpoint.py).
    checkpoint_dir: str = "OpenMath-Nemotron-14B-kaggle-fp8-draft-ckpt"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"  # = the base checkpoint's
    tp_size: int = 1
    num_beams: int = 1
    draft_len_per_beam: int = 3
    # A greedy drafter ignores temperature: K attempts come out identical.
    greedy: bool = False


@dataclass
class EngineBuildConfig:
    output_dir: str = "OpenMath-Nemotron-14B-kaggle-fp8-redrafter-trtllm"
    # "auto" = fp8 for an fp8 checkpoint, else the drafter dtype.
    gemm_plugin: Literal["auto", "fp8", "bfloat16", "float16"] = "auto"
    max_batch_size: int = 32
    max_seq_len: int = 32_000
    max_input_len: int = 32_000
    max_num_tokens: int = 32_000
    max_beam_width: int = 1


@dataclass
class PackageConfig:
    output_dir: str = "kaggle-dataset"
    # Empty = the harness config's identity (submission/kaggle.toml [kaggle]: owner/engine_slug,
    # engine_title), the dataset the kernel loads from /kaggle/input/<engine_slug>.
    dataset_id: str = ""
    title: str = ""
    license: str = "CC-BY-4.0"
    tokenizer_globs: list[str] = field(
        default_factory=lambda: ["*tok*", "vocab.json", "merges.txt", "generation_config.json"]
    )


@dataclass
class ChecksConfig:
    # The TensorRT-LLM version the Kaggle runtime installs (offline_wheels pins the same).
    # At least MIN_TENSORRT_LLM: the drafter conversion's flags need it (docs/build.md).
    tensorrt_llm_version: str = "1.0.0"
    # Longest rendered prompt, and the generation budget of one attempt (all TIR rounds):
    # every TIR round re-sends prompt + text so far, so the engine's max_input_len must hold both.
    max_prompt_tokens: int = 1024
    tir_budget_tokens: int = 30_000
    min_free_gb: dict[str, float] = field(
        default_factory=lambda: {"quantize": 60.0, "drafter": 40.0, "engine": 40.0, "package": 40.0}
    )


@dataclass
class PipelineConfig:
    work_dir: str = "build_out"
    python: str = "python"
    fetch: FetchConfig = field(default_factory=FetchConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    drafter: DrafterConfig = field(default_factory=DrafterConfig)
    engine: EngineBuildConfig = field(default_factory=EngineBuildConfig)
    package: PackageConfig = field(default_factory=PackageConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)

    def path(self, relative: str) -> Path:
        """A configured path, relative ones resolved against work_dir."""
        return Path(self.work_dir) / Path(relative).expanduser()


class PipelineError(RuntimeError):
    """A config or a check that stops the pipeline, with a message saying why."""


@dataclass(frozen=True)
class Facts:
    """What the build box is: probed once, injected in tests."""

    gpu_name: str | None = None
    compute_capability: tuple[int, int] | None = None
    tensorrt_llm_version: str | None = None
    nemo_skills_installed: bool = False
    free_gb: float = 0.0


@dataclass(frozen=True)
class Step:
    """One command line of a stage, the path it creates, and the paths it reads."""

    stage: str
    name: str
    argv: tuple[str, ...]
    output: Path
    inputs: tuple[Path, ...] = ()

    @property
    def stamp_name(self) -> str:
        return f"{self.stage}.{self.name}"


# ---------------------------------------------------------------- config


def load_pipeline_config(
    toml_path: str | Path | None, work_dir: str | None = None
) -> PipelineConfig:
    config = PipelineConfig()
    if toml_path is not None:
        try:
            apply_mapping(config, read_toml(toml_path, "pipeline config"))
        except ConfigError as exc:
            raise PipelineError(str(exc)) from None
    if work_dir is not None:
        config.work_dir = work_dir
    kaggle = load_config("aimo3", HARNESS_CONFIG).kaggle  # the one identity
    config.package.dataset_id = config.package.dataset_id or kaggle.dataset_id(kaggle.engine_slug)
    config.package.title = config.package.title or kaggle.engine_title
    return config


# ---------------------------------------------------------------- facts


def probe_facts(work_dir: Path) -> Facts:
    """The build box: GPU (nvidia-smi), installed TensorRT-LLM and NeMo-Skills, free disk."""
    gpu_name, capability = None, None
    if shutil.which("nvidia-smi"):
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        first = result.stdout.strip().splitlines()[:1]
        if result.returncode == 0 and first:
            name, _, cap = first[0].rpartition(",")
            major, _, minor = cap.strip().partition(".")
            if major.isdigit() and minor.isdigit():
                gpu_name, capability = name.strip(), (int(major), int(minor))
    try:
        # Metadata only: importing tensorrt_llm initialises CUDA and takes seconds.
        trtllm_version: str | None = importlib.metadata.version("tensorrt_llm")
    except importlib.metadata.PackageNotFoundError:
        trtllm_version = None
    existing = work_dir.resolve()
    while not existing.exists():
        existing = existing.parent
    return Facts(
        gpu_name=gpu_name,
        compute_capability=capability,
        tensorrt_llm_version=trtllm_version,
        nemo_skills_installed=importlib.util.find_spec("nemo_skills") is not None,
        free_gb=shutil.disk_usage(existing).free / 1e9,
    )


def resolved_qformat(config: PipelineConfig, facts: Facts) -> str:
    if config.quantize.qformat != "auto":
        return config.quantize.qformat
    return "fp8" if preflight.supports_fp8(facts.compute_capability) else "int8_wo"


def resolved_tool(config: PipelineConfig, facts: Facts) -> str:
    if config.quantize.tool != "auto":
        return config.quantize.tool
    # ns convert quantizes to fp8 only; int8_wo goes through TensorRT-LLM's example.
    fp8 = resolved_qformat(config, facts) == "fp8"
    return "ns" if facts.nemo_skills_installed and fp8 else "trtllm"


def resolved_gemm_plugin(config: PipelineConfig, facts: Facts) -> str:
    if config.engine.gemm_plugin != "auto":
        return config.engine.gemm_plugin
    return "fp8" if resolved_qformat(config, facts) == "fp8" else config.drafter.dtype


def check_runtime_version(stage: str, version: str) -> list[str]:
    """The pinned TensorRT-LLM must have the ReDrafter interface the drafter and engine use."""
    if stage not in ("drafter", "engine"):
        return []
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return [f"checks.tensorrt_llm_version {version!r} is not a release number"]
    if major_minor < MIN_TENSORRT_LLM:
        floor = ".".join(map(str, MIN_TENSORRT_LLM))
        return [
            f"checks.tensorrt_llm_version {version} < {floor}: its "
            "examples/redrafter/convert_checkpoint.py has no --base_model_checkpoint_dir and "
            "ReDrafter has no Qwen2 base model there; pin TensorRT-LLM >= "
            f"{floor} here and in offline_wheels/requirements-trtllm.txt"
        ]
    return []


def resolve(config: PipelineConfig, facts: Facts) -> preflight.Resolved:
    return preflight.Resolved(
        qformat=resolved_qformat(config, facts),
        tool=resolved_tool(config, facts),
        gemm_plugin=resolved_gemm_plugin(config, facts),
        drafter_train_dir=drafter_train_dir(config),
    )


def drafter_train_dir(config: PipelineConfig) -> Path:
    """Where train_redrafter saves: it appends the run's name to --output_dir."""
    d = config.drafter
    model_name = Path(config.fetch.model_dir).name
    prefix = str(config.path(d.output_prefix))
    # train_redrafter formats the float learning rate with str(), e.g. 0.001.
    return Path(
        f"{prefix}_redrafter_{model_name}_n_{d.predict_n_tokens}"
        f"_lr_{float(d.learning_rate)}_layers_{d.num_layers}"
    )


# ---------------------------------------------------------------- steps


def plan(config: PipelineConfig, facts: Facts) -> dict[str, list[Step]]:
    """Every stage's steps, in order."""
    engine_plan = {
        "quantize": quantize_steps(config, facts),
        "drafter": drafter_steps(config),
        "engine": engine_steps(config, facts),
    }
    return {
        "fetch": fetch_steps(config),
        "calibration": calibration_steps(config),
        **engine_plan,
        "package": package_steps(config, engine_plan),
    }


def flags(pairs: dict[str, object]) -> list[str]:
    """`--key value` for each pair, in order; booleans as True/False (HfArgumentParser style)."""
    return [item for key, value in pairs.items() for item in (f"--{key}", str(value))]


def fetch_steps(config: PipelineConfig) -> list[Step]:
    f = config.fetch
    model_dir, dataset_dir = config.path(f.model_dir), config.path(f.dataset_dir)
    model = ("huggingface-cli", "download", f.model_repo, "--local-dir", str(model_dir))
    include = ("--include", *f.dataset_include) if f.dataset_include else ()
    dataset = (
        *("huggingface-cli", "download", f.dataset_repo, "--repo-type", "dataset"),
        *("--local-dir", str(dataset_dir), *include),
    )
    return [
        Step("fetch", "model", model, model_dir),
        Step("fetch", "dataset", dataset, dataset_dir),
    ]


def calibration_steps(config: PipelineConfig) -> list[Step]:
    c = config.calibration
    output = config.path(c.output_dir) / "data.parquet"
    source = config.path(c.source) if c.source else config.path(config.fetch.dataset_dir)
    pattern = str(source) if c.source else str(source / "data" / "tir-*.parquet")
    argv = [
        config.python,
        str(BUILD_DIR / "calibration.py"),
        *flags(
            {
                "source": pattern,
                "rows": c.rows,
                "problem-column": c.problem_column,
                "solution-column": c.solution_column,
                "output": output,
                "profile": c.harness_profile,
            }
        ),
    ]
    inputs = (source,)
    if c.harness_config:
        argv += ["--harness-config", str(config.path(c.harness_config))]
        inputs += (config.path(c.harness_config),)
    return [Step("calibration", "render", tuple(argv), output, inputs)]


def quantize_steps(config: PipelineConfig, facts: Facts) -> list[Step]:
    q = config.quantize
    qformat, tool = resolved_qformat(config, facts), resolved_tool(config, facts)
    model_dir = config.path(config.fetch.model_dir)
    checkpoint = config.path(q.checkpoint_dir)
    calib_dir = config.path(config.calibration.output_dir)
    inputs = (model_dir, calib_dir) if qformat == "fp8" else (model_dir,)
    if tool == "ns":
        if qformat != "fp8":
            raise PipelineError("ns convert quantizes to fp8 only: set quantize.tool = 'trtllm'")
        cluster = ["--cluster", q.cluster] if q.cluster else []
        argv = [
            "ns",
            "convert",
            *cluster,
            *flags(
                {
                    "input_model": model_dir,
                    "output_model": config.path(q.output_model),
                    "convert_from": "hf",
                    "convert_to": "trtllm",
                    "num_gpus": q.num_gpus,
                    "dtype": "fp8",
                    "hf_model_name": q.hf_model_name,
                    "model_type": q.model_type,
                    "max_input_len": q.max_input_len,
                    "max_seq_len": q.max_seq_len,
                }
            ),
        ]
        # Build the checkpoint afresh (ns reuses a stale OUTPUT-tmp-ckpt otherwise).
        argv += ["--no-trt_reuse_tmp_engine"]
        argv += flags({"calib_dataset": calib_dir, "calib_size": q.calib_size})
    else:
        script = config.path(q.trtllm_examples_dir) / "quantization" / "quantize.py"
        argv = [
            config.python,
            str(script),
            *flags(
                {
                    "model_dir": model_dir,
                    "output_dir": checkpoint,
                    "dtype": "auto",
                    "qformat": qformat,
                    "tp_size": q.num_gpus,
                }
            ),
        ]
        if qformat == "fp8":  # int8 weight-only needs no calibration data
            argv += flags({"calib_dataset": calib_dir, "calib_size": q.calib_size})
    return [Step("quantize", "checkpoint", tuple(argv), checkpoint, inputs)]


def drafter_steps(config: PipelineConfig) -> list[Step]:
    d = config.drafter
    model_dir = config.path(config.fetch.model_dir)
    dataset_dir = config.path(config.fetch.dataset_dir)
    base_checkpoint = config.path(config.quantize.checkpoint_dir)
    trained = drafter_train_dir(config)
    train = [
        *("torchrun", f"--nproc_per_node={d.nproc_per_node}"),
        *("-m", "nemo_skills.training.train_redrafter"),
        *flags(
            {
                "llm_name_or_path": model_dir,
                "dataset": dataset_dir,
                "dataset_split": d.dataset_split,
                "bf16": d.bf16,
                "output_dir": config.path(d.output_prefix),
                "num_train_epochs": d.num_train_epochs,
                "per_device_train_batch_size": d.per_device_train_batch_size,
                "gradient_accumulation_steps": d.gradient_accumulation_steps,
                "save_strategy": "no",
                "learning_rate": float(d.learning_rate),
                "weight_decay": float(d.weight_decay),
                "warmup_ratio": float(d.warmup_ratio),
                "lr_scheduler_type": d.lr_scheduler_type,
                "logging_steps": d.logging_steps,
                "tf32": d.tf32,
                "model_max_length": d.model_max_length,
                "dataset_nrows": d.dataset_nrows,
                "drafter_predict_n_tokens": d.predict_n_tokens,
                "drafter_num_layers": d.num_layers,
                "rnn": d.rnn,
                "phase": "train",
                "report_to": d.report_to,
            }
        ),
    ]
    draft_checkpoint = config.path(d.checkpoint_dir)
    script = (
        config.path(config.quantize.trtllm_examples_dir) / "redrafter" / "convert_checkpoint.py"
    )
    convert = [
        config.python,
        str(script),
        *flags(
            {
                "base_model_checkpoint_dir": base_checkpoint,
                "drafter_model_dir": trained,
                "output_dir": draft_checkpoint,
                "dtype": d.dtype,
                "tp_size": d.tp_size,
                "redrafter_num_beams": d.num_beams,
                "redrafter_draft_len_per_beam": d.draft_len_per_beam,
            }
        ),
    ]
    if not d.greedy:
        # The script's default is greedy search (a store_false flag): sampling must be asked for.
        convert.append("--redrafter_no_greedy_search")
    return [
        Step("drafter", "train", tuple(train), trained, (model_dir, dataset_dir)),
        Step("drafter", "convert", tuple(convert), draft_checkpoint, (base_checkpoint, trained)),
    ]


def engine_steps(config: PipelineConfig, facts: Facts) -> list[Step]:
    e = config.engine
    draft_checkpoint = config.path(config.drafter.checkpoint_dir)
    argv = [
        "trtllm-build",
        *flags(
            {
                "checkpoint_dir": draft_checkpoint,
                "output_dir": config.path(e.output_dir),
                "gemm_plugin": resolved_gemm_plugin(config, facts),
                "use_paged_context_fmha": "enable",
                "max_batch_size": e.max_batch_size,
                "max_seq_len": e.max_seq_len,
                "max_input_len": e.max_input_len,
                "max_num_tokens": e.max_num_tokens,
                "speculative_decoding_mode": "explicit_draft_tokens",
                "max_beam_width": e.max_beam_width,
                "kv_cache_type": "paged",
            }
        ),
    ]
    return [Step("engine", "build", tuple(argv), config.path(e.output_dir), (draft_checkpoint,))]


def package_steps(config: PipelineConfig, engine_plan: dict[str, list[Step]]) -> list[Step]:
    p = config.package
    engine_dir = config.path(config.engine.output_dir)
    # The manifest records every command line that shaped the engine.
    build_args = {
        step.stamp_name: shlex.join(step.argv) for s in engine_plan.values() for step in s
    }
    argv = [
        config.python,
        str(BUILD_DIR / "package_engine.py"),
        *flags(
            {
                "engine-dir": engine_dir,
                "tokenizer-dir": config.path(config.fetch.model_dir),
                "output-dir": config.path(p.output_dir),
                "dataset-id": p.dataset_id,
                "title": p.title,
                "license": p.license,
                "build-args": json.dumps(build_args, sort_keys=True),
            }
        ),
    ]
    for pattern in p.tokenizer_globs:
        argv += ["--tokenizer-glob", pattern]
    return [Step("package", "dataset", tuple(argv), config.path(p.output_dir), (engine_dir,))]


# ---------------------------------------------------------------- stamps


def fingerprint(path: Path, stamps_dir: Path) -> str:
    """Cheap identity of an input: its producing step's stamp, else names, sizes and mtimes."""
    for stamp in stamps_dir.glob("*.json") if stamps_dir.is_dir() else ():
        data = json.loads(stamp.read_text(encoding="utf-8"))
        if data.get("output") == str(path):
            return f"stamp:{data['key']}"
    if not path.exists():
        return "absent"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(
            f"{file.relative_to(path.parent)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
        )
    return f"stat:{digest.hexdigest()}"


def step_key(step: Step, stamps_dir: Path) -> str:
    identity = {
        "argv": list(step.argv),
        "inputs": {str(p): fingerprint(p, stamps_dir) for p in step.inputs},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def is_up_to_date(step: Step, stamps_dir: Path) -> bool:
    stamp = stamps_dir / f"{step.stamp_name}.json"
    if not step.output.exists() or not stamp.is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return recorded.get("key") == step_key(step, stamps_dir)


def write_stamp(step: Step, stamps_dir: Path) -> None:
    stamps_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "key": step_key(step, stamps_dir),
        "output": str(step.output),
        "argv": list(step.argv),
    }
    (stamps_dir / f"{step.stamp_name}.json").write_text(json.dumps(record, indent=2) + "\n")


def fetch_is_done(step: Step) -> bool:
    """fetch needs the internet: a folder that exists and is not empty is taken as fetched."""
    return step.output.is_dir() and any(step.output.iterdir())


# ---------------------------------------------------------------- run


def run_pipeline(
    config: PipelineConfig,
    facts: Facts,
    stages: list[str],
    dry_run: bool = False,
    force: bool = False,
    skip_checks: bool = False,
    emit: typing.Callable[[str], None] = LOG.info,
) -> int:
    """Run the named stages in order; with dry_run, print every command and run nothing."""
    stamps_dir = config.path(".stamps")
    steps = plan(config, facts)
    for stage in stages:
        if stage in EXPENSIVE_STAGES and not skip_checks and not dry_run:
            problems = check_runtime_version(stage, config.checks.tensorrt_llm_version)
            problems += preflight.check_stage(stage, config, facts, resolve(config, facts))
            if problems:
                raise PipelineError(
                    f"stage {stage!r} would fail; fix these first (or pass --skip-checks):\n  - "
                    + "\n  - ".join(problems)
                )
        for step in steps[stage]:
            done = fetch_is_done(step) if stage == "fetch" else is_up_to_date(step, stamps_dir)
            state = "up to date, skipped" if done and not force else "runs"
            emit(f"# {step.stamp_name}: {state}\n{shlex.join(step.argv)}")
            if dry_run or (done and not force):
                continue
            step.output.parent.mkdir(parents=True, exist_ok=True)
            result = subprocess.run(step.argv, check=False)
            if result.returncode != 0:
                raise PipelineError(f"{step.stamp_name} failed with exit code {result.returncode}")
            if not step.output.exists():
                raise PipelineError(f"{step.stamp_name} succeeded but wrote no {step.output}")
            write_stamp(step, stamps_dir)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(BUILD_DIR / "pipeline.toml"), help="pipeline TOML")
    parser.add_argument(
        "--stage",
        action="append",
        choices=STAGES,
        default=None,
        help="run only this stage (repeatable); default: all, in order",
    )
    parser.add_argument("--dry-run", action="store_true", help="print every command, run nothing")
    parser.add_argument("--work-dir", default=None, help="override the config's work_dir")
    parser.add_argument("--force", action="store_true", help="run steps even when up to date")
    parser.add_argument("--skip-checks", action="store_true", help="skip the preflight checks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python build/pipeline.py", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    try:
        config = load_pipeline_config(args.config, args.work_dir)
        facts = probe_facts(Path(config.work_dir))
        LOG.info("build box: %s", facts)
        stages = [s for s in STAGES if args.stage is None or s in args.stage]
        return run_pipeline(
            config,
            facts,
            stages,
            dry_run=args.dry_run,
            force=args.force,
            skip_checks=args.skip_checks,
            emit=lambda text: console.print(text, markup=False),
        )
    except PipelineError as exc:
        LOG.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
