"""`python -m submission bench sandbox`: our sandbox against its two anchors, same snippets.

Anchors, run in the same process on the same snippets: (a) a fresh `python -c`
per call with a math/numpy/sympy prelude (the AIMO-2 runner-up's approach; a
stateful sequence is replayed from its first cell each call), (b) one Jupyter
kernel driven by `jupyter_client` (the AIMO-3 top harnesses' approach).
Also measured: a new session's latency, how late a timed-out call comes back
(the interrupt lands; the interrupt does not land and the session is killed and
restored; a crash and its restore), many sessions at once, and what the guards
(cgroups, namespaces, the seccomp filter) cost: the same measures without them, in the
same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from submission.config import Config, add_config_arguments, config_from_args
from submission.families.registry import create_family
from submission.sandbox.sandbox import Sandbox

SNIPPETS: dict[str, list[str]] = {
    "trivial print": ["print(1+1)"],
    "sympy factor": ["import sympy\nx = sympy.Symbol('x')\nprint(sympy.factor(x**4 - 1))"],
    "short loop": ["s = 0\nfor i in range(10000):\n    s += i * i\nprint(s)"],
    "stateful sequence": ["a = 12", "b = a ** 2 + 1", "import math\nprint(math.gcd(a, b), b)"],
}
PRELUDE = (
    "import math, itertools, fractions, functools, collections\nimport numpy as np\nimport sympy\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--reps", type=int, default=100, help="calls per snippet, our sandbox")
    parser.add_argument("--anchor-reps", type=int, default=5, help="calls per snippet, python -c")
    parser.add_argument("--kernel-reps", type=int, default=30, help="calls per snippet, Jupyter")
    parser.add_argument("--concurrent", type=int, default=16, help="sessions run at once")
    parser.add_argument("--no-jupyter", action="store_true", help="skip the Jupyter anchor")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    results: dict[str, Any] = {"snippets": {}, "sandbox": {}}
    with Sandbox.from_config(config, create_family(config).session_prelude) as sandbox:
        sandbox.run("pass", session="warm-up")
        for name, cells in SNIPPETS.items():
            results["snippets"][name] = {
                "ours_ms": _p50_ms(_ours(sandbox, cells), args.reps),
                "python_c_ms": _p50_ms(_python_c(cells), args.anchor_reps),
            }
        results["sandbox"] = _sandbox_numbers(sandbox, args)
    results["guards"] = _guards_cost(config, args)
    if not args.no_jupyter:
        _jupyter(results, args.kernel_reps)
    if args.json:
        Console().print_json(json.dumps(results))
    else:
        _print_tables(results)
    return 0


# Sessions a snippet's calls rotate over, and how long the spare pool gets to refill
# before timing starts: the forks that start those sessions and refill the pool would
# otherwise run under the first hundred calls (50 ms of them), which they slow.
ROTATION = 4
SETTLE_S = 1.0


def _ours(sandbox: Sandbox, cells: list[str]) -> Callable[[], float]:
    counter = iter(range(1 << 30))
    for i in range(ROTATION):
        sandbox.run("pass", session=f"bench-{len(cells)}-{i}")
    time.sleep(SETTLE_S)

    def call() -> float:
        session = f"bench-{len(cells)}-{next(counter) % ROTATION}"
        start = time.perf_counter()
        for cell in cells:
            result = sandbox.run(cell, session=session)
            if result.status != "ok":
                raise RuntimeError(f"benchmark snippet failed: {result}")
        return (time.perf_counter() - start) / len(cells)

    return call


def _python_c(cells: list[str]) -> Callable[[], float]:
    def call() -> float:
        start = time.perf_counter()
        for upto in range(1, len(cells) + 1):  # no state: replay every earlier cell
            code = PRELUDE + "\n".join(cells[:upto])
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        return (time.perf_counter() - start) / len(cells)

    return call


def _new_session(sandbox: Sandbox) -> Callable[[], float]:
    counter = iter(range(1 << 30))

    def call() -> float:
        session = f"bench-new-{next(counter)}"
        start = time.perf_counter()
        sandbox.run("print(1)", session=session)
        elapsed = time.perf_counter() - start
        sandbox.close_session(session)
        time.sleep(0.25)  # attempts start one at a time: let the spare refill (a fork, busy: 80 ms)
        return elapsed

    return call


def _sandbox_numbers(sandbox: Sandbox, args: argparse.Namespace) -> dict[str, Any]:
    numbers: dict[str, Any] = {}
    numbers["new_session_spare_p50_ms"] = _p50_ms(_new_session(sandbox), args.anchor_reps * 4)
    numbers.update(_timeout_paths(sandbox))

    async def many() -> list[str]:
        calls = [
            sandbox.arun("import time; time.sleep(0.5); print(1)", session=f"bench-many-{i}")
            for i in range(args.concurrent)
        ]
        return [r.status for r in await asyncio.gather(*calls)]

    start = time.perf_counter()
    statuses = asyncio.run(many())
    numbers["concurrent_sessions"] = args.concurrent
    numbers["concurrent_all_ok"] = all(s == "ok" for s in statuses)
    numbers["concurrent_wall_s_for_0.5s_sleeps"] = round(time.perf_counter() - start, 3)
    return numbers


HISTORY = ("a = 12", "import sympy\nb = sympy.factorint(a * 360)", "def f(x):\n    return x + a")
STUBBORN = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"


def _timeout_paths(sandbox: Sandbox, reps: int = 7, timeout: float = 0.2) -> dict[str, Any]:
    """How late a timed-out call returns: the interrupt lands; it does not (kill, then
    restore the three cells before it); and a crash's call (restore included)."""
    late: dict[str, list[float]] = {"interrupt": [], "kill_restore": [], "crash_restore": []}
    states = set()
    for rep in range(reps):
        session = f"bench-timeout-{rep}"
        for cell in HISTORY:
            sandbox.run(cell, session=session)
        landed = sandbox.run("while True: pass", session=session, timeout=timeout)
        killed = sandbox.run(STUBBORN, session=session, timeout=timeout)
        crashed = sandbox.run("import os\nos._exit(1)", session=session)
        late["interrupt"].append((landed.seconds - timeout) * 1000)
        late["kill_restore"].append((killed.seconds - timeout) * 1000)
        late["crash_restore"].append(crashed.seconds * 1000)
        states |= {f"{r.status}/{r.state}" for r in (landed, killed, crashed)}
        sandbox.close_session(session)
    grace_ms = sandbox.config.interrupt_grace_s * 1000
    numbers: dict[str, Any] = {}
    for path, values in late.items():
        numbers[f"{path}_late_p50_ms"] = round(statistics.median(values), 2)
        numbers[f"{path}_late_max_ms"] = round(max(values), 2)
    numbers["kill_restore_minus_grace_p50_ms"] = round(
        statistics.median(late["kill_restore"]) - grace_ms, 2
    )
    numbers["timeout_paths_ended"] = sorted(states)
    return numbers


# Guard sets measured side by side: every guard this machine offers (issue 18 added the
# seccomp filter); without the filter (issue 11's guards); without cgroups, namespaces
# and the filter (the sandbox before issue 11: rlimits and a uid per session).
GUARD_SETS = {
    "all guards": {},
    "without seccomp": {"use_seccomp": False},
    "without cgroups, namespaces, seccomp": {
        "use_cgroups": False,
        "use_namespaces": False,
        "use_seccomp": False,
    },
}


def _guards_cost(config: Config, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The same measures with each set of guards (GUARD_SETS), interleaved: every
    measurement takes one sample from each set in turn, so what else loads the machine
    meanwhile weighs on all of them alike."""
    prelude = create_family(config).session_prelude
    variants = {}
    for label, switched_off in GUARD_SETS.items():
        variants[label] = copy.deepcopy(config)
        for name, value in switched_off.items():
            setattr(variants[label].sandbox, name, value)
    rows: dict[str, dict[str, float]] = {label: {} for label in variants}
    with contextlib.ExitStack() as stack:
        warm = {
            label: stack.enter_context(Sandbox.from_config(variant, prelude))
            for label, variant in variants.items()
        }
        for sandbox in warm.values():
            sandbox.run("pass", session="warm-up")
        trivial = SNIPPETS["trivial print"]
        _interleaved(rows, "call_p50_ms", warm, lambda sb: _ours(sb, trivial), args.reps)
        _interleaved(rows, "new_session_spare_p50_ms", warm, _new_session, args.anchor_reps * 4)
    with contextlib.ExitStack() as stack:
        cold = {}
        for label, variant in variants.items():
            cold_config = copy.deepcopy(variant)
            cold_config.sandbox.spare_sessions = 0  # a new session forked on demand
            cold[label] = stack.enter_context(Sandbox.from_config(cold_config, prelude))
            cold[label].run("pass", session="warm-up")
        _interleaved(rows, "new_session_fork_p50_ms", cold, _new_session, args.anchor_reps * 4)
    return rows


def _interleaved(
    rows: dict[str, dict[str, float]],
    measure: str,
    sandboxes: dict[str, Sandbox],
    make_call: Callable[[Sandbox], Callable[[], float]],
    reps: int,
) -> None:
    calls = {label: make_call(sandbox) for label, sandbox in sandboxes.items()}
    samples: dict[str, list[float]] = {label: [] for label in sandboxes}
    for call in calls.values():
        call()  # warm
    for _ in range(max(1, reps)):
        for label, call in calls.items():
            samples[label].append(call())
    for label, values in samples.items():
        rows[label][measure] = round(statistics.median(values) * 1000, 3)


def _jupyter(results: dict[str, Any], reps: int) -> None:
    from jupyter_client.manager import start_new_kernel

    start = time.perf_counter()
    manager, client = start_new_kernel(kernel_name="python3")
    results["sandbox"]["jupyter_kernel_start_ms"] = round((time.perf_counter() - start) * 1000, 1)
    try:
        client.execute_interactive(PRELUDE, timeout=60, output_hook=lambda msg: None)

        for name, cells in SNIPPETS.items():

            def call(cells: list[str] = cells) -> float:
                begin = time.perf_counter()
                for cell in cells:
                    reply = client.execute_interactive(cell, timeout=60, output_hook=lambda m: None)
                    if reply["content"]["status"] != "ok":
                        raise RuntimeError(f"benchmark snippet failed in Jupyter: {reply}")
                return (time.perf_counter() - begin) / len(cells)

            results["snippets"][name]["jupyter_ms"] = _p50_ms(call, reps)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _p50_ms(call: Callable[[], float], reps: int) -> float:
    call()  # warm
    return round(statistics.median(call() for _ in range(max(1, reps))) * 1000, 3)


def _print_tables(results: dict[str, Any]) -> None:
    from rich.table import Table

    console = Console()
    table = Table(title="sandbox: p50 ms per call (same snippets, same process)")
    for column in ("snippet", "ours", "python -c (a)", "jupyter (b)"):
        table.add_column(column, justify="left" if column == "snippet" else "right")
    for name, row in results["snippets"].items():
        table.add_row(
            name,
            f"{row['ours_ms']:.3f}",
            f"{row['python_c_ms']:.1f}",
            f"{row['jupyter_ms']:.2f}" if "jupyter_ms" in row else "-",
        )
    console.print(table)
    numbers = Table(title="sandbox: sessions")
    numbers.add_column("measure")
    numbers.add_column("value", justify="right")
    for key, value in results["sandbox"].items():
        numbers.add_row(key, str(value))
    console.print(numbers)
    guards = Table(title="sandbox: what the guards cost (p50 ms, same run)")
    guards.add_column("measure")
    for label in results["guards"]:
        guards.add_column(label, justify="right")
    for measure in next(iter(results["guards"].values())):
        guards.add_row(measure, *(f"{row[measure]:.3f}" for row in results["guards"].values()))
    console.print(guards)
