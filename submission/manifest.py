"""The engine manifest: what built an engine folder, and the sha256 of every file in it.

`build/pipeline.py`'s package stage writes `manifest.json` next to the engine;
the `trtllm` engine reads it at load to refuse an engine built by another
TensorRT-LLM version, a greedy drafter, or a folder whose files changed.
Pure stdlib: it runs on Kaggle before anything else is importable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_NAME = "manifest.json"
_HASH_CHUNK_BYTES = 8 * 1024 * 1024


class ManifestError(ValueError):
    """A manifest that is missing or does not fit the schema."""


@dataclass
class EngineManifest:
    """How an engine was built; `files` maps each relative path (POSIX) to its sha256."""

    tensorrt_llm_version: str
    # True when the ReDrafter head decodes greedily (sampling ignored: K attempts identical).
    greedy_drafter: bool
    max_seq_len: int
    max_input_len: int
    max_batch_size: int
    dtype: str  # activation dtype of the checkpoint, e.g. "bfloat16"
    quantization: str  # "fp8", "int8_wo" or "none"
    speculative_decoding_mode: str  # e.g. "explicit_draft_tokens", or "none"
    draft_len_per_beam: int  # 0 without a drafter
    # trtllm-build adds this to the --max_seq_len it was given: `max_seq_len` above is the
    # engine's (e.g. 32,003 for 32,000 and ReDrafter's 3), the room for tokens is the difference.
    max_draft_len: int = 0
    # GPUs the engine is split over (0 = not recorded: read config.json's mapping).
    tp_size: int = 0
    # "enable" / "disable": built with --use_paged_context_fmha, which KV block reuse needs
    # ("" = not recorded: read config.json's plugin_config).
    paged_context_fmha: str = ""
    # CPython (major.minor) of the interpreter that built the engine; the Kaggle side must run
    # engine.trtllm.python_version, which the doctor compares with this.
    python_version: str = ""
    build_args: dict[str, object] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> EngineManifest:
        """Check every field's type; unknown keys are ignored (newer writers may add some),
        and a field with a default may be missing (older writers lack it)."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if (
                    f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING
                ):
                    continue
                raise ManifestError(f"{where}: missing field {f.name!r}")
            values[f.name] = _checked(data[f.name], hints[f.name], f"{where}: {f.name}")
        for path in values["files"]:
            if not _is_relative_inside(path):
                raise ManifestError(f"{where}: files: {path!r} is not a relative path inside")
        return cls(**values)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def hash_folder(engine_dir: str | Path) -> dict[str, str]:
    """sha256 of every regular file under `engine_dir` except the manifest, by POSIX path."""
    root = Path(engine_dir)
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).as_posix() != MANIFEST_NAME
    }


def write_manifest(engine_dir: str | Path, manifest: EngineManifest) -> Path:
    """Write `engine_dir/manifest.json` atomically (a half-written manifest never exists)."""
    target = Path(engine_dir) / MANIFEST_NAME
    partial = target.with_name(MANIFEST_NAME + ".partial")
    partial.write_text(manifest.to_json(), encoding="utf-8")
    partial.replace(target)
    return target


def read_manifest(engine_dir: str | Path) -> EngineManifest:
    path = Path(engine_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"no {MANIFEST_NAME} in {engine_dir}: package the engine with "
            "`python build/pipeline.py --stage package`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    return EngineManifest.from_dict(data, where=str(path))


def verify_files(
    engine_dir: str | Path, manifest: EngineManifest, check_hashes: bool = True
) -> list[str]:
    """Problems with the files the manifest lists (empty when all match).

    `check_hashes=False` checks presence only: hashing a 15 GB engine takes
    about half a minute, which a caller may not want to spend at every start.
    """
    root = Path(engine_dir)
    problems: list[str] = []
    if not root.is_dir():
        return [f"engine folder {root} does not exist"]
    for relative, expected in sorted(manifest.files.items()):
        path = root / relative
        if not path.is_file():
            problems.append(f"missing file: {relative}")
        elif check_hashes and (actual := sha256_file(path)) != expected:
            problems.append(
                f"sha256 mismatch: {relative} (manifest {expected[:12]}..., file {actual[:12]}...)"
            )
    return problems


def _is_relative_inside(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts


def _checked(value: Any, hint: Any, where: str) -> Any:
    """`value` when it has the type `hint` names (dict[str, X] checked key by key)."""
    origin = typing.get_origin(hint)
    if origin is dict:
        _, item_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ManifestError(f"{where} must be an object, not {value!r}")
        if item_hint is object:
            return dict(value)
        return {str(k): _checked(v, item_hint, f"{where}[{k!r}]") for k, v in value.items()}
    # bool is an int in Python: keep the two apart both ways.
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ManifestError(f"{where} must be an integer, not {value!r}")
    if hint in (bool, str) and not isinstance(value, hint):
        raise ManifestError(f"{where} must be {hint.__name__}, not {value!r}")
    return value
