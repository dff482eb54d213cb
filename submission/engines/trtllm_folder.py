"""What a TensorRT-LLM engine folder and this interpreter can run, read without TensorRT-LLM.

An engine folder's facts come from its `manifest.json` (submission/manifest.py)
or else its `config.json`; `check_fit` refuses an engine that cannot serve the
configured token budget or was built by another TensorRT-LLM; `wheel_python_problem`
says why this interpreter cannot install the engine's TensorRT-LLM wheel. Pure
stdlib, so the doctor and the kernel's preflight use it before anything heavy
is importable. Sources of every TensorRT-LLM fact: docs/engines.md.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submission.engines.base import EngineError
from submission.manifest import ManifestError, read_manifest, verify_files

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# CPython versions NVIDIA publishes TensorRT-LLM wheels for: 3.10 and 3.12 since 0.16.0
# (release notes: "Added support for Python 3.10 and 3.12 to TensorRT-LLM Python wheels");
# no cp311 wheel in any release read (docs/engines.md).
WHEEL_PYTHONS_SINCE_0_16 = ("3.10", "3.12")
WHEEL_PYTHONS_BEFORE_0_16 = ("3.10",)


@dataclass(frozen=True)
class EngineFacts:
    """What an engine folder says about itself (from manifest.json, else config.json)."""

    built_version: str
    # The engine's max_seq_len as built: trtllm-build adds max_draft_len to the
    # --max_seq_len asked for (builder.py), so generation room is max_seq_len - max_draft_len.
    max_seq_len: int
    max_input_len: int
    max_batch_size: int
    greedy_drafter: bool
    source: str  # the file the facts came from
    speculative_decoding_mode: str = "none"  # "explicit_draft_tokens" for ReDrafter
    max_draft_len: int = 0
    # ReDrafter's tokens per beam: a step accepts at most this + 1 tokens (one beam's drafts
    # and the base model's own next token; redrafter_helper.py), whatever the beam count.
    draft_len_per_beam: int = 0
    # GPUs the engine is split over (--tp_size at conversion; config.json's mapping): the
    # LLM API runs one MPI rank per GPU for tp > 1.
    tp_size: int = 1
    # Built with --use_paged_context_fmha enable, which KV block reuse needs
    # (docs/source/kv_cache_reuse.md); None = the folder does not say.
    paged_context_fmha: bool | None = None
    dtype: str = ""  # the activations' (pretrained_config.dtype), e.g. "bfloat16"

    @property
    def has_drafter(self) -> bool:
        return self.speculative_decoding_mode not in ("", "none")

    @property
    def sequence_room(self) -> int:
        """Prompt + generated tokens a request may hold (the --max_seq_len the build was given)."""
        return self.max_seq_len - self.max_draft_len


def inspect_engine_dir(engine_dir: Path, tokenizer_dir: Path, verify_hashes: bool) -> EngineFacts:
    """Read an engine folder's facts, refusing (EngineError) a folder that cannot load."""
    config_path = engine_dir / "config.json"
    if not engine_dir.is_dir():
        raise EngineError(f"trtllm: engine folder {engine_dir} does not exist")
    if not config_path.is_file():
        raise EngineError(f"trtllm: {config_path} is missing: not a trtllm-build engine folder")
    if not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        raise EngineError(
            f"trtllm: no tokenizer in {tokenizer_dir} (expected one of {TOKENIZER_FILES}); "
            "set engine.trtllm.tokenizer_dir"
        )
    try:
        engine_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"trtllm: cannot read {config_path}: {exc}") from None
    from_config = facts_from_config(engine_config, str(config_path))
    try:
        manifest = read_manifest(engine_dir)
    except ManifestError as exc:
        log.warning("trtllm: %s; using config.json alone", exc)
        return from_config
    problems = verify_files(engine_dir, manifest, check_hashes=verify_hashes)
    if problems:
        raise EngineError(f"trtllm: engine folder does not match its manifest: {problems[:5]}")
    return EngineFacts(
        built_version=manifest.tensorrt_llm_version,
        max_seq_len=manifest.max_seq_len,
        max_input_len=manifest.max_input_len,
        max_batch_size=manifest.max_batch_size,
        greedy_drafter=manifest.greedy_drafter,
        source=str(engine_dir / "manifest.json"),
        speculative_decoding_mode=manifest.speculative_decoding_mode,
        # Manifests written before these were recorded: config.json still says them.
        max_draft_len=manifest.max_draft_len or from_config.max_draft_len,
        draft_len_per_beam=manifest.draft_len_per_beam or from_config.draft_len_per_beam,
        tp_size=manifest.tp_size or from_config.tp_size,
        paged_context_fmha=(
            manifest.paged_context_fmha == "enable"
            if manifest.paged_context_fmha
            else from_config.paged_context_fmha
        ),
        dtype=manifest.dtype or from_config.dtype,
    )


def facts_from_config(engine_config: dict[str, Any], source: str) -> EngineFacts:
    build = engine_config.get("build_config") or {}
    pretrained = engine_config.get("pretrained_config") or {}
    version = engine_config.get("version")
    max_seq_len = build.get("max_seq_len")
    if not isinstance(version, str) or not isinstance(max_seq_len, int):
        raise EngineError(f"trtllm: {source} lacks 'version' or 'build_config.max_seq_len'")
    is_redrafter = str(pretrained.get("architecture", "")).startswith("ReDrafter") or (
        "redrafter_num_beams" in pretrained
    )
    # The ReDrafter convert script's default is greedy (--redrafter_no_greedy_search turns it off).
    greedy = is_redrafter and bool(pretrained.get("redrafter_greedy_search", True))
    return EngineFacts(
        built_version=version,
        max_seq_len=max_seq_len,
        max_input_len=int(build.get("max_input_len", max_seq_len)),
        max_batch_size=int(build.get("max_batch_size", 0)),
        greedy_drafter=greedy,
        source=source,
        speculative_decoding_mode="explicit_draft_tokens" if is_redrafter else "none",
        max_draft_len=int(build.get("max_draft_len", 0) or 0),
        draft_len_per_beam=int(pretrained.get("redrafter_draft_len_per_beam", 0) or 0),
        tp_size=tp_size_of(pretrained),
        paged_context_fmha=paged_context_fmha_of(build),
        dtype=str(pretrained.get("dtype", "")),
    )


def tp_size_of(pretrained: dict[str, Any]) -> int:
    """config.json's pretrained_config.mapping.tp_size (1 when absent)."""
    mapping = pretrained.get("mapping") or {}
    return int(mapping.get("tp_size") or 1)


def paged_context_fmha_of(build: dict[str, Any]) -> bool | None:
    """build_config.plugin_config.use_paged_context_fmha, or None when not recorded."""
    value = (build.get("plugin_config") or {}).get("use_paged_context_fmha")
    return None if value is None else bool(value)


def check_fit(facts: EngineFacts, installed_version: str, max_tokens: int, allowance: int) -> None:
    """Refuse an engine built by another TensorRT-LLM, or too short for the token budget."""
    if facts.built_version != installed_version:
        raise EngineError(
            f"trtllm: engine built by TensorRT-LLM {facts.built_version} ({facts.source}) but "
            f"{installed_version} is installed: rebuild it, or install the matching wheel"
        )
    if facts.sequence_room < max_tokens + allowance:
        drafted = f" (max_seq_len {facts.max_seq_len} - draft {facts.max_draft_len})"
        raise EngineError(
            f"trtllm: engine max_seq_len {facts.sequence_room}"
            f"{drafted if facts.max_draft_len else ''} < generation.max_tokens {max_tokens}"
            f" + engine.trtllm.prompt_allowance_tokens {allowance}: rebuild with a longer "
            "--max_seq_len or lower generation.max_tokens"
        )


def release(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT-LLM version string such as 0.17.0.post1 or 1.0.0rc4."""
    parts = [*version.split("."), "0"][:2]
    major, minor = (int("".join(itertools.takewhile(str.isdigit, p)) or 0) for p in parts)
    return major, minor


def wheel_pythons(tensorrt_llm_version: str) -> tuple[str, ...]:
    """The CPython versions (major.minor) TensorRT-LLM publishes wheels of `version` for
    (an unknown version, "", counts as a current one)."""
    if not tensorrt_llm_version or release(tensorrt_llm_version) >= (0, 16):
        return WHEEL_PYTHONS_SINCE_0_16
    return WHEEL_PYTHONS_BEFORE_0_16


def wheel_python_problem(python: str, wanted: str, tensorrt_llm_version: str) -> str | None:
    """Why interpreter `python` (major.minor) cannot run TensorRT-LLM, or None.

    `wanted` is `engine.trtllm.python_version`, the interpreter the offline wheelhouse
    was downloaded for: pip refuses every binary wheel of another CPython.
    """
    pythons = wheel_pythons(tensorrt_llm_version)
    if wanted not in pythons:
        return (
            f"engine.trtllm.python_version is {wanted}, but TensorRT-LLM "
            f"{tensorrt_llm_version or '>= 0.16'} has wheels for CPython {'/'.join(pythons)} only"
        )
    if python != wanted:
        return (
            f"this interpreter is CPython {python}, the wheelhouse is for {wanted} "
            f"(engine.trtllm.python_version; TensorRT-LLM {tensorrt_llm_version or '>= 0.16'} "
            "has wheels for "
            f"{'/'.join(pythons)}): pin a Kaggle image whose Python is {wanted}"
        )
    return None
