"""Checks before the expensive build stages: each returns the problems it finds, as sentences.

The pure checks take plain values (tests feed them failing inputs); `check_stage`
gathers those values for one stage from the config, the build box's facts and
the small JSON files earlier stages wrote, and runs the checks that stage needs.
"""

from __future__ import annotations

import json
import shutil
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if typing.TYPE_CHECKING:
    from pipeline import Facts, PipelineConfig


@dataclass(frozen=True)
class Resolved:
    """The pipeline's choices for this box ("auto" settled), and where training saves."""

    qformat: str
    tool: str
    gemm_plugin: str
    drafter_train_dir: Path


# FP8 (E4M3) tensor cores: Ada Lovelace (sm_89) and Hopper (sm_90) onwards.
FP8_MIN_CAPABILITY = (8, 9)
# TensorRT-LLM's checkpoint config spells dtypes out; training flags say bf16/fp16.
_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def supports_fp8(capability: tuple[int, int] | None) -> bool:
    return capability is not None and capability >= FP8_MIN_CAPABILITY


def check_fp8_gpu(
    uses_fp8: bool, gpu_name: str | None, capability: tuple[int, int] | None
) -> list[str]:
    if not uses_fp8:
        return []
    if capability is None:
        return [
            "no GPU compute capability from `nvidia-smi --query-gpu=compute_cap`: "
            "FP8 quantization and builds need an Ada/Hopper GPU"
        ]
    if not supports_fp8(capability):
        cap = f"{capability[0]}.{capability[1]}"
        return [
            f"GPU {gpu_name} (compute capability {cap}) has no FP8: set quantize.qformat = "
            f"'int8_wo' (and engine.gemm_plugin = 'auto'), or build on Ada/Hopper (>= 8.9)"
        ]
    return []


def check_disk(stage: str, free_gb: float, min_free_gb: dict[str, float]) -> list[str]:
    need = min_free_gb.get(stage, 0.0)
    if free_gb < need:
        return [f"{stage} needs about {need:.0f} GB free in work_dir; {free_gb:.1f} GB are free"]
    return []


def check_tensorrt_llm_version(installed: str | None, runtime: str) -> list[str]:
    """An engine runs only under the TensorRT-LLM version that built it."""
    if installed is None:
        return [f"tensorrt_llm is not installed; install {runtime}, the runtime's version"]
    if installed != runtime:
        return [
            f"installed tensorrt_llm {installed} differs from the runtime's {runtime} "
            "(checks.tensorrt_llm_version, offline_wheels/requirements-kaggle.txt): an engine "
            "built here would not load on Kaggle"
        ]
    return []


def check_lengths(
    max_input_len: int, max_seq_len: int, max_prompt_tokens: int, tir_budget_tokens: int
) -> list[str]:
    """Every TIR round re-sends prompt + everything generated so far as the input."""
    need = max_prompt_tokens + tir_budget_tokens
    problems = []
    if max_input_len < need:
        problems.append(
            f"engine.max_input_len {max_input_len} < prompt {max_prompt_tokens} + TIR budget "
            f"{tir_budget_tokens} = {need}: late TIR rounds would be rejected"
        )
    if max_seq_len < need:
        problems.append(f"engine.max_seq_len {max_seq_len} < prompt + TIR budget = {need}")
    if max_input_len > max_seq_len:
        problems.append(f"engine.max_input_len {max_input_len} > max_seq_len {max_seq_len}")
    return problems


def check_drafter_dtype(
    drafter_dtype: str, base_checkpoint_dtype: str | None, trained_dtype: str | None
) -> list[str]:
    problems = []
    if base_checkpoint_dtype is not None and drafter_dtype != base_checkpoint_dtype:
        problems.append(
            f"drafter.dtype {drafter_dtype} differs from the base checkpoint's dtype "
            f"{base_checkpoint_dtype}: set drafter.dtype = '{base_checkpoint_dtype}'"
        )
    trained = _DTYPE_NAMES.get(trained_dtype or "", trained_dtype)
    if trained is not None and trained != drafter_dtype:
        problems.append(
            f"the drafter was trained in {trained} but drafter.dtype is {drafter_dtype}"
        )
    return problems


def check_draft_length(
    predict_n_tokens: int,
    draft_len_per_beam: int,
    num_layers: int,
    trained_config: dict[str, Any] | None,
) -> list[str]:
    problems = []
    if predict_n_tokens != draft_len_per_beam:
        problems.append(
            f"drafter.predict_n_tokens {predict_n_tokens} (training) != "
            f"drafter.draft_len_per_beam {draft_len_per_beam} (conversion)"
        )
    layers = (trained_config or {}).get("num_draft_layers")
    if layers is not None and layers != num_layers:
        problems.append(f"trained drafter has {layers} layers; drafter.num_layers is {num_layers}")
    return problems


def check_draft_checkpoint(
    checkpoint_config: dict[str, Any] | None, greedy: bool, draft_len_per_beam: int
) -> list[str]:
    """The converted checkpoint fixes the drafter's decoding: it must be what we asked for."""
    if checkpoint_config is None:
        return ["no config.json in the drafter checkpoint: run the drafter stage first"]
    problems = []
    recorded_greedy = checkpoint_config.get("redrafter_greedy_search")
    if recorded_greedy is not None and recorded_greedy != greedy:
        problems.append(
            f"drafter checkpoint has redrafter_greedy_search={recorded_greedy}, config says "
            f"greedy={greedy}: rerun the drafter stage (--force)"
        )
    length = checkpoint_config.get("redrafter_draft_len_per_beam")
    if length is not None and length != draft_len_per_beam:
        problems.append(f"drafter checkpoint draft length {length} != {draft_len_per_beam}")
    return problems


def check_tensor_parallel(quantize_gpus: int, drafter_tp: int) -> list[str]:
    """The drafter conversion splits the quantized checkpoint as it was split: one tp size.

    The engine runs on as many GPUs as that size (AIMO-2's 4x L4: 4; docs/kaggle.md).
    """
    if quantize_gpus == drafter_tp:
        return []
    return [
        f"quantize.num_gpus ({quantize_gpus}) and drafter.tp_size ({drafter_tp}) differ: the "
        "quantized checkpoint is split over num_gpus ranks and the drafter conversion must "
        "use the same tp_size (4 for AIMO-2's four L4s, 1 for AIMO-3's H100)"
    ]


def check_dataset_owner(dataset_id: str) -> list[str]:
    """The engine dataset must be owned by a real Kaggle user, not the placeholder."""
    from submission.config import PLACEHOLDER_OWNER

    if dataset_id.split("/")[0] != PLACEHOLDER_OWNER:
        return []
    return [
        f"package: the engine dataset {dataset_id!r} names the placeholder owner: set yours "
        "once (python -m submission kaggle-metadata --write --id USER/SLUG)"
    ]


def check_paths(required: dict[str, Path]) -> list[str]:
    return [f"{what} not found: {path}" for what, path in required.items() if not path.exists()]


def check_tools(tools: list[str]) -> list[str]:
    return [f"`{tool}` is not on PATH" for tool in tools if shutil.which(tool) is None]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_stage(stage: str, config: PipelineConfig, facts: Facts, resolved: Resolved) -> list[str]:
    """All problems that would make `stage` fail, found before it starts."""
    qformat = resolved.qformat
    problems = check_disk(stage, facts.free_gb, config.checks.min_free_gb)
    model_dir = config.path(config.fetch.model_dir)
    checkpoint_dir = config.path(config.quantize.checkpoint_dir)
    examples = config.path(config.quantize.trtllm_examples_dir)
    if stage in ("quantize", "drafter", "engine"):
        problems += check_tensorrt_llm_version(
            facts.tensorrt_llm_version, config.checks.tensorrt_llm_version
        )
    if stage == "quantize":
        problems += check_fp8_gpu(qformat == "fp8", facts.gpu_name, facts.compute_capability)
        required = {"model config": model_dir / "config.json"}
        if qformat == "fp8":
            calib = config.path(config.calibration.output_dir) / "data.parquet"
            required["calibration data"] = calib
        if resolved.tool == "ns":
            problems += check_tools(["ns"])
        else:
            required["TensorRT-LLM quantize example"] = examples / "quantization" / "quantize.py"
        problems += check_paths(required)
    elif stage == "drafter":
        base = read_json(checkpoint_dir / "config.json")
        if base is None:
            problems.append(f"no base checkpoint config at {checkpoint_dir}: run quantize first")
        trained_dir = resolved.drafter_train_dir
        trained = read_json(trained_dir / "config.json")
        trained_dtype = "bf16" if config.drafter.bf16 else None
        if trained is not None and "torch_dtype" in trained:
            trained_dtype = str(trained["torch_dtype"])
        problems += check_drafter_dtype(
            config.drafter.dtype, (base or {}).get("dtype"), trained_dtype
        )
        problems += check_draft_length(
            config.drafter.predict_n_tokens,
            config.drafter.draft_len_per_beam,
            config.drafter.num_layers,
            trained,
        )
        problems += check_tensor_parallel(config.quantize.num_gpus, config.drafter.tp_size)
        problems += check_paths(
            {"ReDrafter convert script": examples / "redrafter" / "convert_checkpoint.py"}
        )
        if not trained_dir.exists():
            problems += check_tools(["torchrun"])
            if not facts.nemo_skills_installed:
                problems.append("nemo_skills is not installed (ReDrafter training needs it)")
    elif stage == "engine":
        e = config.engine
        uses_fp8 = resolved.gemm_plugin == "fp8"
        problems += check_fp8_gpu(uses_fp8, facts.gpu_name, facts.compute_capability)
        problems += check_lengths(
            e.max_input_len,
            e.max_seq_len,
            config.checks.max_prompt_tokens,
            config.checks.tir_budget_tokens,
        )
        problems += check_draft_checkpoint(
            read_json(config.path(config.drafter.checkpoint_dir) / "config.json"),
            config.drafter.greedy,
            config.drafter.draft_len_per_beam,
        )
        problems += check_tools(["trtllm-build"])
    elif stage == "package":
        problems += check_dataset_owner(config.package.dataset_id)
        problems += check_paths(
            {
                "engine config": config.path(config.engine.output_dir) / "config.json",
                "tokenizer source": model_dir,
            }
        )
    return problems
