"""`python -m submission build`: runs the engine build pipeline (build/pipeline.py) by path.

The pipeline lives outside the package (a top-level `build` package would
shadow PyPA's `build`), so this command finds it next to `submission/` in a
checkout and runs it with the same interpreter. Every argument goes to the
pipeline's own parser (`python -m submission build --help` shows its flags).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)
PIPELINE = Path(__file__).resolve().parents[2] / "build" / "pipeline.py"


def main(argv: list[str]) -> int:
    if not PIPELINE.is_file():
        log.error("no %s: the build pipeline ships with a checkout, not with the wheel", PIPELINE)
        return 2
    return subprocess.run([sys.executable, str(PIPELINE), *argv], check=False).returncode
