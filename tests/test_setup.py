"""The README's set-up commands install what the tests and the documented commands need.

Issue 21 item 1: the README's test command left out the `kaggle` extra, so
`test_rehearse.py`'s gateway hook found no grpc. A missing dependency is a
failure here, with the command that installs it, not a skip elsewhere.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
TEST_COMMAND = re.compile(r"pip install -e '\.\[([\w,]+)\]'[^\n]*&& python -m pytest -q")


def readme_test_command() -> tuple[str, set[str]]:
    """The README's test command and the extras it installs."""
    found = TEST_COMMAND.search((REPO / "README.md").read_text(encoding="utf-8"))
    assert found, "README.md has no `pip install -e '.[...]' ... && python -m pytest -q` line"
    return found.group(0), set(found.group(1).split(","))


def extras() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["optional-dependencies"]


def test_the_readme_test_command_installs_every_extra() -> None:
    """Every extra holds what some test or documented command needs (kaggle: the real
    kaggle_evaluation's grpcio, protobuf, pandas; hf: torch, transformers; openai: httpx)."""
    command, named = readme_test_command()
    assert named == set(extras()), f"{command!r} misses {sorted(set(extras()) - named)}"
    assert command in (REPO / ".ci" / "run").read_text(encoding="utf-8")  # CI runs the same


def test_every_dependency_the_tests_need_is_installed() -> None:
    command, named = readme_test_command()
    missing = []
    for extra in sorted(named):
        for line in extras()[extra]:
            requirement = Requirement(line)
            try:
                version = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(f"{requirement} ({extra})")
                continue
            if not requirement.specifier.contains(version, prereleases=True):
                missing.append(f"{requirement} ({extra}; {version} installed)")
    assert not missing, f"not installed: {missing}; run the README's `{command}`"
