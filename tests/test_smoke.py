"""`python -m submission smoke` end to end against the TensorRT-LLM contract fake.

The fake engine folder is a sampling ReDrafter engine (several tokens per step,
knobs it ignores); the "model" writes a real ToRA transcript with OpenMath's
code tags, so the TIR row stops at </tool_call> and runs the recorded code in
the real sandbox.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from submission.__main__ import main
from submission.standin import build_qwen_tokenizer
from tests.fakes import tensorrt_llm as fake_trt
from tests.helpers import cached
from tests.test_engine_trtllm import as_openmath, make_engine_dir, tora_generation

pytest.importorskip("transformers")

REDRAFTER = {
    "architecture": "ReDrafterForQWenLM",
    "redrafter_num_beams": 5,
    "redrafter_draft_len_per_beam": 3,
    "redrafter_greedy_search": False,
}


def own_uids() -> list[str]:
    """Session uids no other test process on this machine uses (sessions kill(-1) their uid)."""
    return ["--set", f"sandbox.first_session_uid={100_000 + (os.getpid() % 5000) * 20}"]


@pytest.fixture(scope="module")
def tokenizer_dir(request: pytest.FixtureRequest) -> Path:
    return cached(request, "qwen25-tokenizer", build_qwen_tokenizer)


def test_smoke_passes_every_row_on_the_fake(tmp_path, tokenizer_dir, monkeypatch, capsys):
    generation = as_openmath(tora_generation(0))
    closing = generation.partition("</tool_call>\n```output\n")[2].partition("```\n")[2]

    def respond(prompt: str) -> str:  # the model's next round, given what it has seen
        return closing if "```output" in prompt else generation

    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, pretrained=REDRAFTER)
    fake_trt.install(monkeypatch, engine_dir, respond)
    code = main(
        [
            "smoke",
            "--engine-dir",
            str(engine_dir),
            "--problems",
            "2",
            "--max-tokens",
            "64",
            "--json",
        ]
    )
    rows = {row["check"]: row for row in json.loads(capsys.readouterr().out)}

    assert code == 0, json.dumps(rows, indent=1)
    assert {r["verdict"] for r in rows.values()} == {"pass"}
    assert set(rows) == {
        "engine start",
        "tokens/s (1/8/16 streams)",
        "draft acceptance",
        "stop at </tool_call>",
        "greedy self-stop",
        "stop token id",
        "prefix cache",
        "cancel latency",
        "effective sampling",
        "sandbox after CUDA",
    }
    assert rows["stop at </tool_call>"]["detail"].startswith("2 code calls in 2 attempts (2 ok)")
    per_step = float(rows["draft acceptance"]["detail"].split()[0])
    assert 1.0 < per_step <= 4.0  # the fake accepts 4, 1, 3, 2 tokens per step
    assert "ignored top_p=0.95" in rows["effective sampling"]["detail"]
    assert int(rows["prefix cache"]["detail"].split()[0]) > 0


def test_smoke_fails_the_rows_a_broken_engine_breaks(tmp_path, tokenizer_dir, monkeypatch, capsys):
    """A greedy drafter fails the sampling row; a model that never writes code, the TIR row."""
    greedy = {**REDRAFTER, "redrafter_greedy_search": True}
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, pretrained=greedy)
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: "The answer is \\boxed{7}.")
    code = main(
        ["smoke", "--engine-dir", str(engine_dir), "--problems", "1", "--json", *own_uids()]
    )
    rows = {row["check"]: row for row in json.loads(capsys.readouterr().out)}

    assert code == 1
    assert rows["effective sampling"]["verdict"] == "fail"
    assert rows["effective sampling"]["detail"].startswith("greedy (greedy drafter)")
    assert rows["stop at </tool_call>"]["verdict"] == "fail"
    assert "no attempt reached </tool_call>" in rows["stop at </tool_call>"]["detail"]
    assert rows["tokens/s (1/8/16 streams)"]["verdict"] == "pass"


def test_smoke_reports_an_engine_that_cannot_start(tmp_path, tokenizer_dir, monkeypatch, capsys):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, pretrained=REDRAFTER)
    (engine_dir / "config.json").write_text("{not json")
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    code = main(["smoke", "--engine-dir", str(engine_dir), "--json", *own_uids()])
    (row,) = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (row["check"], row["verdict"]) == ("engine start", "fail")


# --- without a GPU (issue 21 item 5) -----------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["smoke"],  # before: a traceback
        ["smoke", "--engine-dir", "/no/such/engine"],
        ["smoke", "--engine", "hf"],
        ["smoke", "--engine", "hf", "--engine-dir", "/no/such/model"],  # before: exit 1, late
    ],
)
def test_no_engine_to_load_is_a_clear_message_with_what_to_do(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "python -m submission standin-model --out MODEL" in err
    assert "smoke --engine hf --engine-dir MODEL" in err


@pytest.mark.slow
def test_the_standin_model_smokes_on_cpu_with_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented path without a GPU: make the stand-in, smoke it, CPU-sized, each row
    shown as it finishes (before: over 10 minutes on CPU, nothing printed until the end)."""
    model = tmp_path / "model"
    assert main(["standin-model", "--out", str(model)]) == 0
    printed = capsys.readouterr()
    assert f"smoke --engine hf --engine-dir {model}" in printed.out
    argv = ["smoke", "--engine", "hf", "--engine-dir", str(model), "--json"]
    code = main([*argv, "--set", "engine.hf.device=cpu", *own_uids()])
    printed = capsys.readouterr()
    rows = {row["check"]: row for row in json.loads(printed.out)}
    assert "CPU-sized" in printed.err
    assert printed.err.count("] ") >= len(rows)  # one progress line per row, as it came
    assert "tokens/s (1/2/4 streams)" in rows
    failed = {name for name, row in rows.items() if row["verdict"] == "fail"}
    assert failed == {"stop at </tool_call>"}  # random weights write no code (docs/engines.md)
    assert code == 1
