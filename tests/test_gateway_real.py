"""The built-in replay against the REAL kaggle_evaluation: same outcome for every response kind.

`kaggle_evaluation` ships with the competition data (not on PyPI) and must not be
committed, so this test runs only when `$AIMO_TEST_KAGGLE_EVALUATION` names a
folder holding one (e.g. the downloaded competition files), and in a Python
that has its dependencies (grpcio, protobuf, pandas): `$AIMO_TEST_KAGGLE_PYTHON`,
default this interpreter. Each version runs in its own subprocess (the package
adds itself to sys.path). How it was run: docs/kaggle.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
EVALUATION = os.environ.get("AIMO_TEST_KAGGLE_EVALUATION")
PYTHON = os.environ.get("AIMO_TEST_KAGGLE_PYTHON", sys.executable)

# Runs in the subprocess: every response kind through the real gateway, then the built-in one.
DRIVER = r"""
import json, sys
from pathlib import Path
import polars as pl

root, profile_name = Path(sys.argv[1]), sys.argv[2]
test_csv, work = Path(sys.argv[3]), Path(sys.argv[4])
from submission.config import load_config
from submission.gateway import GatewayError, run_builtin_gateway
from submission.kaggle import load_inference_server

RESPONSES = {
    "good": lambda c: pl.DataFrame({"id": c[0], "answer": [len(c[1][0]) % 1000]}),
    "wrong-id": lambda c: pl.DataFrame({"id": ["nope"], "answer": [1]}),
    "no-id": lambda c: pl.DataFrame({"answer": [1]}),
    "two-rows": lambda c: pl.DataFrame({"id": [c[0][0]] * 2, "answer": [1, 2]}),
    "none": lambda c: None,
    "bare-int": lambda c: 7,
    "series": lambda c: pl.Series("answer", [7]),
    "extra-column": lambda c: pl.DataFrame({"id": c[0], "answer": [1], "note": ["x"]}),
    "float-answer": lambda c: pl.DataFrame({"id": c[0], "answer": [1.0]}),
    "raises": lambda c: 1 / 0,
}
current = {}

def predict(*columns):
    return RESPONSES[current["kind"]](columns)

def outcome(path):
    frame = pl.read_parquet(path)
    return {"ok": True, "schema": {k: str(v) for k, v in frame.schema.items()},
            "rows": sorted(map(str, frame.rows()))}

profile = load_config(profile_name).profile
server_class = load_inference_server(root, profile)
results = {}
for kind in RESPONSES:
    current["kind"] = kind
    run_dir = work / kind
    (run_dir / "real").mkdir(parents=True)
    import os
    os.chdir(run_dir / "real")
    try:
        server_class(predict).run_local_gateway((str(test_csv),))
        real = outcome(run_dir / "real" / "submission.parquet")
    except Exception as exc:
        kind_of = getattr(exc, "error_type", None)
        real = {"ok": False, "error": getattr(kind_of, "name", type(exc).__name__)}
    try:
        ours = outcome(run_builtin_gateway(predict, test_csv, profile, run_dir / "ours"))
    except GatewayError as exc:
        ours = {"ok": False, "error": exc.error_type}
    results[kind] = {"real": real, "ours": ours}
print("RESULTS" + json.dumps(results))
"""


def _profiles(root: Path) -> list[str]:
    package = root / "kaggle_evaluation"
    return [
        name
        for name, server in (
            ("aimo2", "aimo_2_inference_server"),
            ("aimo3", "aimo_3_inference_server"),
        )
        if (package / f"{server}.py").is_file()
    ]


@pytest.mark.skipif(EVALUATION is None, reason="$AIMO_TEST_KAGGLE_EVALUATION not set")
def test_builtin_replay_matches_the_real_gateway(tmp_path: Path) -> None:
    root = Path(str(EVALUATION))
    probe = subprocess.run([PYTHON, "-c", "import grpc, pandas"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{PYTHON} lacks grpcio/pandas, which the real kaggle_evaluation needs")
    profiles = _profiles(root)
    assert profiles, f"{root}/kaggle_evaluation has neither AIMO server"
    for profile in profiles:
        test_csv = tmp_path / f"{profile}_test.csv"
        reference = REPO / "submission" / "data" / f"{profile}_reference.csv"
        pl.read_csv(reference).select("id", "problem").write_csv(test_csv)
        done = subprocess.run(
            [PYTHON, "-c", DRIVER, str(root), profile, str(test_csv), str(tmp_path / profile)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULTS"))
        results = json.loads(line[len("RESULTS") :])
        mismatches = {k: v for k, v in results.items() if v["real"] != v["ours"]}
        assert not mismatches, (
            f"{profile}: built-in replay differs from the real gateway: {mismatches}"
        )
        assert results["good"]["real"]["ok"]  # the comparison saw a success, not only failures
