"""Which class implements each `engine.kind`, and `create_engine` to build it from the config.

Engines are imported only when chosen, so heavy dependencies (torch, tensorrt_llm)
stay unloaded for the others.
"""

from __future__ import annotations

import importlib

from submission.config import Config
from submission.engines.base import Engine, EngineError

# engine.kind -> "module:Class"; the class has `from_config(config)`.
ENGINES: dict[str, str] = {
    "replay": "submission.engines.replay:ReplayEngine",
    "sim": "submission.engines.sim:SimEngine",
    "trtllm": "submission.engines.trtllm:TrtllmEngine",
    "hf": "submission.engines.hf:HfEngine",
    "openai": "submission.engines.openai:OpenaiEngine",
}


def create_engine(config: Config) -> Engine:
    """Build the engine named by `config.engine.kind`."""
    kind = config.engine.kind
    if kind not in ENGINES:
        raise EngineError(f"unknown engine kind {kind!r} (one of {', '.join(ENGINES)})")
    module_name, class_name = ENGINES[kind].split(":")
    engine_class = getattr(importlib.import_module(module_name), class_name)
    return engine_class.from_config(config)
