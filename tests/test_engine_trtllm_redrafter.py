"""The trtllm adapter against what a real first run would hit (issue 15), on the contract fake.

A ReDrafter engine ignores most sampling knobs and samples a greedy request at
the default temperature; it accepts several tokens per step, so a stop word can
end mid-step with tokens after it and no stop_reason; the LLM API puts the
engine in an MPI worker process unless told otherwise; and no TensorRT-LLM
wheel exists for CPython 3.11.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from submission.config import load_config
from submission.engines.base import EngineError, SamplingParams
from submission.engines.trtllm_sampling import NEAR_GREEDY_TEMPERATURE
from submission.manifest import EngineManifest, hash_folder, write_manifest
from submission.standin import build_qwen_tokenizer
from tests.fakes import tensorrt_llm as fake_trt
from tests.helpers import cached
from tests.test_engine_trtllm import (
    PROMPT,
    STOPS,
    as_openmath,
    collect,
    engine_for,
    joined,
    make_engine_dir,
    tora_generation,
)

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer_dir(request: pytest.FixtureRequest) -> Path:
    return cached(request, "qwen25-tokenizer", build_qwen_tokenizer)


SAMPLING_DRAFTER = {
    "architecture": "ReDrafterForQWenLM",
    "redrafter_num_beams": 5,
    "redrafter_draft_len_per_beam": 3,
    "redrafter_greedy_search": False,
}


def redrafter_dir(root: Path, tokenizer: Path, max_seq_len: int = 40_960) -> Path:
    engine_dir = make_engine_dir(
        root, tokenizer, max_seq_len=max_seq_len, pretrained=SAMPLING_DRAFTER
    )
    config = json.loads((engine_dir / "config.json").read_text())
    config["build_config"]["max_draft_len"] = 3
    (engine_dir / "config.json").write_text(json.dumps(config))
    return engine_dir


@pytest.mark.parametrize("api", ["llm", "runner"])
async def test_a_sampling_drafter_gets_an_explicit_temperature(
    tmp_path,
    tokenizer_dir,
    monkeypatch,
    caplog,
    api,
):
    text = tora_generation(2).rsplit("```", 1)[1]
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: text)
    engine = engine_for(engine_dir, **{"engine.trtllm.api": api})
    await engine.start()
    try:
        assert engine.greedy is False  # a sampling drafter: K attempts differ
        greedy = await collect(engine, SamplingParams(max_tokens=400, temperature=0.0, stop=STOPS))
        applied = model.requests[0]["applied"]
        # Not the default temperature (1.0) a request without one gets: near-greedy.
        assert applied["temperature"] == NEAR_GREEDY_TEMPERATURE
        assert joined(greedy) == text

        asked = SamplingParams(
            max_tokens=400, temperature=0.6, top_p=0.95, min_p=0.05, seed=7, stop=STOPS
        )
        with caplog.at_level(logging.WARNING):
            first = await collect(engine, asked)
            await collect(engine, asked)
        assert model.requests[1]["applied"] == {"temperature": 0.6, "seed": 7}
        sent = fake_trt.sampling_params_of(model.requests[1])
        assert (sent["top_p"], sent["min_p"], sent["temperature"]) == (None, None, 0.6)
        warnings = [r.message for r in caplog.records if "ignoring" in r.getMessage()]
        assert len(warnings) == 1  # once, not per request
        assert "top_p=0.95" in caplog.text and "min_p=0.05" in caplog.text
        assert first[0].meta["sampling"] == "temperature=0.6 seed=7; ignored top_p=0.95 min_p=0.05"
    finally:
        await engine.close()


@pytest.mark.parametrize("api", ["llm", "runner"])
async def test_a_stop_mid_step_cuts_the_text_and_its_tokens(
    tmp_path,
    tokenizer_dir,
    monkeypatch,
    api,
):
    text = as_openmath(tora_generation(0))
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: text)
    monkeypatch.setenv(fake_trt.SINGLE_PROCESS_ENV, "1")  # in-process: a separate test
    engine = engine_for(engine_dir, **{"engine.trtllm.api": api})
    await engine.start()
    try:
        upto = text[: text.index("</tool_call>") + len("</tool_call>")]
        kept = len(model.tokenizer.encode(upto, add_special_tokens=False))
        # Steps of `size` tokens, chosen so the stop lands inside a step with tokens after it.
        size = next(n for n in (4, 3, 2) if kept % n)
        model.accepted_per_step = (size,)
        params = SamplingParams(max_tokens=4000, temperature=0.6, stop=("</tool_call>", *STOPS))
        chunks = await collect(engine, params)
        assert joined(chunks) == text[: text.index("</tool_call>")]
        assert (chunks[-1].finish_reason, chunks[-1].stop) == ("stop", "</tool_call>")
        assert sum(c.tokens for c in chunks) == kept  # not the tokens past the stop
        assert engine.counters.tokens == kept
        assert engine.counters.tokens / engine.counters.steps > 1.5  # several per step
    finally:
        await engine.close()


async def test_a_stop_mid_step_is_reported_without_a_stop_reason(
    tmp_path,
    tokenizer_dir,
    monkeypatch,
):
    """What the adapter relies on: the LLM API's own view of such a stop (executor/result.py)."""
    text = as_openmath(tora_generation(0))
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: text, accepted_per_step=(4,))
    monkeypatch.setenv(fake_trt.SINGLE_PROCESS_ENV, "1")
    llm = fake_trt.sys.modules["tensorrt_llm._tensorrt_engine"].LLM(model=str(engine_dir))
    stop_id = model.tokenizer.convert_tokens_to_ids("</tool_call>")
    params = fake_trt.SamplingParams(max_tokens=4000, stop_token_ids=[stop_id])
    ids = model.tokenizer.encode(PROMPT, add_special_tokens=False)
    result = llm.generate_async(ids, sampling_params=params, streaming=True)
    async for output in result:
        last = output.outputs[0]
    upto = text[: text.index("</tool_call>") + len("</tool_call>")]
    kept = len(model.tokenizer.encode(upto, add_special_tokens=False))
    assert last.finish_reason == "stop"
    if kept % 4:  # the stop landed mid-step: tokens past it, and no stop_reason
        assert len(last.token_ids) > kept and last.stop_reason is None
    else:
        assert last.stop_reason == stop_id


async def test_the_llm_api_runs_in_this_process_by_default(
    tmp_path,
    tokenizer_dir,
    monkeypatch,
):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    await engine_for(engine_dir).start()
    assert model.loaded[0]["worker"] == "in-process"
    assert os.environ[fake_trt.SINGLE_PROCESS_ENV] == "1"


async def test_a_worker_process_needs_mpi4py(tmp_path, tokenizer_dir, monkeypatch):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    monkeypatch.setattr(fake_trt.importlib.util, "find_spec", lambda name: None)
    engine = engine_for(engine_dir, **{"engine.trtllm.single_process": "false"})
    with pytest.raises(EngineError, match="mpi4py"):
        await engine.start()
    assert model.loaded == []


async def test_generation_room_leaves_out_the_draft_length(
    tmp_path,
    tokenizer_dir,
    monkeypatch,
):
    """trtllm-build adds max_draft_len to max_seq_len: 32,003 holds 32,000 tokens."""
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir, max_seq_len=32_003)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: "word " * 50)
    engine = engine_for(engine_dir, **{"generation.max_tokens": "30000"})
    await engine.start()
    assert (engine.facts.max_draft_len, engine.facts.sequence_room) == (3, 32_000)
    await collect(engine, SamplingParams(max_tokens=30_000, stop=STOPS), PROMPT + "x " * 5000)
    prompt_tokens = len(model.requests[0]["prompt_ids"])
    assert fake_trt.sampling_params_of(model.requests[0])["max_tokens"] == 32_000 - prompt_tokens
    with pytest.raises(EngineError, match=r"max_seq_len 32000 \(max_seq_len 32003 - draft 3\)"):
        await engine_for(engine_dir, **{"generation.max_tokens": "31500"}).start()


def test_the_manifest_records_the_draft_length_and_python(tmp_path, tokenizer_dir):
    from build.package_engine import manifest_fields

    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir, max_seq_len=32_003)
    config = json.loads((engine_dir / "config.json").read_text())
    config["pretrained_config"]["dtype"] = "bfloat16"
    fields = manifest_fields(config)
    assert (fields["max_seq_len"], fields["max_draft_len"]) == (32_003, 3)
    assert fields["python_version"] == "{}.{}".format(*sys.version_info[:2])
    manifest = EngineManifest(**fields, files=hash_folder(engine_dir))
    write_manifest(engine_dir, manifest)
    old = json.loads((engine_dir / "manifest.json").read_text())
    del old["max_draft_len"], old["python_version"]  # a manifest from before these fields
    assert EngineManifest.from_dict(old).max_draft_len == 0


def test_no_wheel_for_python_3_11():
    from submission.engines.trtllm_folder import wheel_python_problem, wheel_pythons

    assert wheel_pythons("1.0.0") == ("3.10", "3.12")
    assert "3.10/3.12" in (wheel_python_problem("3.11", "3.11", "1.0.0") or "")
    assert "pin a Kaggle image whose Python is 3.12" in (
        wheel_python_problem("3.11", "3.12", "1.0.0") or ""
    )
    assert wheel_python_problem("3.12", "3.12", "1.0.0") is None


def test_preflight_refuses_an_interpreter_without_a_wheel(tmp_path, monkeypatch):
    from submission import preflight as doctor

    (tmp_path / "config.json").write_text(json.dumps({"version": "1.0.0"}))
    config = load_config(overrides=["engine.kind=trtllm", f"engine.trtllm.engine_dir={tmp_path}"])
    monkeypatch.setattr(doctor.sys, "version_info", (3, 11, 9, "final", 0))
    check = doctor._trtllm_python(config)
    assert check.status == "fail"
    assert "CPython 3.11" in check.detail and "3.10/3.12" in check.detail
    monkeypatch.setattr(doctor.sys, "version_info", (3, 12, 3, "final", 0))
    assert doctor._trtllm_python(config).status == "ok"
    names = [c.name for c in doctor.run_checks(config, sandbox=False)]
    assert {"python for trtllm", "mpi4py"} <= set(names)


def test_the_wheel_download_refuses_a_python_without_a_wheel():
    sys.path.insert(0, str(Path(__file__).parents[1] / "offline_wheels"))
    import download

    assert load_config().engine.trtllm.python_version == download.KAGGLE_PYTHON
    assert download.trtllm_python_problem("3.12") is None
    assert "not 3.11" in (download.trtllm_python_problem("3.11") or "")
    assert download.main(["--out", "unused", "--with-trtllm", "--python-version", "3.11"]) == 1


async def test_prefix_cache_hits_are_reported(tmp_path, tokenizer_dir, monkeypatch):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir)
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: "ok")
    engine = engine_for(engine_dir)
    await engine.start()
    long_prompt = PROMPT + "Let n be a positive integer. " * 40
    await collect(engine, SamplingParams(max_tokens=8, stop=STOPS), long_prompt)
    assert engine.reused_kv_blocks() == 0
    await collect(engine, SamplingParams(max_tokens=8, stop=STOPS), long_prompt)
    assert (engine.reused_kv_blocks() or 0) > 0


def test_manifest_write_and_read_round_trip(tmp_path):
    manifest = EngineManifest(
        tensorrt_llm_version="1.0.0",
        greedy_drafter=False,
        max_seq_len=32_003,
        max_input_len=8192,
        max_batch_size=32,
        dtype="bfloat16",
        quantization="fp8",
        speculative_decoding_mode="explicit_draft_tokens",
        draft_len_per_beam=3,
        max_draft_len=3,
        python_version="3.12",
    )
    write_manifest(tmp_path, manifest)
    from submission.manifest import read_manifest

    assert read_manifest(tmp_path) == manifest


async def test_the_attempt_log_records_the_effective_sampling(tmp_path, tokenizer_dir, monkeypatch):
    from submission.answer import AnswerRange
    from submission.families.openmath import OpenmathFamily
    from submission.records import AttemptRecord
    from submission.tir import TirLoop

    text = "Nothing to compute: the answer is \\boxed{42}."
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: text)
    engine = engine_for(engine_dir)
    await engine.start()
    config = load_config("aimo3", None, [])
    family = OpenmathFamily.from_config(config)
    tir = TirLoop(engine, None, family, config.tir, AnswerRange(0, 99_999))
    record = AttemptRecord(problem_id="p", attempt_num=0, seed=5)
    params = SamplingParams(max_tokens=200, temperature=0.6, top_p=0.95, seed=5, stop=STOPS)
    await tir.run_attempt(record, PROMPT, params, session="a0")
    assert record.answer == 42
    assert record.sampling == "temperature=0.6 seed=5; ignored top_p=0.95"
    assert record.row()["sampling"] == record.sampling


# --- issue 21 items 10 and 12: TensorRT-LLM facts re-read against the sources ------------------


def engine_config_edit(engine_dir: Path, **changes: dict) -> Path:
    """Merge `changes` into config.json's sections (pretrained_config, build_config)."""
    config = json.loads((engine_dir / "config.json").read_text())
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    (engine_dir / "config.json").write_text(json.dumps(config))
    return engine_dir


@pytest.mark.parametrize("api", ["llm", "runner"])
async def test_near_greedy_does_not_overflow_a_float16_engine(
    tmp_path, tokenizer_dir, monkeypatch, api
):
    """ReDrafter multiplies the logits by 1/T in the engine's dtype: at the old near-greedy
    0.001 a float16 engine's logits overflowed (the fake's reach 100: 100,000 > 65,504)."""
    text = tora_generation(2).rsplit("```", 1)[1]
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    engine_config_edit(engine_dir, pretrained_config={"dtype": "float16"})
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: text)
    engine = engine_for(engine_dir, **{"engine.trtllm.api": api})
    await engine.start()
    try:
        greedy = await collect(engine, SamplingParams(max_tokens=400, temperature=0.0, stop=STOPS))
        assert greedy[-1].finish_reason != "error" and joined(greedy) == text
        assert "overflow" not in model.requests[0]["applied"]
        cold = await collect(engine, SamplingParams(max_tokens=400, temperature=0.0005))
        assert cold[-1].finish_reason != "error"
        assert model.requests[1]["applied"]["temperature"] == NEAR_GREEDY_TEMPERATURE
        assert "temperature=0.0005 (raised to 0.01)" in cold[0].meta["sampling"]
    finally:
        await engine.close()


def test_the_fake_overflows_where_the_real_engine_would(tmp_path, tokenizer_dir, monkeypatch):
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    engine_config_edit(engine_dir, pretrained_config={"dtype": "float16"})
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    assert model.applied_sampling(temperature=0.001, seed=0)["overflow"] is True
    assert "overflow" not in model.applied_sampling(temperature=0.01, seed=0)
    engine_config_edit(engine_dir, pretrained_config={"dtype": "bfloat16"})
    assert "overflow" not in model.applied_sampling(temperature=0.001, seed=0)


def test_a_step_accepts_at_most_draft_len_per_beam_plus_one(tmp_path, tokenizer_dir, monkeypatch):
    """Five beams of three: max_draft_len is 15, but one step accepts at most 3 + 1."""
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    engine_config_edit(engine_dir, build_config={"max_draft_len": 15})
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: "", accepted_per_step=(16,))
    steps = model.step_sizes()
    assert [next(steps) for _ in range(3)] == [4, 4, 4]


def fake_mpi4py(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.machinery
    import types

    module = types.ModuleType("mpi4py")
    module.__spec__ = importlib.machinery.ModuleSpec("mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py", module)


async def test_a_tensor_parallel_engine_runs_on_all_its_gpus(tmp_path, tokenizer_dir, monkeypatch):
    """AIMO-2's 4x L4: an engine converted with --tp_size 4 runs one MPI rank per GPU through the
    LLM API (before: the adapter kept every engine in one process, one GPU)."""
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    engine_config_edit(engine_dir, pretrained_config={"mapping": {"tp_size": 4, "world_size": 4}})
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    fake_mpi4py(monkeypatch)
    engine = engine_for(engine_dir, **{"engine.trtllm.api": "auto"})
    await engine.start()
    try:
        (loaded,) = model.loaded
        assert loaded["tensor_parallel_size"] == 4
        assert (loaded["api"], loaded["worker"], loaded["ranks"]) == ("llm", "mpi", 4)
        assert engine.facts.tp_size == 4
    finally:
        await engine.close()
    with pytest.raises(EngineError, match="mpirun"):
        await engine_for(engine_dir, **{"engine.trtllm.api": "runner"}).start()


async def test_a_tensor_parallel_engine_needs_mpi4py(tmp_path, tokenizer_dir, monkeypatch):
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    engine_config_edit(engine_dir, pretrained_config={"mapping": {"tp_size": 4}})
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    monkeypatch.setattr(fake_trt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EngineError, match="MPI worker processes"):
        await engine_for(engine_dir).start()


def test_the_fake_refuses_a_tensor_parallel_size_the_engine_was_not_built_for(
    tmp_path, tokenizer_dir, monkeypatch
):
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    llm_class = fake_trt.sys.modules["tensorrt_llm._tensorrt_engine"].LLM
    with pytest.raises(ValueError, match="not consistent with the engine's tp_size 1"):
        llm_class(model=str(engine_dir), tensor_parallel_size=4)


async def test_block_reuse_needs_paged_context_fmha(tmp_path, tokenizer_dir, monkeypatch, caplog):
    """KV block reuse needs an engine built with --use_paged_context_fmha enable
    (docs/source/kv_cache_reuse.md): without it nothing is reused, and the adapter says so."""
    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    engine_config_edit(
        engine_dir, build_config={"plugin_config": {"use_paged_context_fmha": False}}
    )
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: "x")
    engine = engine_for(engine_dir)
    with caplog.at_level(logging.WARNING):
        await engine.start()
    try:
        assert "--use_paged_context_fmha enable" in caplog.text
        assert engine.facts.paged_context_fmha is False
        for _ in range(2):
            await collect(engine, SamplingParams(max_tokens=4), PROMPT * 20)
        assert model.reused_blocks == 0
    finally:
        await engine.close()


def test_the_manifest_records_tp_and_paged_context_fmha(tmp_path, tokenizer_dir):
    from build.package_engine import manifest_fields

    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    engine_config_edit(
        engine_dir,
        pretrained_config={"dtype": "bfloat16", "mapping": {"tp_size": 4}},
        build_config={"plugin_config": {"use_paged_context_fmha": True}},
    )
    fields = manifest_fields(json.loads((engine_dir / "config.json").read_text()))
    assert (fields["tp_size"], fields["paged_context_fmha"]) == (4, "enable")


class ImportRecorder:
    """A meta-path finder that notes when `tensorrt_llm` is imported, then serves the fake."""

    def __init__(self, fake_root: object, events: list[str]) -> None:
        self.fake_root = fake_root
        self.events = events

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        import importlib.machinery

        if name != "tensorrt_llm":
            return None
        return importlib.machinery.ModuleSpec(name, self)  # found (find_spec runs no code)

    def create_module(self, spec: object) -> object:
        self.events.append("import tensorrt_llm")  # loaded: the real one runs _utils.py here
        return self.fake_root

    def exec_module(self, module: object) -> None:
        return None


def test_tensorrt_llm_is_imported_only_after_the_sandbox_fork_server_starts(
    tmp_path, tokenizer_dir, monkeypatch
):
    """`import tensorrt_llm` initialises MPI (tensorrt_llm/_utils.py: `MPI.COMM_WORLD`,
    `Split_type`), and a fork after MPI or CUDA is unsafe: the preflight never imports it, and
    the harness imports it only once its sandbox's fork server runs."""
    from submission.harness import Harness
    from submission.preflight import run_checks
    from submission.sandbox import server

    engine_dir = redrafter_dir(tmp_path / "engine", tokenizer_dir)
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    monkeypatch.setenv(fake_trt.SINGLE_PROCESS_ENV, "1")
    events: list[str] = []
    fake_root = sys.modules["tensorrt_llm"]
    monkeypatch.delitem(sys.modules, "tensorrt_llm")
    monkeypatch.setattr(sys, "meta_path", [ImportRecorder(fake_root, events), *sys.meta_path])
    start = server.ForkServerClient._start

    def noting_start(self: object) -> None:
        start(self)
        events.append("fork server")

    monkeypatch.setattr(server.ForkServerClient, "_start", noting_start)
    config = load_config(
        "aimo3", overrides=["engine.kind=trtllm", f"engine.trtllm.engine_dir={engine_dir}"]
    )
    run_checks(config, sandbox=True)  # the kernel's preflight: every doctor check
    assert "import tensorrt_llm" not in events
    events.clear()
    harness = Harness.start(config)
    try:
        harness.wait_ready(timeout_s=120)
    finally:
        harness.close()
    assert events[0] == "fork server" and "import tensorrt_llm" in events, events
