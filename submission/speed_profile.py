"""A speed profile: how fast an engine decodes on one box, measured there, for the simulator.

An attempt log says how many tokens and code calls the model needs; a profile
says how fast the box that will run it (the competition's) decodes them: the
tokens/s of each stream with 1..K streams at once, the fit of the simulator's
engine model to them, R1 / (1 + a*(n-1)) tokens/s per stream with n streams
(least squares of 1/rate on n-1: the intercept is 1/R1, the slope a/R1), and
the seconds this box's sandbox takes for a recorded code cell. `python -m
submission bench speed` measures and writes one; `simulate --speed-profile`
reads it. Plain JSON, one object.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class SpeedProfileError(ValueError):
    """A profile file that can't be used, with the reason."""


@dataclass(frozen=True)
class SpeedProfile:
    engine: str  # engine.kind
    model: str  # what it served (model folder, engine folder, served name)
    device: str  # the GPU's name, or "cpu"
    measured_at: str  # ISO date and time
    streams: tuple[int, ...]  # streams at once, per measurement
    tokens_per_s: tuple[float, ...]  # each stream's rate at that count
    code_call_s: float  # median seconds of a recorded code cell in this box's sandbox
    single_stream_rate: float  # fitted R1
    contention: float  # fitted a

    def describe(self) -> str:
        return (
            f"{self.engine} {self.model or ''} on {self.device} ({self.measured_at}): "
            f"R1 = {self.single_stream_rate:.1f} tokens/s, a = {self.contention:.3f}"
        ).replace("  ", " ")


def fit_engine_model(streams: Sequence[int], rates: Sequence[float]) -> tuple[float, float]:
    """(R1, a) of rate(n) = R1 / (1 + a*(n-1)), by least squares of 1/rate on n-1.

    One stream count alone gives a = 0 (nothing to fit a slope to); a is never
    negative (an engine is not faster per stream with more streams).
    """
    if not streams or len(streams) != len(rates) or min(rates) <= 0:
        raise SpeedProfileError("need a positive rate for each stream count")
    xs = [n - 1.0 for n in streams]
    ys = [1.0 / r for r in rates]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = (
        sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0
    )
    slope = max(0.0, slope)
    intercept = mean_y - slope * mean_x
    if intercept <= 0:  # the fitted line has no positive single-stream time: no slope
        intercept, slope = min(ys), 0.0
    return 1.0 / intercept, slope / intercept


def save_profile(profile: SpeedProfile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(profile), indent=1) + "\n", encoding="utf-8")


def load_profile(path: Path) -> SpeedProfile:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpeedProfileError(f"speed profile not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise SpeedProfileError(f"speed profile {path} is not readable JSON: {exc}") from None
    names = [f.name for f in dataclasses.fields(SpeedProfile)]
    missing = [name for name in names if name not in data] if isinstance(data, dict) else names
    if missing:
        raise SpeedProfileError(f"speed profile {path} lacks {missing}")
    try:
        profile = SpeedProfile(
            **{
                **{name: data[name] for name in names},
                "streams": tuple(int(n) for n in data["streams"]),
                "tokens_per_s": tuple(float(r) for r in data["tokens_per_s"]),
            }
        )
    except (TypeError, ValueError) as exc:
        raise SpeedProfileError(f"speed profile {path}: {exc}") from None
    if profile.single_stream_rate <= 0 or profile.contention < 0 or profile.code_call_s < 0:
        raise SpeedProfileError(
            f"speed profile {path}: R1 must be positive, a and the code-call time not negative"
        )
    return profile
