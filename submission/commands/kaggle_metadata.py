"""`python -m submission kaggle-metadata`: write or check kaggle_metadata.json.

The file is the kernel metadata `kaggle kernels push` reads (the CLI wants it
named `kernel-metadata.json` in the pushed folder: `--stage DIR` writes that
folder). `--check` applies the Kaggle CLI's own rules (kaggle-api
`kaggle_api_extended.py`, `kernels_push` and the `validate_*_string` helpers,
as of v1.8 / Jan 2026) plus the competition's: GPU on, internet off written
explicitly (the CLI defaults `enable_internet` to TRUE when the key is
missing), an H100 machine shape for AIMO-3, the competition attached; and
that the file says what the config's identity (`[kaggle]`, KaggleConfig)
says: the id `owner/kernel_slug`, the title, the wheel and engine datasets.

One identity: `--write --id USER/SLUG [--title T]` writes the owner and the
kernel's slug and title into the config file (default: the production
`submission/kaggle.toml`, which the kernel, offline_wheels/download.py and
the engine build's package stage read too), then fills the metadata from the
config: code file, language, kernel type, GPU, internet, machine shape and
competition from the profile, id and title from the identity, the wheel
dataset and the engine's (`/kaggle/input/<slug>` paths of the configured
engine) owned by it; other datasets are kept. Without `--title` the title is
kept when it slugifies to the slug, else made from the slug. The written file
is checked like `--check`; any broken rule exits 1 (bad input: 2).
`--check` rejects the placeholder owner `your-kaggle-username` wherever it is left.

`--stage DIR` writes the folder `kaggle kernels push -p DIR` takes: for
`kernel_type = "notebook"` the code file becomes `kernel.ipynb`, one cell per
stage of the kernel (install, sandbox and preflight, engine, serve), so each
stage's log shows under its own cell.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from submission.config import (
    PLACEHOLDER_OWNER,
    Config,
    ConfigError,
    add_config_arguments,
    kaggle_slugify,
    load_config,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = REPO_ROOT / "kaggle_metadata.json"
# The production config: the kernel's engine paths, and the identity --write updates.
PRODUCTION_CONFIG = Path(__file__).resolve().parents[1] / "kaggle.toml"
CODE_FILE = "submission/kernel.py"
KERNEL_METADATA_FILE = "kernel-metadata.json"  # the name `kaggle kernels push -p DIR` reads

# The Kaggle CLI's accepted values (kaggle_api_extended.py).
LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
PINNING_TYPES = ("original", "latest")
# Accelerators the Kaggle CLI docs list (docs/kernels.md, Feb 2026).
MACHINE_SHAPES = (
    "NvidiaTeslaP100",
    "NvidiaTeslaT4",
    "NvidiaTeslaT4Highmem",
    "NvidiaTeslaA100",
    "NvidiaL4",
    "NvidiaL4X1",
    "NvidiaH100",
    "NvidiaRtxPro6000",
    "TpuV38",
    "Tpu1VmV38",
    "TpuV5E8",
    "TpuV6E8",
)
TITLE_MIN, TITLE_MAX = 5, 50  # the CLI checks the minimum; Kaggle's site caps titles at 50
KAGGLE_INPUT = "/kaggle/input/"
NOTEBOOK_FILE = "kernel.ipynb"
# The notebook's cells after the code file's definitions: (markdown title, code).
NOTEBOOK_STAGES = (
    (
        "1. Install: our package and the offline wheels, then the config",
        "configure_logging()\nrun = install_stage([])",
    ),
    (
        "2. Sandbox and preflight: every doctor check (one real sandbox call)",
        "preflight_stage(run)",
    ),
    (
        "3. Engine: the sandbox, then the engine loading in the background",
        "harness = engine_stage(run)",
    ),
    (
        "4. Serve: `serve()` in a competition rerun, else the local gateway on test.csv",
        "exit_code = serve_stage(run)\nif exit_code:\n"
        "    raise KernelStop(exit_code, f'the run failed (exit {exit_code}): see the log above')",
    ),
)


def check_metadata(meta: dict[str, Any], base_dir: Path, config: Config) -> list[str]:
    """Every rule the metadata breaks (empty: it would push and run as a submission)."""
    errors: list[str] = []
    title = meta.get("title")
    if not isinstance(title, str) or not TITLE_MIN <= len(title) <= TITLE_MAX:
        errors.append(f"title must be text of {TITLE_MIN}-{TITLE_MAX} characters, got {title!r}")
    elif not title.isascii():
        errors.append(f"title {title!r} is not ASCII: its slug is hard to predict")
    code_file = meta.get("code_file")
    if not code_file:
        errors.append("code_file is missing")
    elif not (base_dir / code_file).is_file():
        errors.append(f"code_file {code_file!r} not found next to the metadata ({base_dir})")
    slug, id_no = meta.get("id"), meta.get("id_no")
    if not slug and not id_no:
        errors.append("id (username/kernel-slug) or id_no is required")
    if slug:
        errors += _kernel_string_errors(slug, "id")
        if (
            isinstance(title, str)
            and "/" in slug
            and slug.split("/")[1].lower() != kaggle_slugify(title)
        ):
            errors.append(
                f"title {title!r} slugifies to {kaggle_slugify(title)!r}, not the id's slug "
                f"{slug.split('/')[1]!r} (the CLI warns; Kaggle may create a new kernel)"
            )
    if meta.get("language") not in LANGUAGES:
        errors.append(f"language must be one of {LANGUAGES}, got {meta.get('language')!r}")
    if meta.get("kernel_type") not in KERNEL_TYPES:
        errors.append(f"kernel_type must be one of {KERNEL_TYPES}, got {meta.get('kernel_type')!r}")
    elif meta["kernel_type"] == "notebook" and code_file and (base_dir / code_file).is_file():
        errors += _notebook_errors(base_dir / code_file)
    errors += _placeholder_errors(meta)
    errors += _identity_errors(meta, config)
    for key in ("is_private", "enable_gpu", "enable_tpu", "enable_internet"):
        if key in meta and _as_bool(meta[key]) is None:
            errors.append(f"{key} must be true/false (or 'true'/'false'), got {meta[key]!r}")
    if "enable_internet" not in meta:
        errors.append("enable_internet must be written (false): the CLI defaults it to true")
    elif _as_bool(meta["enable_internet"]) is not False:
        errors.append("enable_internet must be false: competition submissions run offline")
    if _as_bool(meta.get("enable_gpu", False)) is not True:
        errors.append("enable_gpu must be true")
    shape = meta.get("machine_shape")
    if shape not in MACHINE_SHAPES:
        errors.append(f"machine_shape {shape!r} is not one of {MACHINE_SHAPES}")
    elif shape != config.profile.machine_shape:
        errors.append(
            f"machine_shape {shape!r} differs from profile {config.profile.name}'s "
            f"{config.profile.machine_shape!r}"
        )
    for source in _list(meta, "dataset_sources", errors):
        parts = source.split("/") if isinstance(source, str) else []
        if len(parts) not in (2, 3) or not all(parts[:2]):
            errors.append(f"dataset source {source!r} is not username/dataset-slug[/version]")
    for source in _list(meta, "kernel_sources", errors):
        errors += _kernel_string_errors(source, "kernel source")
    models = _list(meta, "model_sources", errors)
    for source in models:
        errors += _model_source_errors(source)
    if (mount := kaggle_model_mount(config)) is not None and not any(
        isinstance(m, str) and m.split("/")[1:] == list(mount) for m in models
    ):
        errors.append(
            f"engine.server.model {config.engine.server.model!r} is a Kaggle Models mount: "
            f"model_sources must include OWNER/{'/'.join(mount)}"
        )
    competitions = _list(meta, "competition_sources", errors)
    competition = Path(config.profile.competition_dir).name
    if competition not in competitions:
        errors.append(f"competition_sources must include {competition!r}, got {competitions}")
    pinning = meta.get("docker_image_pinning_type")
    if pinning is not None and pinning not in PINNING_TYPES:
        errors.append(f"docker_image_pinning_type must be one of {PINNING_TYPES}")
    return errors


def _model_source_errors(source: Any) -> list[str]:
    """The CLI's rule for a kernel's model source (kaggle 2.2.5, `kernels_push` ->
    `validate_model_instance_version_string`): owner/model/framework/instance/version,
    five non-empty parts, the version an integer (a Kaggle Models handle)."""
    parts = source.split("/") if isinstance(source, str) else []
    if len(parts) != 5 or not all(parts):
        return [f"model source {source!r} is not owner/model/framework/instance/version"]
    if not parts[4].isdigit():
        return [f"model source {source!r}: the version must be an integer"]
    return []


def kaggle_model_mount(config: Config) -> tuple[str, str, str, str] | None:
    """(model, framework, instance, version) of a server model under /kaggle/input, where
    Kaggle mounts an attached model: /kaggle/input/<model>/<framework>/<instance>/<version>."""
    path = config.engine.server.model
    if config.engine.server.kind == "none" or not path.startswith(KAGGLE_INPUT):
        return None
    parts = path[len(KAGGLE_INPUT) :].strip("/").split("/")
    if len(parts) < 4 or not parts[3].isdigit():
        return None  # a dataset folder, not a model mount
    return parts[0], parts[1], parts[2], parts[3]


def _notebook_errors(path: Path) -> list[str]:
    """What the CLI needs of a notebook code file: JSON with a list of cells (.py is staged)."""
    if path.suffix == ".py":
        return []  # --stage turns the script into kernel.ipynb
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        return [f"code_file {path.name} is not notebook JSON: {exc}"]
    return [] if isinstance(cells, list) else [f"code_file {path.name} has no list of cells"]


def _placeholder_errors(meta: dict[str, Any]) -> list[str]:
    owners = [meta.get("id")]
    for key in ("dataset_sources", "kernel_sources", "model_sources"):
        value = meta.get(key)
        owners += value if isinstance(value, list) else []
    left = sorted({str(o) for o in owners if str(o).split("/")[0] == PLACEHOLDER_OWNER})
    if not left:
        return []
    return [
        f"{PLACEHOLDER_OWNER!r} is a placeholder: put your Kaggle username in {left} "
        "(--write --id USER/SLUG does it; docs/kaggle.md: what to edit before pushing)"
    ]


def _identity_errors(meta: dict[str, Any], config: Config) -> list[str]:
    """Where the metadata says otherwise than the config's identity ([kaggle])."""
    kaggle = config.kaggle
    wanted = {
        "id": kaggle.dataset_id(kaggle.kernel_slug),
        "title": kaggle.kernel_title,
    }
    errors = [
        f"{key} {meta.get(key)!r} is not the config's {value!r} ([kaggle]): run --write"
        for key, value in wanted.items()
        if meta.get(key) is not None and meta.get(key) != value
    ]
    sources = meta.get("dataset_sources")
    have = {"/".join(s.split("/")[:2]) for s in sources if isinstance(s, str)} if sources else set()
    for dataset in own_datasets(config):
        if isinstance(sources, list) and dataset not in have:
            errors.append(f"dataset_sources lacks {dataset!r} (the config's; run --write)")
    return errors


def own_datasets(config: Config) -> list[str]:
    """owner/slug of the datasets the kernel needs: the wheels, and the engine's folders."""
    kaggle = config.kaggle
    slugs = [kaggle.wheels_slug, *config_dataset_slugs(config)]
    return [kaggle.dataset_id(slug) for slug in dict.fromkeys(slugs)]


def metadata_from_config(
    config: Config,
    existing: dict[str, Any],
    datasets: tuple[str, ...] = (),
    models: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The metadata for this config: id, title and our datasets from its identity, the
    fixed fields from its profile; other keys and datasets kept from `existing`."""
    meta = dict(existing)
    kaggle = config.kaggle
    meta["id"] = kaggle.dataset_id(kaggle.kernel_slug)
    meta["title"] = kaggle.kernel_title
    meta["code_file"] = CODE_FILE
    meta["language"] = "python"
    meta["kernel_type"] = (
        meta.get("kernel_type") if meta.get("kernel_type") in KERNEL_TYPES else "notebook"
    )
    meta["is_private"] = True
    meta["enable_gpu"] = True
    meta["enable_internet"] = False
    meta["machine_shape"] = config.profile.machine_shape
    meta["competition_sources"] = [Path(config.profile.competition_dir).name]
    ours = own_datasets(config)
    our_slugs = {d.split("/")[1] for d in ours}
    kept = [
        s
        for s in list(meta.get("dataset_sources", [])) + list(datasets)
        if isinstance(s, str)
        and s.split("/")[0] != PLACEHOLDER_OWNER
        and s.split("/")[1:2] != []
        and s.split("/")[1] not in our_slugs
    ]
    meta["dataset_sources"] = list(dict.fromkeys([*ours, *kept]))
    meta["kernel_sources"] = [_owned_by(s, kaggle.owner) for s in meta.get("kernel_sources", [])]
    models = [*meta.get("model_sources", []), *models]
    meta["model_sources"] = list(dict.fromkeys(_owned_by(s, kaggle.owner) for s in models))
    return meta


def _owned_by(source: str, owner: str) -> str:
    """`source` with the placeholder owner replaced by `owner`."""
    head, sep, rest = source.partition("/")
    return f"{owner}{sep}{rest}" if head == PLACEHOLDER_OWNER else source


def config_dataset_slugs(config: Config) -> list[str]:
    """Dataset slugs named by /kaggle/input/<slug>/... paths of the configured engine."""
    engine = config.engine
    paths = {
        "trtllm": [engine.trtllm.engine_dir, engine.trtllm.tokenizer_dir],
        "hf": [engine.hf.model],
    }.get(engine.kind, [])
    if engine.server.kind != "none" and kaggle_model_mount(config) is None:
        paths.append(engine.server.model)  # weights in a dataset, not an attached model
    slugs = [p[len(KAGGLE_INPUT) :].split("/")[0] for p in paths if p.startswith(KAGGLE_INPUT)]
    return list(dict.fromkeys(s for s in slugs if s))


def stage(meta: dict[str, Any], base_dir: Path, folder: Path) -> Path:
    """A folder `kaggle kernels push -p FOLDER` accepts: kernel-metadata.json + the code file.

    A notebook kernel gets `kernel.ipynb`, made from the code file (a script) by
    `kernel_notebook`; a script kernel gets the code file itself.
    """
    folder.mkdir(parents=True, exist_ok=True)
    code = base_dir / meta["code_file"]
    if meta.get("kernel_type") == "notebook" and code.suffix == ".py":
        notebook = kernel_notebook(code.read_text(encoding="utf-8"), meta.get("title", ""))
        (folder / NOTEBOOK_FILE).write_text(json.dumps(notebook, indent=1) + "\n", "utf-8")
        code_name = NOTEBOOK_FILE
    else:
        shutil.copy2(code, folder / code.name)
        code_name = code.name
    staged = dict(meta, code_file=code_name)
    path = folder / KERNEL_METADATA_FILE
    path.write_text(json.dumps(staged, indent=2) + "\n", encoding="utf-8")
    return path


def kernel_notebook(script: str, title: str = "") -> dict[str, Any]:
    """The kernel script as an nbformat-4 notebook: its definitions, then one cell per stage.

    The script's `if __name__ == "__main__":` block is left out (in a notebook
    `__name__` is "__main__" too); the stage cells call what `main()` calls.
    """
    guard = script.find('\nif __name__ == "__main__":')
    definitions = script[:guard].rstrip() + "\n" if guard >= 0 else script
    cells = [
        _cell(
            "markdown",
            f"# {title or 'AIMO kernel'}\n\nGenerated from `{CODE_FILE}` "
            "by `python -m submission kaggle-metadata --stage`: edit the script, not this.",
        )
    ]
    cells.append(_cell("code", definitions))
    for heading, code in NOTEBOOK_STAGES:
        cells += [_cell("markdown", f"## {heading}"), _cell("code", code)]
    for number, cell in enumerate(cells):  # nbformat 4.5 wants ids; stable ones diff well
        cell["id"] = f"cell-{number}"
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _cell(kind: str, text: str) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "cell_type": kind,
        "metadata": {},
        "source": text.splitlines(keepends=True),
    }
    if kind == "code":
        cell |= {"execution_count": None, "outputs": []}
    return cell


def _kernel_string_errors(value: Any, what: str) -> list[str]:
    parts = value.split("/") if isinstance(value, str) else []
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return [f"{what} {value!r} is not username/kernel-slug"]
    if len(parts[1]) < 5:
        return [f"{what} {value!r}: the kernel slug must be at least five characters"]
    return []


def _as_bool(value: Any) -> bool | None:
    """The CLI's get_bool: a bool, or the strings 'true'/'false' in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _list(meta: dict[str, Any], key: str, errors: list[str]) -> list[Any]:
    value = meta.get(key, [])
    if not isinstance(value, list):
        errors.append(f"{key} must be a list, got {value!r}")
        return []
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help="the metadata file")
    parser.add_argument("--check", action="store_true", help="validate (exit 1 on any error)")
    parser.add_argument("--write", action="store_true", help="fill the file from the config")
    parser.add_argument(
        "--id", dest="kernel_id", default=None, help="USER/kernel-slug: written to [kaggle]"
    )
    parser.add_argument("--title", default=None, help="kernel title (slugifies to the slug)")
    parser.add_argument(
        "--dataset", action="append", default=[], help="add a dataset source (repeatable)"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="add a model source, owner/model/framework/instance/version (repeatable)",
    )
    parser.add_argument("--stage", type=Path, default=None, help="write a push folder here")


def identity_settings(kernel_id: str | None, title: str | None, config: Config) -> dict[str, str]:
    """The [kaggle] fields `--id USER/SLUG` and `--title T` set (the title made from the
    slug when the current one does not slugify to it)."""
    settings: dict[str, str] = {}
    slug = config.kaggle.kernel_slug
    if kernel_id is not None:
        owner, _, slug = kernel_id.partition("/")
        if not owner or not slug or "/" in slug:
            raise ConfigError(f"--id {kernel_id!r} is not USER/kernel-slug")
        settings |= {"owner": owner, "kernel_slug": slug}
    if title is not None:
        settings["kernel_title"] = title
    elif kaggle_slugify(config.kaggle.kernel_title) != slug:
        settings["kernel_title"] = slug.replace("-", " ").title()
    return settings


def write_identity(toml_path: Path, settings: dict[str, str]) -> None:
    """Set these keys of the config file's [kaggle] table, keeping every other line."""
    lines = toml_path.read_text(encoding="utf-8").splitlines() if toml_path.is_file() else []
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "[kaggle]")
    except StopIteration:
        lines += ["", "[kaggle]"]
        start = len(lines) - 1
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
        len(lines),
    )
    for key, value in settings.items():
        line = f"{key} = {json.dumps(value)}"
        at = next((i for i in range(start + 1, end) if re.match(rf"\s*{key}\s*=", lines[i])), None)
        if at is None:
            lines.insert(end, line)
            end += 1
        else:
            lines[at] = line
    toml_path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    config_path = Path(args.config_file) if args.config_file else PRODUCTION_CONFIG
    try:
        config = load_config(args.profile or "aimo3", config_path, args.overrides)
        if args.write and (args.kernel_id is not None or args.title is not None):
            settings = identity_settings(args.kernel_id, args.title, config)
            sets = [f"kaggle.{key}={json.dumps(value)}" for key, value in settings.items()]
            load_config(config.profile.name, config_path, [*args.overrides, *sets])  # valid?
            write_identity(config_path, settings)
            console.print(f"wrote [kaggle] {settings} to {config_path}")
            config = load_config(config.profile.name, config_path, args.overrides)
    except ConfigError as exc:
        console.print(f"[red]error[/red]: {exc}")
        return 2
    path: Path = args.path
    try:
        existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        console.print(f"[red]error[/red]: {path} is not valid JSON: {exc}")
        return 1
    meta = existing
    if args.write:
        meta = metadata_from_config(config, existing, tuple(args.dataset), tuple(args.model))
        path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {path}")
    if not meta:
        console.print(f"[red]error[/red]: {path} is missing; write it with --write --id USER/SLUG")
        return 1
    errors = check_metadata(meta, path.parent, config)
    for error in errors:
        console.print(f"[red]error[/red]: {error}")
    if errors:
        return 1
    if args.stage is not None:
        console.print(f"staged {stage(meta, path.parent, args.stage)}")
    console.print(f"{path}: ok for profile {config.profile.name}")
    return 0
