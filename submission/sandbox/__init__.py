"""Local exec sandbox: stateful, isolated Python sessions for the model's code.

Construct `Sandbox` first thing in the harness, before any CUDA or TensorRT-LLM
import: its constructor starts the fork server that all session processes come from.
"""

from submission.sandbox.result import ExecResult
from submission.sandbox.sandbox import Sandbox
from submission.sandbox.server import SandboxError

__all__ = ["ExecResult", "Sandbox", "SandboxError"]
