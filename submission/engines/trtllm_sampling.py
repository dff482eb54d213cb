"""What a TensorRT-LLM engine is asked for, given what its decoding really applies (pure).

Without a drafter the engine samples with every knob (temperature 0 goes as
`top_k=1`, the LLM API's greedy). A ReDrafter engine decodes in
ExplicitDraftTokens mode, which applies only stop criteria, EOS, the seed and
the temperature: top_p, top_k, min_p and repetition_penalty are dropped
(DecodingMode::ExplicitDraftTokens in executor/types.h), and a request without
a temperature is sampled at the default, 1.0 (ExplicitDraftTokensLayer::setup).
So with a drafter the temperature is always explicit, and the knobs it would
ignore are not sent but named in `ignored`. A greedy drafter (built without
`--redrafter_no_greedy_search`) ignores temperature and seed too.
"""

from __future__ import annotations

from dataclasses import dataclass

from submission.engines.base import SamplingParams

# A sampling drafter has no greedy mode: a greedy request goes at this temperature, and a
# lower one is raised to it. ReDrafter multiplies the logits by 1/T in the engine's dtype
# (explicitDraftTokensKernels.cu stores __frcp_rn(temperature) as T; redrafter_helper.py
# `_process_logits_and_hidden_states`: logits * inverted_temperature): in float16 (max
# 65504) 1/0.001 overflows any |logit| above 65.5 to inf, and softmax to NaN. At 0.01 the
# logits may reach 655, and a gap of 0.1 still favours the argmax e^10 (22,000) to 1.
NEAR_GREEDY_TEMPERATURE = 1e-2


@dataclass(frozen=True)
class EngineSampling:
    """The sampling fields sent to TensorRT-LLM (None = not sent) and what it will not apply."""

    temperature: float | None
    top_k: int | None
    top_p: float | None
    min_p: float | None
    repetition_penalty: float | None
    seed: int | None
    ignored: tuple[str, ...] = ()  # asked-for settings the engine does not apply, as name=value
    greedy_drafter: bool = False

    def describe(self) -> str:
        """One line for the attempt log: what the engine applies, then what it ignores."""
        if self.greedy_drafter:
            applied = "greedy (greedy drafter)"
        else:
            fields = {
                "temperature": self.temperature,
                "top_k": self.top_k,
                "top_p": self.top_p,
                "min_p": self.min_p,
                "repetition_penalty": self.repetition_penalty,
                "seed": self.seed,
            }
            applied = " ".join(f"{k}={v:g}" for k, v in fields.items() if v is not None)
        return applied + (f"; ignored {' '.join(self.ignored)}" if self.ignored else "")


def engine_sampling(
    params: SamplingParams, has_drafter: bool, greedy_drafter: bool
) -> EngineSampling:
    """The fields to send for `params` to an engine with or without a (greedy) drafter."""
    greedy = params.temperature <= 0.0
    if not has_drafter:
        return EngineSampling(
            temperature=None if greedy else params.temperature,
            top_k=1 if greedy else (params.top_k or None),
            top_p=None if greedy else params.top_p,
            min_p=params.min_p or None,
            repetition_penalty=params.repetition_penalty,
            seed=params.seed,
        )
    ignored = [
        f"{name}={value:g}"
        for name, value, inert in (
            ("top_p", params.top_p, greedy or params.top_p >= 1.0),
            ("top_k", params.top_k, params.top_k == 0),
            ("min_p", params.min_p, params.min_p == 0.0),
            ("repetition_penalty", params.repetition_penalty, params.repetition_penalty == 1.0),
        )
        if not inert
    ]
    temperature = max(params.temperature, NEAR_GREEDY_TEMPERATURE)
    if greedy_drafter:
        if not greedy:
            ignored.insert(0, f"temperature={params.temperature:g}")
        if params.seed is not None:
            ignored.append(f"seed={params.seed}")
    elif 0.0 < params.temperature < NEAR_GREEDY_TEMPERATURE:
        ignored.insert(0, f"temperature={params.temperature:g} (raised to {temperature:g})")
    return EngineSampling(
        temperature=temperature,
        top_k=None,
        top_p=None,
        min_p=None,
        repetition_penalty=None,
        seed=params.seed,
        ignored=tuple(ignored),
        greedy_drafter=greedy_drafter,
    )
