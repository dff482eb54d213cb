"""The gpt-oss profile (submission/aimo3-gpt-oss.toml): its server, its metadata, a run.

The harmony family's vocabulary is built by the README's set-up (`python -m submission
vocab`), so these run on every clone.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from submission.commands.kaggle_metadata import check_metadata, metadata_from_config
from submission.config import load_config
from submission.engines.openai import OpenaiEngine
from submission.model_server import ModelServer
from tests.test_model_server import QUESTION, STANDIN, free_port, group_members

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "submission" / "aimo3-gpt-oss.toml"
METADATA = REPO / "kaggle_metadata.gpt-oss.json"


def test_the_profile_starts_vllm_with_the_notebooks_flags_sized_by_our_attempts() -> None:
    config = load_config("aimo3", PROFILE)
    assert (config.prompt.family, config.engine.kind, config.engine.openai.dialect) == (
        "harmony",
        "openai",
        "vllm",
    )
    server = ModelServer.from_config(config)  # every flag checked against vLLM 0.11.2's
    argv = server.argv
    assert argv[argv.index("--max-num-seqs") + 1] == str(config.solver.attempts) == "16"
    assert argv[argv.index("--max-model-len") + 1] == "65536"
    assert config.generation.max_tokens < 65536
    assert server.command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]


def test_its_metadata_names_the_model_handle_and_passes_the_check() -> None:
    config = load_config("aimo3", PROFILE)
    committed = json.loads(METADATA.read_text())
    assert committed["model_sources"] == ["openai/gpt-oss-120b/transformers/default/1"]
    # The committed file holds the placeholder owner (refused until replaced); --write --id
    # sets the owner in the profile's [kaggle] section, and the metadata made from it passes
    # every rule with this profile.
    assert any("placeholder" in e for e in check_metadata(committed, REPO, config))
    owned = load_config("aimo3", PROFILE, ["kaggle.owner=someone"])
    written = metadata_from_config(owned, committed)
    assert written["id"] == "someone/aimo-gpt-oss-harness"
    assert written["model_sources"] == committed["model_sources"]
    assert check_metadata(written, REPO, owned) == []


def test_a_problem_runs_through_the_profile_the_launcher_and_the_stand_in(tmp_path: Path) -> None:
    """Harmony token prompts to the vLLM stand-in, gpt-oss rounds of recorded text back,
    python calls in our sandbox, a final-channel box: the profile as the kernel runs it."""
    from submission.families.registry import create_family
    from submission.harness import AsyncHarness
    from submission.sandbox import Sandbox

    (tmp_path / "model").mkdir()
    config = load_config(
        "aimo3",
        PROFILE,
        [
            f"engine.server.entrypoint={STANDIN}",
            f"engine.server.model={tmp_path / 'model'}",
            f"engine.server.port={free_port()}",
            "engine.server.health_poll_s=0.1",
            "solver.attempts=4",
        ],
    )
    family = create_family(config)

    async def run() -> tuple[object, int]:
        engine = OpenaiEngine.from_config(config)
        sandbox = Sandbox.from_config(config, family.session_prelude)
        try:
            result = await AsyncHarness(config, engine, sandbox).solve("p1", QUESTION)
            return result, engine.server.process.pid
        finally:
            await engine.close()
            sandbox.close()

    result, pgid = asyncio.run(run())
    assert not result.used_fallback
    assert all(a.finish_reason == "stop" and a.error_message is None for a in result.attempts)
    assert all(a.code_calls >= 1 and a.answer is not None for a in result.attempts)
    # Seed 0 serves the recorded Janet's-ducks generation: its final box is 18.
    assert result.attempts[0].answer == 18
    assert group_members(pgid) == []
