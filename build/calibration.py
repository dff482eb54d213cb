"""Calibration data: the first N rows of OpenMathReasoning's tir split, as the model sees them.

Each row becomes one text: the problem rendered with the harness's own prompt
template, followed by the recorded solution as if the model had written it
(NeMo-Skills' `continue_prefix_generation`). FP8 scales calibrated on this text
match what the engine will see at inference. Written as parquet with one
column, `text`, in a folder that `ns convert --calib_dataset` and TensorRT-LLM's
quantize example load as a local dataset.

    python build/calibration.py --source 'DATA/tir-*.parquet' --rows 4096 --output OUT/data.parquet
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import polars as pl

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run by path from a checkout: find the harness package
    sys.path.insert(0, str(REPO_ROOT))

from submission.config import load_config  # noqa: E402
from submission.families.registry import create_family  # noqa: E402
from submission.families.text import PromptTemplate, TextFamily  # noqa: E402

LOG = logging.getLogger("build.calibration")


class CalibrationError(ValueError):
    """Calibration input that cannot be used, with the reason."""


def parquet_source(source: str) -> str:
    """A folder means every parquet file in it; files and globs are used as given."""
    path = Path(source)
    return str(path / "*.parquet") if path.is_dir() else source


def read_first_rows(
    source: str, rows: int, problem_column: str, solution_column: str
) -> pl.DataFrame:
    """The first `rows` rows with both columns set (only those two columns are read)."""
    try:
        frame = pl.scan_parquet(parquet_source(source))
        columns = frame.collect_schema().names()
    except (FileNotFoundError, pl.exceptions.ComputeError) as exc:
        raise CalibrationError(f"cannot read parquet from {source}: {exc}") from None
    missing = [c for c in (problem_column, solution_column) if c not in columns]
    if missing:
        raise CalibrationError(f"{source} has no column(s) {missing}; it has {columns}")
    return (
        frame.select(problem_column, solution_column)
        .drop_nulls()
        .head(rows)
        .collect()
        .rename({problem_column: "problem", solution_column: "solution"})
    )


def render(rows: pl.DataFrame, template: PromptTemplate) -> pl.DataFrame:
    """One `text` per row: rendered prompt + the solution continuing the assistant turn."""
    texts = [
        template.render(problem) + solution
        for problem, solution in zip(rows["problem"], rows["solution"], strict=True)
    ]
    return pl.DataFrame({"text": texts}, schema={"text": pl.String})


def build_calibration(
    source: str,
    rows: int,
    output: Path,
    template: PromptTemplate,
    problem_column: str = "problem",
    solution_column: str = "generated_solution",
) -> pl.DataFrame:
    if rows <= 0:
        raise CalibrationError(f"rows must be positive, not {rows}")
    frame = render(read_first_rows(source, rows, problem_column, solution_column), template)
    if frame.height == 0:
        raise CalibrationError(
            f"{source} has no rows with both {problem_column} and {solution_column}"
        )
    if frame.height < rows:
        LOG.warning("only %d of the %d rows asked for are in %s", frame.height, rows, source)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    frame.write_parquet(partial)
    partial.replace(output)
    LOG.info("wrote %d calibration texts to %s", frame.height, output)
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python build/calibration.py", description=__doc__)
    parser.add_argument("--source", required=True, help="parquet file, folder or glob")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--problem-column", default="problem")
    parser.add_argument("--solution-column", default="generated_solution")
    parser.add_argument("--output", required=True, type=Path, help="parquet file to write")
    parser.add_argument("--harness-config", default=None, help="harness TOML ([prompt] section)")
    parser.add_argument("--profile", default="aimo3", help="harness profile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    family = create_family(load_config(args.profile, args.harness_config))
    if not isinstance(family, TextFamily):
        LOG.error("calibration text needs a text model family, not %s", family.name)
        return 1
    template = family.template
    try:
        build_calibration(
            args.source,
            args.rows,
            args.output,
            template,
            args.problem_column,
            args.solution_column,
        )
    except CalibrationError as exc:
        LOG.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
