"""Which class implements each `prompt.family`, and `create_family` to build it from the config.

Families are imported only when chosen, so a family's dependency (openai_harmony
for harmony) stays unloaded for the others. A new family is one module and one
line here.
"""

from __future__ import annotations

import importlib

from submission.config import Config
from submission.families.base import FamilyError, ModelFamily

# prompt.family -> "module:Class"; the class has `from_config(config)`.
FAMILIES: dict[str, str] = {
    "openmath": "submission.families.openmath:OpenmathFamily",
    "tora": "submission.families.tora:ToraFamily",
    "harmony": "submission.families.harmony:HarmonyFamily",
}


def create_family(config: Config) -> ModelFamily:
    """Build the family named by `config.prompt.family` (cheap: `load()` does the heavy part)."""
    name = config.prompt.family
    if name not in FAMILIES:
        raise FamilyError(f"unknown model family {name!r} (one of {', '.join(FAMILIES)})")
    module_name, class_name = FAMILIES[name].split(":")
    family_class = getattr(importlib.import_module(module_name), class_name)
    return family_class.from_config(config)
