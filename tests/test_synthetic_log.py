"""The embedded synthetic attempt log: made by the repo's own model, and like the real log."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from submission.synthetic_log import (
    EMBEDDED_LOG,
    fit,
    fitted_log_statistics,
    generate,
    load_embedded_model,
    summary_statistics,
)

# How far the embedded log may sit from the real one: about twice the spread of each
# statistic over 20 logs drawn from the fitted model (the model's own noise at 25 problems),
# except errors_wrong, which the model under-draws (wrong answers concentrate on the longest,
# most code-heavy attempts of a few problems; docs/policy.md).
ABSOLUTE = {
    "no_answer_share": 0.12,
    "right_share_of_answers": 0.14,
    "problems_some_attempt_right": 0.14,
    "problems_majority_right": 0.14,
    "errors_right": 0.25,
    "errors_wrong": 0.8,
}
RELATIVE = {
    "median_tokens": 0.2,
    "mean_code_calls": 0.3,
    "decode_tokens_per_s": 0.05,
    "code_call_s": 0.2,
    "median_time_s": 0.2,
}


def test_the_embedded_log_is_what_the_embedded_model_draws() -> None:
    model, seed = load_embedded_model()
    shipped = pl.read_csv(EMBEDDED_LOG, schema_overrides={"problem_id": pl.String})
    drawn = generate(model, seed)
    assert shipped.columns == drawn.columns
    assert shipped.equals(drawn.select(shipped.columns).cast(shipped.schema))
    assert shipped.height == model.problems * model.attempts


def test_the_embedded_log_reproduces_the_fitted_logs_statistics() -> None:
    embedded = summary_statistics(pl.read_csv(EMBEDDED_LOG))
    target = fitted_log_statistics()  # the real log's, kept beside the model
    assert set(embedded) == set(target) == set(ABSOLUTE) | set(RELATIVE)
    off = {
        name: (embedded[name], target[name])
        for name in embedded
        if abs(embedded[name] - target[name])
        > ABSOLUTE.get(name, RELATIVE.get(name, 0) * abs(target[name]))
    }
    assert not off, off


def test_the_kept_statistics_and_the_model_are_the_real_logs(shared_data: Path) -> None:
    real = pl.read_csv(
        shared_data / "attempts" / "hard50_dev_half.csv", schema_overrides={"problem_id": pl.String}
    )
    assert summary_statistics(real) == pytest.approx(fitted_log_statistics(), rel=1e-9)
    # Refitting changes nothing (up to polars' summation order).
    model, _ = load_embedded_model()
    assert dataclasses.asdict(fit(real)) == pytest.approx(dataclasses.asdict(model), rel=1e-9)


def test_fit_recovers_the_parameters_it_was_drawn_with() -> None:
    # 200 problems, so the fit's own noise is small next to the tolerances.
    model = dataclasses.replace(load_embedded_model()[0], problems=200)
    refit = fit(generate(model, seed=1))
    assert refit.decode_tokens_per_s == pytest.approx(model.decode_tokens_per_s, rel=0.03)
    assert refit.code_call_s == pytest.approx(model.code_call_s, rel=0.1)
    assert refit.calls_per_1k_tokens == pytest.approx(model.calls_per_1k_tokens, rel=0.15)
    assert refit.error_rate_wrong == pytest.approx(model.error_rate_wrong, rel=0.2)
    assert refit.unsolved_share == pytest.approx(model.unsolved_share, abs=0.05)
