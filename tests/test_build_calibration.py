"""build/calibration.py for real, on a tiny OpenMathReasoning-format file from ToRA transcripts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest

BUILD_DIR = Path(__file__).resolve().parents[1] / "build"
sys.path.insert(0, str(BUILD_DIR))

import calibration  # noqa: E402
import pipeline  # noqa: E402

from submission.config import PACKAGE_DATA, PromptConfig  # noqa: E402
from submission.families.text import PromptTemplate  # noqa: E402

FACTS = pipeline.Facts("NVIDIA H100 80GB HBM3", (9, 0), "1.0.0", True, 500.0)


@pytest.fixture
def tir_parquet(tmp_path: Path) -> tuple[Path, list[dict[str, str | None]]]:
    """A tir shard in OpenMathReasoning's columns: problem and solution from ToRA; one null row."""
    records = []
    with (PACKAGE_DATA / "tora70b_gsm8k_first250.jsonl").open(encoding="utf-8") as handle:
        for line, _ in zip(handle, range(12), strict=False):
            item = json.loads(line)
            records.append(
                {
                    "expected_answer": str(item["gt"]),
                    "problem_type": "has_answer_extracted",
                    "problem_source": "gsm8k",
                    "generation_model": "tora-70b",
                    "problem": item["question"],
                    "generated_solution": item["code"][0],
                    "inference_mode": "tir",
                }
            )
    records[2]["generated_solution"] = None  # rows without a solution are not calibration text
    folder = tmp_path / "OpenMathReasoning" / "data"
    folder.mkdir(parents=True)
    pl.DataFrame(records).write_parquet(folder / "tir-00000-of-00002.parquet")
    return folder / "tir-00000-of-00002.parquet", records


def test_renders_prompt_plus_continued_generation(tir_parquet, tmp_path: Path) -> None:
    path, records = tir_parquet
    template = PromptTemplate.from_config(PromptConfig())
    output = tmp_path / "calib" / "data.parquet"
    calibration.build_calibration(str(path.parent), 5, output, template)
    written = pl.read_parquet(output)
    assert written.columns == ["text"]
    kept = [r for r in records if r["generated_solution"] is not None][:5]
    assert written["text"].to_list() == [
        template.render(r["problem"]) + r["generated_solution"] for r in kept
    ]
    first = written["text"][0]
    assert first.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nSolve the following")
    # The recorded generation continues the assistant turn, unterminated.
    assert "<|im_start|>assistant\n```python" in first
    assert not first.endswith("<|im_end|>")


def test_fewer_rows_than_asked_and_bad_columns(tir_parquet, tmp_path: Path) -> None:
    path, _ = tir_parquet
    template = PromptTemplate.from_config(PromptConfig(template="raw"))
    frame = calibration.build_calibration(str(path), 100, tmp_path / "c.parquet", template)
    assert frame.height == 11
    assert frame["text"][0].startswith("Solve the following math problem.")
    with pytest.raises(calibration.CalibrationError, match=r"no column\(s\) \['generation'\]"):
        calibration.build_calibration(
            str(path), 5, tmp_path / "d.parquet", template, solution_column="generation"
        )
    with pytest.raises(calibration.CalibrationError, match="cannot read parquet"):
        calibration.build_calibration(
            str(tmp_path / "nope.parquet"), 5, tmp_path / "e.parquet", template
        )
    assert not (tmp_path / "d.parquet").exists()


@pytest.mark.usefixtures("tir_parquet")
def test_calibration_stage_runs_once_then_skips(tmp_path: Path) -> None:
    """The stage through the pipeline: a real subprocess, a stamp, a skip, a rerun on change."""
    harness = tmp_path / "harness.toml"
    harness.write_text('[prompt]\ntemplate = "raw"\n')
    config = pipeline.load_pipeline_config(None, work_dir=str(tmp_path))
    config.python = sys.executable
    config.calibration.rows = 3
    config.calibration.harness_config = str(harness)
    printed: list[str] = []
    pipeline.run_pipeline(config, FACTS, ["calibration"], emit=printed.append)
    output = tmp_path / "calibrate_openmathreasoning" / "data.parquet"
    texts = pl.read_parquet(output)["text"].to_list()
    assert len(texts) == 3
    assert all(t.startswith("Solve the following math problem.") for t in texts)
    pipeline.run_pipeline(config, FACTS, ["calibration"], emit=printed.append)
    assert "up to date, skipped" in printed[-1]
    config.calibration.rows = 4
    pipeline.run_pipeline(config, FACTS, ["calibration"], emit=printed.append)
    assert ": runs" in printed[-1]
    assert pl.read_parquet(output).height == 4
