"""Where openai-harmony finds its vocabulary, and whether the file there is the right one.

openai-harmony (0.0.8) loads `o200k_base.tiktoken` from the folder named by
`$TIKTOKEN_ENCODINGS_BASE` and checks its sha256 then; without the variable it
downloads the file from openaipublic.blob.core.windows.net (openai/harmony
src/tiktoken_ext/public_encodings.rs, `Encoding::load`), which neither this
machine nor Kaggle can reach. So the folder is always named: the config's
`prompt.harmony.vocabulary_dir`, else `$TIKTOKEN_ENCODINGS_BASE` (the kernel
sets it to the wheel dataset's `tiktoken_encodings/`), else the cache folder
`python -m submission vocab` fills. Nothing here imports openai_harmony.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENCODINGS_ENV = "TIKTOKEN_ENCODINGS_BASE"
VOCABULARY_FILE = "o200k_base.tiktoken"
# openai/harmony src/tiktoken_ext/public_encodings.rs, Encoding::expected_hash (O200kHarmony).
VOCABULARY_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# The folder inside the offline wheel dataset (as the public AIMO-3 notebooks named it).
DATASET_FOLDER = "tiktoken_encodings"
# gpt-oss's Hugging Face tokenizer, kept beside the vocabulary (the id-equality tests and the
# GPU smoke model read it).
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def cache_dir() -> Path:
    """Where `python -m submission vocab` puts the files by default."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aimo-submission" / "harmony"


def vocabulary_dir(configured: str = "") -> Path:
    """The folder the harmony family loads from: configured, else the env, else the cache."""
    if configured:
        return Path(configured)
    if env := os.environ.get(ENCODINGS_ENV):
        return Path(env)
    return cache_dir()


def vocabulary_problem(folder: Path) -> str | None:
    """Why `folder` cannot serve openai-harmony (missing file, wrong hash), or None."""
    path = folder / VOCABULARY_FILE
    if not path.is_file():
        return f"no {VOCABULARY_FILE} in {folder} (python -m submission vocab --out {folder})"
    digest = file_sha256(path)
    if digest != VOCABULARY_SHA256:
        return f"{path} has sha256 {digest[:12]}..., not {VOCABULARY_SHA256[:12]}..."
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def use_vocabulary(folder: Path) -> None:
    """Point openai-harmony (and any server started from here) at `folder`."""
    os.environ[ENCODINGS_ENV] = str(folder)
