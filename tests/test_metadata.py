"""kaggle_metadata.json: the committed file passes, each Kaggle CLI rule catches its breach."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from submission.__main__ import main
from submission.commands.kaggle_metadata import (
    CODE_FILE,
    DEFAULT_PATH,
    KERNEL_METADATA_FILE,
    NOTEBOOK_FILE,
    PLACEHOLDER_OWNER,
    PRODUCTION_CONFIG,
    check_metadata,
    metadata_from_config,
)
from submission.config import Config, kaggle_slugify, load_config

REPO = Path(__file__).resolve().parents[1]


def owned(profile: str = "aimo3", *overrides: str) -> Config:
    """A config whose identity's owner is 'someone' (the one `good()` names)."""
    return load_config(profile, overrides=["kaggle.owner=someone", *overrides])


def good() -> dict[str, Any]:
    return {
        "id": "someone/aimo-tir-harness",
        "title": "AIMO TIR Harness",
        "code_file": CODE_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": True,
        "enable_internet": False,
        "machine_shape": "NvidiaH100",
        "competition_sources": ["ai-mathematical-olympiad-progress-prize-3"],
        "dataset_sources": ["someone/aimo-offline-wheels", "someone/aimo-engine/3"],
        "kernel_sources": [],
        "model_sources": [],
    }


def test_the_committed_metadata_passes_for_aimo3_once_its_owner_is_filled_in() -> None:
    meta = json.loads(DEFAULT_PATH.read_text())
    config = load_config("aimo3")
    (error,) = check_metadata(meta, DEFAULT_PATH.parent, config)
    assert PLACEHOLDER_OWNER in error  # the one thing a competitor must edit
    production = load_config("aimo3", PRODUCTION_CONFIG)  # the kernel's: the engine dataset too
    (error,) = check_metadata(meta, DEFAULT_PATH.parent, production)
    assert PLACEHOLDER_OWNER in error
    config = load_config("aimo3", PRODUCTION_CONFIG, ["kaggle.owner=someone"])
    written = metadata_from_config(config, meta)
    assert check_metadata(written, DEFAULT_PATH.parent, config) == []
    assert meta["enable_internet"] is False  # written, not left to the CLI's default (true)
    assert (REPO / meta["code_file"]).is_file()


def test_a_good_file_passes_and_string_booleans_are_accepted() -> None:
    assert check_metadata(good(), REPO, owned()) == []
    meta = good() | {"enable_gpu": "True", "enable_internet": "false", "is_private": "FALSE"}
    assert check_metadata(meta, REPO, owned()) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"title": "AIMO"}, "title must be text of 5-50"),
        ({"title": "A" * 51}, "title must be text of 5-50"),
        ({"title": "Another Title"}, "slugifies to 'another-title'"),
        ({"id": "no-owner-here"}, "is not username/kernel-slug"),
        ({"id": "someone/abc", "title": "abc"}, "at least five characters"),
        ({"id": None}, "id (username/kernel-slug) or id_no is required"),
        ({"code_file": "submission/nope.py"}, "not found next to the metadata"),
        ({"code_file": ""}, "code_file is missing"),
        ({"language": "julia"}, "language must be one of"),
        ({"kernel_type": "app"}, "kernel_type must be one of"),
        ({"enable_internet": True}, "enable_internet must be false"),
        ({"enable_internet": "yes"}, "enable_internet must be true/false"),
        ({"enable_gpu": False}, "enable_gpu must be true"),
        ({"machine_shape": "NvidiaTeslaT4"}, "differs from profile aimo3's 'NvidiaH100'"),
        ({"machine_shape": "H100"}, "is not one of"),
        ({"competition_sources": []}, "must include 'ai-mathematical-olympiad-progress-prize-3'"),
        ({"dataset_sources": ["wheels-only"]}, "is not username/dataset-slug"),
        ({"dataset_sources": ["a/b/1/extra"]}, "is not username/dataset-slug"),
        ({"dataset_sources": "someone/wheels"}, "dataset_sources must be a list"),
        ({"model_sources": ["org/model"]}, "is not owner/model/framework/instance/version"),
        ({"model_sources": ["org/model/transformers/default/latest"]}, "must be an integer"),
        ({"kernel_sources": ["someone/abc"]}, "at least five characters"),
        ({"docker_image_pinning_type": "newest"}, "docker_image_pinning_type must be one of"),
    ],
)
def test_each_rule_catches_its_breach(change: dict[str, Any], message: str) -> None:
    meta = good() | change
    errors = check_metadata(meta, REPO, owned())
    assert any(message in e for e in errors), errors


def test_enable_internet_must_be_written() -> None:
    meta = good()
    del meta["enable_internet"]
    errors = check_metadata(meta, REPO, owned())
    assert any("the CLI defaults it to true" in e for e in errors)


def test_slugify_matches_the_cli_on_ascii_titles() -> None:
    assert kaggle_slugify("AIMO TIR Harness") == "aimo-tir-harness"
    assert kaggle_slugify("  AIMO-3: TIR (v2)! ") == "aimo-3-tir-v2"


def test_write_fills_from_the_profile_and_the_engine_paths() -> None:
    config = load_config(
        "aimo2",
        overrides=[
            "kaggle.owner=me",
            "kaggle.kernel_slug=aimo-harness",
            "kaggle.kernel_title='AIMO Harness'",
            "engine.kind=trtllm",
            "engine.trtllm.engine_dir=/kaggle/input/omn-14b-fp8-engine/engine",
            "engine.trtllm.tokenizer_dir=/kaggle/input/omn-14b-fp8-engine/tokenizer",
        ],
    )
    existing = {"id": "old/name", "title": "Old Name", "enable_internet": True}
    meta = metadata_from_config(config, existing, datasets=("someone/extra-data",))
    assert meta["id"] == "me/aimo-harness" and meta["title"] == "AIMO Harness"  # the identity
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["machine_shape"] == "NvidiaL4"
    assert meta["competition_sources"] == ["ai-mathematical-olympiad-progress-prize-2"]
    assert meta["dataset_sources"] == [
        "me/aimo-offline-wheels",
        "me/omn-14b-fp8-engine",
        "someone/extra-data",
    ]
    assert check_metadata(meta, REPO, config) == []


def cli_args(tmp_path: Path) -> list[str]:
    """kaggle-metadata on a metadata file and a copy of the production config in tmp_path."""
    config = tmp_path / "kaggle.toml"
    if not config.exists():
        config.write_text(PRODUCTION_CONFIG.read_text())
    path = tmp_path / "kaggle_metadata.json"
    return ["kaggle-metadata", "--path", str(path), "--config", str(config)]


def test_cli_write_check_and_stage(tmp_path: Path) -> None:
    path = tmp_path / "kaggle_metadata.json"
    (tmp_path / "submission").mkdir()
    (tmp_path / CODE_FILE).write_text("print('kernel')\n")
    args = cli_args(tmp_path)
    assert main([*args, "--check"]) == 1  # missing
    assert main([*args, "--write", "--id", "me/aimo-harness", "--title", "AIMO Harness"]) == 0
    assert main([*args, "--check"]) == 0
    assert main([*args, "--check", "--profile", "aimo2"]) == 1  # H100, AIMO-3's competition
    assert main([*args, "--stage", str(tmp_path / "push")]) == 0
    staged = json.loads((tmp_path / "push" / KERNEL_METADATA_FILE).read_text())
    assert (staged["kernel_type"], staged["code_file"]) == ("notebook", NOTEBOOK_FILE)
    notebook = json.loads((tmp_path / "push" / NOTEBOOK_FILE).read_text())
    assert "print('kernel')\n" in notebook["cells"][1]["source"]
    config = load_config("aimo3", tmp_path / "kaggle.toml")
    assert check_metadata(staged, tmp_path / "push", config) == []
    path.write_text(path.read_text().replace('"notebook"', '"script"'))
    assert main([*args, "--stage", str(tmp_path / "script")]) == 0
    staged = json.loads((tmp_path / "script" / KERNEL_METADATA_FILE).read_text())
    assert staged["code_file"] == "kernel.py"
    assert (tmp_path / "script" / "kernel.py").read_text() == "print('kernel')\n"
    path.write_text("{not json")
    assert main([*args, "--check"]) == 1


def test_a_notebook_code_file_must_be_notebook_json(tmp_path: Path) -> None:
    (tmp_path / "k.ipynb").write_text("print('not json')")
    meta = good() | {"kernel_type": "notebook", "code_file": "k.ipynb"}
    assert any("is not notebook JSON" in e for e in check_metadata(meta, tmp_path, owned()))
    (tmp_path / "k.ipynb").write_text('{"cells": []}')
    assert check_metadata(meta, tmp_path, owned()) == []


def test_the_staged_notebook_runs_its_stages_in_a_notebook_kernel(tmp_path: Path) -> None:
    """kernel.ipynb's code cells, one after another in an IPython kernel (jupyter_client).

    A Kaggle-shaped tree ($AIMO_KAGGLE_ROOT) with a competition folder holding
    test.csv and no kaggle_evaluation: the serve cell runs the built-in gateway.
    """
    import polars as pl
    from jupyter_client.manager import start_new_kernel

    from submission.commands.kaggle_metadata import kernel_notebook
    from submission.config import PACKAGE_DATA

    notebook = kernel_notebook((REPO / CODE_FILE).read_text(), "AIMO TIR Harness")
    assert (notebook["nbformat"], notebook["nbformat_minor"]) == (4, 5)
    assert len({c["id"] for c in notebook["cells"]}) == len(notebook["cells"])
    headings = [c["source"][0] for c in notebook["cells"] if c["cell_type"] == "markdown"]
    assert [h.split()[1] for h in headings[1:]] == ["1.", "2.", "3.", "4."]
    competition = tmp_path / "kaggle" / "input" / "ai-mathematical-olympiad-progress-prize-3"
    competition.mkdir(parents=True)
    frame = pl.read_csv(PACKAGE_DATA / "gsm8k_first250.csv").head(2)
    frame.select("id", "problem").write_csv(competition / "test.csv")
    (tmp_path / "kaggle" / "working").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        (PACKAGE_DATA / "replay_gsm8k.toml").read_text()
        + '\n[output]\nout_dir = "/kaggle/working"\n'
    )
    env = {
        **os.environ,
        "AIMO_CODE_DIR": str(REPO),
        "AIMO_KAGGLE_ROOT": str(tmp_path / "kaggle"),
        "AIMO_CONFIG": str(config),
    }
    manager, client = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    outputs: list[str] = []

    def collect(message: dict[str, Any]) -> None:
        content = message["content"]
        if message["msg_type"] == "stream":
            outputs.append(content["text"])
        elif message["msg_type"] == "error":
            outputs.append("\n".join(content["traceback"]))

    try:
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                reply = client.execute_interactive(
                    "".join(cell["source"]), timeout=240, output_hook=collect
                )
                assert reply["content"]["status"] == "ok", "".join(outputs)[-3000:]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    text = "".join(outputs)
    assert "preflight:" in text and "problem 2/2" in text  # each stage's log under its cell
    submission = pl.read_parquet(tmp_path / "kaggle" / "working" / "submission.parquet")
    assert sorted(submission["id"]) == sorted(frame["id"])


# --- one identity (issue 21 item 4) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "title"),
    [
        (["--id", "kagtester/aimo-tir-harness"], "AIMO TIR Harness"),  # the title kept
        (["--id", "kagtester/my-first-aimo"], "My First Aimo"),  # made from the slug
        (["--id", "kag_t-1/aimo3-tir", "--title", "AIMO3 TIR"], "AIMO3 TIR"),
    ],
)
def test_write_output_passes_its_own_check(
    tmp_path: Path, given: list[str], title: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `--write --id USER/my-first-aimo` kept the title 'AIMO TIR Harness' (another
    slug), printed 'error:' and exited 0; `--check` then rejected the file."""
    args = cli_args(tmp_path)
    (tmp_path / "submission").mkdir()
    (tmp_path / CODE_FILE).write_text("print('kernel')\n")
    assert main([*args, "--write", *given]) == 0, capsys.readouterr().out
    assert main([*args, "--check"]) == 0, capsys.readouterr().out
    meta = json.loads((tmp_path / "kaggle_metadata.json").read_text())
    owner = given[1].split("/")[0]
    assert meta["id"] == given[1] and meta["title"] == title
    # Every Kaggle id is the identity's: the wheels, and the engine the kernel loads.
    config = load_config("aimo3", tmp_path / "kaggle.toml")
    engine_slug = config.engine.trtllm.engine_dir.removeprefix("/kaggle/input/")
    assert meta["dataset_sources"] == [f"{owner}/aimo-offline-wheels", f"{owner}/{engine_slug}"]
    assert config.kaggle.owner == owner and engine_slug == config.kaggle.engine_slug
    sys.path.insert(0, str(REPO / "offline_wheels"))
    import download

    wheels = download.identity(tmp_path / "kaggle.toml")
    assert wheels.dataset_id(wheels.wheels_slug) == f"{owner}/aimo-offline-wheels"
    # The rest of the config file is kept.
    assert 'kind = "trtllm"' in (tmp_path / "kaggle.toml").read_text()


@pytest.mark.parametrize(
    ("given", "code", "message"),
    [
        (["--write", "--id", "me/abc"], 2, "kaggle.kernel_slug = 'abc': must look like"),
        (["--write", "--id", "no-slash"], 2, "is not USER/kernel-slug"),
        (["--write", "--title", "Other Title"], 2, "slugifies to kaggle.kernel_slug"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: Path, given: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli_args(tmp_path)
    before = (tmp_path / "kaggle.toml").read_text()
    assert main([*args, *given]) == code
    assert message in " ".join(capsys.readouterr().out.split())
    assert (tmp_path / "kaggle.toml").read_text() == before
    assert not (tmp_path / "kaggle_metadata.json").exists()


def test_any_error_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: errors without --check or --stage were printed and the exit code was 0."""
    args = cli_args(tmp_path)
    (tmp_path / "kaggle_metadata.json").write_text(json.dumps(good() | {"enable_gpu": False}))
    assert main(args) == 1
    assert "enable_gpu must be true" in capsys.readouterr().out


def test_the_committed_files_name_one_identity() -> None:
    """kaggle_metadata.json says what submission/kaggle.toml's [kaggle] says, and no file of
    build/ or submission/ cites ../shared (a clone has none)."""
    production = load_config("aimo3", PRODUCTION_CONFIG)
    meta = json.loads(DEFAULT_PATH.read_text())
    errors = check_metadata(meta, DEFAULT_PATH.parent, production)
    assert [e for e in errors if PLACEHOLDER_OWNER not in e] == []
    cited = [
        str(path.relative_to(REPO))
        for folder in ("build", "submission", "offline_wheels")
        for path in (REPO / folder).rglob("*")
        if path.is_file()
        and path.suffix in (".py", ".toml", ".md", ".txt", ".sh", ".json")
        and "../shared" in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert cited == []


def test_a_kaggle_models_handle_is_a_model_source_the_server_config_needs() -> None:
    """kaggle 2.2.5's kernels_push validates each model source as
    owner/model/framework/instance/version (validate_model_instance_version_string)."""
    config = load_config(
        "aimo3",
        None,
        [
            "engine.kind=openai",
            "engine.server.kind=vllm",
            "engine.server.model=/kaggle/input/gpt-oss-120b/transformers/default/1",
            "kaggle.owner=someone",  # the owner good() names
        ],
    )
    handle = "openai/gpt-oss-120b/transformers/default/1"
    assert check_metadata(good() | {"model_sources": [handle]}, REPO, config) == []
    errors = check_metadata(good(), REPO, config)
    wanted = "model_sources must include OWNER/gpt-oss-120b/transformers/default/1"
    assert any(wanted in e for e in errors)
    written = metadata_from_config(config, good(), models=(handle,))
    assert written["model_sources"] == [handle]
    assert check_metadata(written, REPO, config) == []
