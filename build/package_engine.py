"""Package a built engine as a Kaggle dataset folder: engine + tokenizer + manifest.json.

The manifest (submission.manifest) records what the engine's own config.json
says was built (TensorRT-LLM version, dtype, quantization, limits, drafter
greedy flag and draft length), every build command line, and the sha256 of
every file; the `trtllm` engine checks it at load. `dataset-metadata.json`
makes the folder uploadable with `kaggle datasets create -p OUTPUT_DIR`.

    python build/package_engine.py --engine-dir ENGINE --tokenizer-dir HF_MODEL \
        --output-dir DATASET --dataset-id user/slug --title "..." --build-args '{}'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run by path from a checkout: find the harness package
    sys.path.insert(0, str(REPO_ROOT))

from submission.manifest import (  # noqa: E402
    MANIFEST_NAME,
    EngineManifest,
    hash_folder,
    write_manifest,
)

LOG = logging.getLogger("build.package")
DATASET_METADATA = "dataset-metadata.json"
# Kaggle dataset slugs: 3-50 of [a-z0-9-]; titles: 6-50 characters.
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$")
# tensorrt_llm.models.modeling_utils.SpeculativeDecodingMode (IntFlag, auto() from 1).
_SPECULATIVE_MODES = {
    1: "none",
    2: "draft_tokens_external",
    4: "medusa",
    8: "lookahead_decoding",
    16: "explicit_draft_tokens",
    32: "eagle",
}
# QuantConfig.quant_algo names -> the quantize example's --qformat names.
_QUANT_NAMES = {"FP8": "fp8", "W8A16": "int8_wo", "W4A16": "int4_wo"}


class PackageError(ValueError):
    """An engine folder or dataset setting that cannot be packaged, with the reason."""


def manifest_fields(engine_config: dict[str, Any]) -> dict[str, Any]:
    """The manifest's facts, read from a TensorRT-LLM engine's config.json."""
    try:
        pretrained = engine_config["pretrained_config"]
        build = engine_config["build_config"]
        fields = {
            "tensorrt_llm_version": str(engine_config["version"]),
            "dtype": str(pretrained["dtype"]),
            "max_seq_len": int(build["max_seq_len"]),
            "max_input_len": int(build["max_input_len"]),
            "max_batch_size": int(build["max_batch_size"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(
            f"engine config.json lacks {exc} (is this a TensorRT-LLM engine?)"
        ) from None
    quant_algo = (pretrained.get("quantization") or {}).get("quant_algo")
    fields["quantization"] = (
        _QUANT_NAMES.get(quant_algo, str(quant_algo).lower()) if quant_algo else "none"
    )
    mode = build.get("speculative_decoding_mode")
    if isinstance(mode, int):
        mode = _SPECULATIVE_MODES.get(mode, str(mode))
    has_drafter = "redrafter_draft_len_per_beam" in pretrained
    if mode is None:
        mode = "explicit_draft_tokens" if has_drafter else "none"
    fields["speculative_decoding_mode"] = str(mode).lower()
    # convert_checkpoint.py defaults redrafter_greedy_search to True.
    fields["greedy_drafter"] = (
        bool(pretrained.get("redrafter_greedy_search", True)) if has_drafter else False
    )
    fields["draft_len_per_beam"] = int(pretrained.get("redrafter_draft_len_per_beam", 0))
    # trtllm-build already added max_draft_len to max_seq_len (tensorrt_llm/builder.py).
    fields["max_draft_len"] = int(build.get("max_draft_len", 0) or 0)
    # One rank per GPU (convert_checkpoint.py --tp_size); the runtime reads the same mapping.
    fields["tp_size"] = int((pretrained.get("mapping") or {}).get("tp_size") or 1)
    # KV block reuse needs --use_paged_context_fmha enable (docs/source/kv_cache_reuse.md).
    paged = (build.get("plugin_config") or {}).get("use_paged_context_fmha")
    fields["paged_context_fmha"] = "" if paged is None else ("enable" if paged else "disable")
    fields["python_version"] = "{}.{}".format(*sys.version_info[:2])
    return fields


def dataset_metadata(dataset_id: str, title: str, license_name: str) -> dict[str, Any]:
    owner, _, slug = dataset_id.partition("/")
    if not owner or not _SLUG.match(slug):
        raise PackageError(
            f"dataset id {dataset_id!r} must be OWNER/SLUG, the slug 3-50 characters of a-z 0-9 -"
        )
    if not 6 <= len(title) <= 50:
        raise PackageError(
            f"Kaggle dataset titles have 6-50 characters; {title!r} has {len(title)}"
        )
    return {"title": title, "id": dataset_id, "licenses": [{"name": license_name}]}


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard links keep a 15 GB engine from being copied when both sit on one filesystem."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def package_engine(
    engine_dir: Path,
    tokenizer_dir: Path,
    output_dir: Path,
    dataset_id: str,
    title: str,
    license_name: str = "CC-BY-4.0",
    build_args: dict[str, object] | None = None,
    tokenizer_globs: tuple[str, ...] = ("*tok*", "vocab.json", "merges.txt"),
) -> EngineManifest:
    config_path = engine_dir / "config.json"
    try:
        engine_config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"no engine at {engine_dir}: {config_path} is missing") from None
    except json.JSONDecodeError as exc:
        raise PackageError(f"{config_path} is not valid JSON: {exc}") from None
    fields = manifest_fields(engine_config)
    metadata = dataset_metadata(dataset_id, title, license_name)
    tokenizer_files = sorted(
        {p for pattern in tokenizer_globs for p in tokenizer_dir.glob(pattern) if p.is_file()}
    )
    if not any(p.name == "tokenizer_config.json" for p in tokenizer_files):
        raise PackageError(
            f"no tokenizer_config.json in {tokenizer_dir} matching {tokenizer_globs}"
        )
    if (
        output_dir.exists()
        and any(output_dir.iterdir())
        and not (output_dir / MANIFEST_NAME).exists()
    ):
        raise PackageError(
            f"{output_dir} exists and is not an engine package: refusing to replace it"
        )

    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for source in sorted(engine_dir.rglob("*")):
        if source.is_file():
            _link_or_copy(source, partial / source.relative_to(engine_dir))
    for source in tokenizer_files:
        target = partial / source.name
        if target.exists():
            raise PackageError(f"tokenizer file {source.name} would overwrite an engine file")
        shutil.copy2(source, target)
    manifest = EngineManifest(
        **fields, build_args=dict(build_args or {}), files=hash_folder(partial)
    )
    write_manifest(partial, manifest)
    (partial / DATASET_METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(output_dir, ignore_errors=True)
    partial.replace(output_dir)
    LOG.info(
        "packaged %d files (%s, %s, greedy drafter: %s) into %s",
        len(manifest.files),
        manifest.tensorrt_llm_version,
        manifest.quantization,
        manifest.greedy_drafter,
        output_dir,
    )
    if manifest.greedy_drafter:
        LOG.warning("the drafter decodes greedily: K parallel attempts will be identical")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python build/package_engine.py", description=__doc__)
    parser.add_argument("--engine-dir", required=True, type=Path)
    parser.add_argument("--tokenizer-dir", required=True, type=Path)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--dataset-id", required=True, help="OWNER/SLUG on Kaggle")
    parser.add_argument("--title", required=True)
    parser.add_argument("--license", default="CC-BY-4.0")
    parser.add_argument("--build-args", default="{}", help="JSON object recorded in the manifest")
    parser.add_argument("--tokenizer-glob", action="append", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build_args = json.loads(args.build_args)
        if not isinstance(build_args, dict):
            raise PackageError("--build-args must be a JSON object")
        package_engine(
            args.engine_dir,
            args.tokenizer_dir,
            args.output_dir,
            args.dataset_id,
            args.title,
            args.license,
            build_args,
            tuple(args.tokenizer_glob or ("*tok*", "vocab.json", "merges.txt")),
        )
    except (PackageError, json.JSONDecodeError) as exc:
        LOG.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
