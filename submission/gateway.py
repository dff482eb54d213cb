"""The built-in gateway replay: the competition gateway's calling convention, without gRPC.

Used when no real `kaggle_evaluation` is at hand. It reproduces what the real
gateways do (read from the packages shipped with the competitions: AIMO-2's
`kaggle_evaluation` v0.3.0, `aimo_2_gateway.py` + `core/base_gateway.py` +
`core/templates.py` + `core/relay.py`; AIMO-3's v0.9.0, same files with
`aimo_3_gateway.py`):

- `pl.read_csv(test_csv)` (dtypes inferred), shuffled with
  `sample(fraction=1.0, shuffle=True, with_replacement=False, seed=...)`;
- for each one-row slice `row`, `predict(*row)`: one Series per CSV column,
  each sent through parquet and back as the relay does, called from a worker
  thread (the gRPC server's single worker), one call at a time;
- the response sent back through Arrow IPC, as the relay does;
- a response deadline after the first call (AIMO-2: 30 min, AIMO-3: 9 h);
- validation: v0.3.0 requires a frame of the right length whose `id` column
  equals the served id; v0.9.0 accepts any frame or Series of the right length
  (or a bare int/float/str/bool) and overwrites the id column with the served
  one;
- `submission.parquet` from `pl.concat(..., how="vertical_relaxed")`.

Unlike the real one it writes the file atomically (nothing on failure), and
`check_submission` adds the checks the scorer needs (every id once, Int64
answers in range), which neither gateway makes.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.ipc

from submission.config import ProfileConfig
from submission.kaggle import find_kaggle_evaluation

__all__ = [
    "GATEWAY_RULES",
    "GatewayError",
    "GatewayRules",
    "check_submission",
    "find_kaggle_evaluation",
    "run_builtin_gateway",
]

log = logging.getLogger(__name__)

SUBMISSION_FILE = "submission.parquet"


@dataclass(frozen=True)
class GatewayRules:
    """What differs between the gateway versions the profiles use."""

    version: str
    # Deadline for each response after the first (set_response_timeout_seconds).
    response_timeout_s: float
    # v0.3.0: the returned `id` must equal the served one; v0.9.0: overwritten instead.
    validates_id: bool
    # How a missed deadline is reported (v0.3.0: the gRPC error; v0.9.0: its own type).
    deadline_error: str


GATEWAY_RULES: dict[str, GatewayRules] = {
    "aimo2": GatewayRules(
        "0.3.0", 30 * 60.0, validates_id=True, deadline_error="SERVER_CONNECTION_FAILED"
    ),
    "aimo3": GatewayRules(
        "0.9.0", 9 * 3600.0, validates_id=False, deadline_error="GRPC_DEADLINE_EXCEEDED"
    ),
}


class GatewayError(RuntimeError):
    """What the real gateway raises (GatewayRuntimeError): a type name and details."""

    def __init__(self, error_type: str, details: str) -> None:
        super().__init__(f"{error_type}: {details}")
        self.error_type = error_type
        self.details = details


def run_builtin_gateway(
    predict: Callable[..., Any],
    test_csv: Path,
    profile: ProfileConfig,
    out_dir: Path,
    seed: int = 0,
    response_timeout_s: float | None = None,
) -> Path:
    """Serve every row of `test_csv` to `predict` as the profile's gateway does.

    Returns the path of the submission.parquet written in `out_dir`. Raises
    GatewayError where the real gateway would fail the run.
    """
    rules = GATEWAY_RULES.get(profile.name)
    if rules is None:
        raise ValueError(
            f"no gateway rules for profile {profile.name!r}; know {sorted(GATEWAY_RULES)}"
        )
    timeout_s = rules.response_timeout_s if response_timeout_s is None else response_timeout_s
    _check_callable(predict)
    test = pl.read_csv(test_csv)
    if "id" not in test.columns:
        raise GatewayError("GATEWAY_RAISED_EXCEPTION", f"{test_csv} has no id column")
    test = test.sample(fraction=1.0, shuffle=True, with_replacement=False, seed=seed)
    log.info(
        "built-in gateway v%s (%s): %d rows from %s, response deadline %.0f s",
        rules.version,
        profile.name,
        test.height,
        test_csv,
        timeout_s,
    )
    predictions: list[Any] = []
    row_ids: list[pl.DataFrame] = []
    for index, row in enumerate(test.iter_slices(n_rows=1)):
        args = [_through_parquet(column) for column in row.get_columns()]
        started = time.monotonic()
        # The deadline applies only after the very first response.
        response = _call_in_worker(predict, args, None if index == 0 else timeout_s, rules)
        log.debug(
            "row %d (%s): answered in %.2f s", index, row["id"][0], time.monotonic() - started
        )
        prediction = _through_relay(response)
        _validate(rules, prediction, row.select("id"))
        predictions.append(prediction)
        row_ids.append(row.select("id"))
    submission = _submission_frame(rules, predictions, row_ids)
    return _write_atomically(submission, Path(out_dir) / SUBMISSION_FILE)


def check_submission(path: Path, test_csv: Path, profile: ProfileConfig) -> list[str]:
    """What is wrong with a submission file for the scorer (empty list: nothing)."""
    problems: list[str] = []
    submission = pl.read_parquet(path)
    expected = pl.read_csv(test_csv, schema_overrides={"id": pl.String})["id"]
    if submission.columns[:2] != ["id", "answer"]:
        return [f"columns are {submission.columns}, expected id, answer first"]
    if submission.schema["answer"] != pl.Int64:
        problems.append(f"answer is {submission.schema['answer']}, expected Int64")
    ids = submission["id"].cast(pl.String)
    if ids.is_duplicated().any():
        problems.append(f"duplicated ids: {sorted(ids.filter(ids.is_duplicated()).unique())}")
    if missing := sorted(set(expected) - set(ids)):
        problems.append(f"missing ids: {missing}")
    if extra := sorted(set(ids) - set(expected)):
        problems.append(f"unknown ids: {extra}")
    answers = submission["answer"]
    if answers.null_count():
        problems.append(f"{answers.null_count()} null answers")
    low, high = profile.answer_min, profile.answer_max
    answers = answers.drop_nulls()
    if (outside := answers.filter((answers < low) | (answers > high))).len():
        problems.append(f"answers outside [{low}, {high}]: {outside.to_list()}")
    return problems


def _call_in_worker(
    predict: Callable[..., Any], args: list[pl.Series], timeout_s: float | None, rules: GatewayRules
) -> Any:
    """Call predict in a worker thread, as the gRPC server does, and wait up to the deadline."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["response"] = predict(*args)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=call, name="gateway-worker", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise GatewayError(rules.deadline_error, f"no response within {timeout_s:.0f} s")
    if "error" in outcome:
        error = outcome["error"]
        raise GatewayError("SERVER_RAISED_EXCEPTION", repr(error)) from error
    return outcome["response"]


def _check_callable(predict: Callable[..., Any]) -> None:
    """The relay's registration rules: a named plain function (looked up by __name__)."""
    name = getattr(predict, "__name__", None)
    if not isinstance(predict, types.FunctionType) or name == "<lambda>":
        raise GatewayError(
            "SERVER_MISSING_ENDPOINT",
            f"endpoint listeners must be named plain functions, got {type(predict).__name__}",
        )
    if name != "predict":
        raise GatewayError("SERVER_MISSING_ENDPOINT", f"no listener named predict (got {name!r})")


def _through_parquet(column: pl.Series) -> pl.Series:
    """A Series as the relay sends it: a one-column parquet file, read back."""
    buffer = io.BytesIO()
    pl.DataFrame(column).write_parquet(buffer, compression="lz4", statistics=False)
    buffer.seek(0)
    return pl.read_parquet(buffer).to_series(0)


def _through_relay(response: Any) -> Any:
    """The response as the gateway receives it; what the relay cannot send fails here too."""
    if isinstance(response, pl.DataFrame):
        banned = {dtype.base_type() for dtype in response.dtypes} & {pl.Enum, pl.Object, pl.Unknown}
        if banned:
            raise GatewayError("SERVER_RAISED_EXCEPTION", f"unsupported polars dtypes {banned}")
        table = response.to_arrow()
        sink = io.BytesIO()
        options = pyarrow.ipc.IpcWriteOptions(compression="lz4")
        with pyarrow.ipc.new_stream(sink, table.schema, options=options) as writer:
            writer.write_table(table)
        with pyarrow.ipc.open_stream(pa.BufferReader(sink.getvalue())) as reader:
            return pl.from_arrow(reader.read_all())
    if isinstance(response, pl.Series):
        return _through_parquet(response)
    if response is None or isinstance(response, bool | int | float | str):
        return response
    raise GatewayError(
        "SERVER_RAISED_EXCEPTION", f"Type {type(response)} not supported for KaggleEvaluation."
    )


def _validate(rules: GatewayRules, prediction: Any, row_ids: pl.DataFrame) -> None:
    if prediction is None:
        raise GatewayError("INVALID_SUBMISSION", "No prediction received")
    if rules.validates_id:  # v0.3.0 BaseGateway.validate_prediction_batch
        if not isinstance(prediction, pl.DataFrame):
            raise GatewayError("GATEWAY_RAISED_EXCEPTION", f"{type(prediction)} has no columns")
        if prediction.height != row_ids.height:
            raise GatewayError(
                "INVALID_SUBMISSION",
                f"Invalid predictions: expected {row_ids.height} rows "
                f"but received {prediction.height}",
            )
        if "id" not in prediction.columns:
            raise GatewayError("INVALID_SUBMISSION", "Prediction missing column id")
        if not prediction["id"].equals(row_ids["id"]):
            raise GatewayError(
                "INVALID_SUBMISSION", "Invalid values for id in batch of predictions."
            )
        return
    # v0.9.0 competition_agnostic_validation (AIMO-3's specific validation is empty).
    if isinstance(prediction, bool | int | float | str):
        received = 1
    elif isinstance(prediction, pl.DataFrame | pl.Series):
        received = len(prediction)
    else:
        raise GatewayError("INVALID_SUBMISSION", f"Invalid prediction data type {type(prediction)}")
    if received != row_ids.height:
        raise GatewayError(
            "INVALID_SUBMISSION",
            f"Invalid predictions: expected {row_ids.height} rows but received {received}",
        )


def _submission_frame(
    rules: GatewayRules, predictions: list[Any], row_ids: list[pl.DataFrame]
) -> pl.DataFrame:
    """The gateway's write_submission: concatenate, then (v0.9.0) put the served ids first."""
    if not predictions:
        raise GatewayError("GATEWAY_RAISED_EXCEPTION", "the test file has no rows")
    if isinstance(predictions[0], pl.DataFrame | pl.Series):
        try:
            combined = pl.concat(predictions, how="vertical_relaxed")
        except pl.exceptions.SchemaError:
            raise GatewayError("INVALID_SUBMISSION", "Inconsistent prediction types") from None
        except pl.exceptions.ComputeError:
            raise GatewayError(
                "INVALID_SUBMISSION", "Inconsistent prediction column counts"
            ) from None
        except Exception as exc:  # e.g. Series, which polars only concatenates "vertical"
            raise GatewayError("GATEWAY_RAISED_EXCEPTION", repr(exc)) from None
    else:  # scalars become one unnamed Series
        combined = pl.Series(predictions)
    if isinstance(combined, pl.Series):
        if not combined.name:  # neither AIMO gateway sets a target column name
            raise GatewayError(
                "GATEWAY_RAISED_EXCEPTION",
                "scalar or unnamed Series predictions need a target column name",
            )
        combined = combined.to_frame()
    if rules.validates_id:
        return combined
    ids = pl.concat(row_ids, how="vertical_relaxed")
    order = ids.columns + [c for c in combined.columns if c not in ids.columns]
    return combined.with_columns(ids).select(order)


def _write_atomically(frame: pl.DataFrame, path: Path) -> Path:
    """Write to a temporary file next to `path`, then rename: never a half-written file."""
    from submission.report import atomic_path

    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)
    log.info("wrote %s (%d rows)", path, frame.height)
    return path
