"""A synthetic attempt log: a seeded generative model fitted to a real log's statistics.

The real logs have no licence, so the repo ships a log drawn from this model
instead (`submission/data/synthetic_attempts.csv`, parameters in
`synthetic_attempts_model.json`); `simulate`, the sim engine and the timing
tests default to it. The model, per problem, then per attempt:

- No answer before the cut-off (is_none): the problem's rate ~ Beta(none_a, none_b).
- Right or wrong (finished attempts): the problem is unsolved (no attempt
  right) with probability `unsolved_share`, else its rate of right answers
  ~ Beta(right_a, right_b).
- Wrong answers agree: a wrong attempt gives the problem's main wrong answer
  with probability ~ Beta(agree_a, agree_b) per problem, else one of its own.
- Tokens: log tokens ~ Normal(problem mean, `log_tokens_within_sd`); harder
  problems run longer: the problem mean is `log_tokens_mean` +
  `log_tokens_per_wrong_share` x (its share of wrong answers - the mean share)
  + Normal(0, `log_tokens_between_sd`); within a problem wrong answers are
  shifted by `log_tokens_wrong_shift`; attempts without an answer
  ~ LogNormal(`none_log_tokens_mean`, `none_log_tokens_sd`).
- Code calls ~ Poisson(`calls_per_1k_tokens` x tokens / 1000 x a per-problem
  and a per-attempt factor, each log-normal with mean 1 and log sd
  `calls_problem_sd`, `calls_attempt_sd`); failed calls ~ Binomial(calls,
  error rate per call for right, wrong and no-answer attempts).
- Time: tokens / `decode_tokens_per_s` + calls x `code_call_s`, times
  LogNormal(0, `time_log_sd`). An attempt that would run past `time_cap_s`
  (the recording's cut-off) is cut there: no answer, its tokens and calls
  scaled to the time it had.
- Entropy ~ Normal(`entropy_mean`, `entropy_sd`).

`fit(frame)` estimates the parameters from a real log (method of moments);
`generate(model, seed)` draws a log. Run `python -m submission.synthetic_log
--fit REAL.csv` to refit and rewrite the embedded files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass

import polars as pl

from submission.attempt_log import DEFAULT_ATTEMPTS, calibrate_engine

EMBEDDED_LOG = DEFAULT_ATTEMPTS
EMBEDDED_MODEL = EMBEDDED_LOG.with_name("synthetic_attempts_model.json")
SEED = 13  # the embedded log's seed (fixed before its statistics were seen)


@dataclass(frozen=True)
class SyntheticLogModel:
    """The fitted parameters (see the module docstring for what each one draws)."""

    problems: int
    attempts: int
    none_a: float
    none_b: float
    unsolved_share: float
    right_a: float
    right_b: float
    agree_a: float
    agree_b: float
    log_tokens_mean: float
    log_tokens_per_wrong_share: float
    mean_wrong_share: float
    log_tokens_between_sd: float
    log_tokens_within_sd: float
    log_tokens_wrong_shift: float
    none_log_tokens_mean: float
    none_log_tokens_sd: float
    calls_per_1k_tokens: float
    calls_problem_sd: float
    calls_attempt_sd: float
    error_rate_right: float
    error_rate_wrong: float
    error_rate_none: float
    decode_tokens_per_s: float
    code_call_s: float
    time_log_sd: float
    time_cap_s: float
    entropy_mean: float
    entropy_sd: float


def _beta_moments(values: list[float]) -> tuple[float, float]:
    """Beta(a, b) with the values' mean and variance (rates kept off 0 and 1)."""
    clipped = [min(max(v, 0.02), 0.98) for v in values]
    mean = statistics.fmean(clipped)
    var = max(statistics.pvariance(clipped), 1e-4)
    common = max(mean * (1 - mean) / var - 1, 0.1)
    return mean * common, (1 - mean) * common


def fit(frame: pl.DataFrame) -> SyntheticLogModel:
    """The model's parameters from a real attempt log (the columns of the real logs)."""
    frame = frame.with_columns(
        pl.col("problem_id").cast(pl.String),
        pl.col("code_calls").fill_null(0),
        pl.col("errors").fill_null(0),
    )
    done = frame.filter(pl.col("is_none") == 0)
    right = done.filter(pl.col("is_correct") == 1)
    wrong = done.filter(pl.col("is_correct") == 0)
    none = frame.filter(pl.col("is_none") == 1)
    time_cap_s = float(done["time_s"].max())
    # Attempts that ended without an answer before the cut-off (the cut-off makes its own).
    per_problem = frame.group_by("problem_id").agg(
        ((pl.col("is_none") == 1) & (pl.col("time_s") < 0.95 * time_cap_s))
        .mean()
        .alias("none_rate"),
        pl.len().alias("attempts"),
    )
    rates = done.group_by("problem_id").agg(pl.col("is_correct").mean().alias("rate"))
    solved = [r for r in rates["rate"].to_list() if r > 0]
    agreement = [
        Counter(answers).most_common(1)[0][1] / len(answers)
        for answers in wrong.group_by("problem_id").agg(pl.col("answer"))["answer"].to_list()
        if len(answers) >= 2
    ]
    log_tokens = done.with_columns(pl.col("tokens").log().alias("lt"))
    problem_means = log_tokens.group_by("problem_id").agg(
        pl.col("lt").mean().alias("m"), (1 - pl.col("is_correct").mean()).alias("w")
    )
    # Least squares of a problem's mean log tokens on its share of wrong answers.
    w_dev = problem_means["w"] - problem_means["w"].mean()
    m_dev = problem_means["m"] - problem_means["m"].mean()
    slope = float((w_dev * m_dev).sum() / max(float((w_dev * w_dev).sum()), 1e-12))
    residual_sd = float((m_dev - slope * w_dev).std())
    mean_wrong_share = float(problem_means["w"].mean())
    within = log_tokens.join(problem_means, on="problem_id").with_columns(
        (pl.col("lt") - pl.col("m")).alias("dev")
    )
    shift = within.group_by("is_correct").agg(pl.col("dev").mean()).sort("is_correct")["dev"]
    pooled_k = float(frame["code_calls"].sum() / frame["tokens"].sum() * 1000)
    calls_per_k = frame.group_by("problem_id").agg(
        (pl.col("code_calls").sum() / pl.col("tokens").sum() * 1000 / pooled_k).alias("k")
    )
    # Each attempt's calls per 1k tokens against its problem's, where it made any calls.
    attempt_k = (
        frame.join(calls_per_k, on="problem_id")
        .filter((pl.col("code_calls") > 0) & (pl.col("k") > 0))
        .select((pl.col("code_calls") / pl.col("tokens") * 1000 / pooled_k / pl.col("k")).log())
        .to_series()
    )
    engine = calibrate_engine(frame, concurrency=1, contention=0.0)
    timed = frame.filter(pl.col("time_s") > 0)
    predicted = timed["tokens"] / engine.single_stream_rate + timed["code_calls"] * (
        engine.code_call_s
    )
    time_log_sd = float((timed["time_s"] / predicted).log().std())

    def error_rate(rows: pl.DataFrame) -> float:
        return float(rows["errors"].sum() / max(1, rows["code_calls"].sum()))

    none_a, none_b = _beta_moments(per_problem["none_rate"].to_list())
    right_a, right_b = _beta_moments(solved)
    agree_a, agree_b = _beta_moments(agreement)
    return SyntheticLogModel(
        problems=per_problem.height,
        attempts=int(per_problem["attempts"].median()),
        none_a=none_a,
        none_b=none_b,
        unsolved_share=1 - len(solved) / max(1, rates.height),
        right_a=right_a,
        right_b=right_b,
        agree_a=agree_a,
        agree_b=agree_b,
        log_tokens_mean=float(problem_means["m"].mean()),
        log_tokens_per_wrong_share=slope,
        mean_wrong_share=mean_wrong_share,
        log_tokens_between_sd=residual_sd,
        log_tokens_within_sd=float(within["dev"].std()),
        log_tokens_wrong_shift=float(shift[0] - shift[1]),
        none_log_tokens_mean=float(none["tokens"].log().mean()),
        none_log_tokens_sd=float(none["tokens"].log().std()),
        calls_per_1k_tokens=pooled_k,
        calls_problem_sd=float(calls_per_k.filter(pl.col("k") > 0)["k"].log().std()),
        calls_attempt_sd=float(attempt_k.std()),
        error_rate_right=error_rate(right),
        error_rate_wrong=error_rate(wrong),
        error_rate_none=error_rate(none),
        decode_tokens_per_s=engine.single_stream_rate,
        code_call_s=engine.code_call_s,
        time_log_sd=time_log_sd,
        time_cap_s=time_cap_s,
        entropy_mean=float(frame["entropy"].mean()),
        entropy_sd=float(frame["entropy"].std()),
    )


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method, split so exp(-mean) never underflows."""
    count = 0
    while mean > 0:
        step = min(mean, 30.0)
        mean -= step
        limit, product = math.exp(-step), rng.random()
        while product > limit:
            count += 1
            product *= rng.random()
    return count


def _mean_one_lognormal(rng: random.Random, log_sd: float) -> float:
    return math.exp(rng.gauss(-log_sd * log_sd / 2, log_sd))


def _binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


def generate(model: SyntheticLogModel, seed: int = SEED) -> pl.DataFrame:
    """One synthetic log: model.problems problems x model.attempts attempts, seeded."""
    rng = random.Random(seed)
    rows = []
    for index in range(model.problems):
        problem_id = f"syn{index:03d}"
        none_rate = rng.betavariate(model.none_a, model.none_b)
        right_rate = (
            0.0
            if rng.random() < model.unsolved_share
            else rng.betavariate(model.right_a, model.right_b)
        )
        agree = rng.betavariate(model.agree_a, model.agree_b)
        correct = rng.randrange(100_000)
        main_wrong = (correct + rng.randrange(1, 100_000)) % 100_000
        mean_log_tokens = rng.gauss(
            model.log_tokens_mean
            + model.log_tokens_per_wrong_share * (1 - right_rate - model.mean_wrong_share),
            model.log_tokens_between_sd,
        )
        calls_factor = _mean_one_lognormal(rng, model.calls_problem_sd)
        for attempt_num in range(1, model.attempts + 1):
            is_none = rng.random() < none_rate
            is_correct = not is_none and rng.random() < right_rate
            if is_none:
                answer = None
                log_tokens = rng.gauss(model.none_log_tokens_mean, model.none_log_tokens_sd)
                error_rate = model.error_rate_none
            else:
                if is_correct:
                    answer = correct
                elif rng.random() < agree:
                    answer = main_wrong
                else:
                    answer = (correct + rng.randrange(1, 100_000)) % 100_000
                shift = 0.0 if is_correct else model.log_tokens_wrong_shift
                log_tokens = rng.gauss(mean_log_tokens + shift, model.log_tokens_within_sd)
                error_rate = model.error_rate_right if is_correct else model.error_rate_wrong
            tokens = max(1, round(math.exp(log_tokens)))
            rate = calls_factor * _mean_one_lognormal(rng, model.calls_attempt_sd)
            calls = _poisson(rng, model.calls_per_1k_tokens * tokens / 1000 * rate)
            seconds = tokens / model.decode_tokens_per_s + calls * model.code_call_s
            seconds *= math.exp(rng.gauss(0.0, model.time_log_sd))
            if seconds > model.time_cap_s:  # cut off: what it had decoded by then, no answer
                kept = model.time_cap_s / seconds
                tokens, calls, seconds = (
                    max(1, round(tokens * kept)),
                    round(calls * kept),
                    model.time_cap_s,
                )
                is_none, is_correct, answer = True, False, None
                error_rate = model.error_rate_none
            rows.append(
                {
                    "problem_id": problem_id,
                    "attempt_num": attempt_num,
                    "answer": answer,
                    "is_none": int(is_none),
                    "is_correct": int(is_correct),
                    "entropy": round(rng.gauss(model.entropy_mean, model.entropy_sd), 3),
                    "code_calls": calls,
                    "errors": _binomial(rng, calls, min(1.0, error_rate)),
                    "tokens": tokens,
                    "time_s": round(min(seconds, model.time_cap_s), 1),
                }
            )
    return pl.DataFrame(rows, schema_overrides={"answer": pl.Int64})


def summary_statistics(frame: pl.DataFrame) -> dict[str, float]:
    """What the synthetic log must reproduce of the real one (tests compare these)."""
    done = frame.filter(pl.col("is_none") == 0)
    by_problem = done.group_by("problem_id").agg(
        pl.col("is_correct").mean().alias("rate"),
        pl.col("is_correct").max().alias("any_right"),
        pl.col("answer").mode().first().alias("mode"),
        pl.col("answer").filter(pl.col("is_correct") == 1).first().alias("truth"),
    )
    problems = frame["problem_id"].n_unique()
    engine = calibrate_engine(frame, concurrency=1, contention=0.0)
    wrong = done.filter(pl.col("is_correct") == 0)
    right = done.filter(pl.col("is_correct") == 1)
    shares = frame.group_by("problem_id").agg(pl.col("is_none").mean())["is_none"]
    return {
        "no_answer_share": float(shares.mean()),  # per problem, then averaged
        "right_share_of_answers": float(by_problem["rate"].mean()),
        "problems_some_attempt_right": float(by_problem["any_right"].sum() / problems),
        "problems_majority_right": float(
            (by_problem["mode"] == by_problem["truth"]).fill_null(False).sum() / problems
        ),
        "median_tokens": float(done["tokens"].median()),
        "mean_code_calls": float(frame["code_calls"].mean()),
        "errors_right": float(right["errors"].mean()) if right.height else 0.0,
        "errors_wrong": float(wrong["errors"].mean()) if wrong.height else 0.0,
        "decode_tokens_per_s": engine.single_stream_rate,
        "code_call_s": engine.code_call_s,
        "median_time_s": float(frame["time_s"].median()),
    }


def write_embedded(real: pl.DataFrame, seed: int = SEED) -> None:
    """Fit `real`, draw the embedded log, and keep the real log's statistics beside the model."""
    model = fit(real)
    record = {
        "seed": seed,
        "model": dataclasses.asdict(model),
        "fitted_log_statistics": summary_statistics(real),
    }
    EMBEDDED_MODEL.write_text(json.dumps(record, indent=1) + "\n")
    generate(model, seed).write_csv(EMBEDDED_LOG)


def load_embedded_model() -> tuple[SyntheticLogModel, int]:
    """The embedded log's parameters and seed."""
    record = json.loads(EMBEDDED_MODEL.read_text())
    return SyntheticLogModel(**record["model"]), record["seed"]


def fitted_log_statistics() -> dict[str, float]:
    """summary_statistics() of the real log the embedded model was fitted to."""
    return json.loads(EMBEDDED_MODEL.read_text())["fitted_log_statistics"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fit", required=True, help="the real attempt log to fit (CSV)")
    args = parser.parse_args(argv)
    write_embedded(pl.read_csv(args.fit, schema_overrides={"problem_id": pl.String}))
    print(f"wrote {EMBEDDED_MODEL} and {EMBEDDED_LOG}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
