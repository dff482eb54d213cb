"""State after a timeout: generated multi-turn sequences with a slow (or crashing) cell in
the middle, and whether the cells after it still see every earlier variable.

Each sequence defines values of varied kinds over a few cells (one cell fails on
purpose: a restore re-runs it too, and it must fail again harmlessly), then runs one
cell that overruns its deadline or kills its process, then defines more and checks
them all in a last cell.
Three paths: ``interrupt`` (the interrupt lands: the state is kept), ``restore``
(code that catches or ignores the interrupt, or one long C call: the process is
killed and the state restored), ``crash`` (the process dies: restored too).
Used by the multi-turn test suite and the `fidelity` command's state figure.
"""

from __future__ import annotations

import asyncio
import collections
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from submission.sandbox import Sandbox

Path = Literal["interrupt", "restore", "crash"]
PATHS: tuple[Path, ...] = ("interrupt", "restore", "crash")

# (code defining `{n}`, an expression equal to True when `{n}` is intact)
_VALUES = (
    ("{n} = {i} * 7919", "{n} == {i} * 7919"),
    ("{n} = 'text-{i}' * 3", "{n} == 'text-{i}' * 3"),
    ("{n} = [k * k for k in range({i} % 17 + 3)]", "{n} == [k * k for k in range({i} % 17 + 3)]"),
    ("{n} = {{'a': {i}, 'b': ({i}, 2.5)}}", "{n} == {{'a': {i}, 'b': ({i}, 2.5)}}"),
    ("def {n}(x):\n    return x * {i} + 1", "{n}(3) == 3 * {i} + 1"),
    (
        "class {n}:\n    k = {i}\n    def twice(self):\n        return 2 * self.k",
        "{n}().twice() == 2 * {i}",
    ),
    ("import fractions as {n}", "{n}.Fraction(1, 2) + {n}.Fraction(1, 2) == 1"),
    (
        "import sympy\n{n} = sympy.factorint({i} * 360 + 1)",
        "sympy.prod(p ** e for p, e in {n}.items()) == {i} * 360 + 1",
    ),
    (
        "import numpy as np\n{n} = np.arange({i} % 11 + 2) ** 2",
        "{n}.tolist() == [k * k for k in range({i} % 11 + 2)]",
    ),
    (
        "import random\nrandom.seed({i})\n{n} = random.randint(0, 10 ** 9)",
        "{n} == __import__('random').Random({i}).randint(0, 10 ** 9)",
    ),
    ("{n} = set(range({i} % 13))\n{n}.add(-1)", "{n} == set(range({i} % 13)) | {{-1}}"),
    ("{n} = 0\nfor k in range({i} % 50):\n    {n} += k", "{n} == sum(range({i} % 50))"),
)
_SLOW = {
    "interrupt": (
        "while True:\n    pass",
        "import time\ntime.sleep(60)",
        "import subprocess\nsubprocess.run(['sleep', '60'])",
        "import sympy\nfor k in range(10 ** 9):\n    sympy.isprime(k * k + 1)",
        "print('partial', flush=True)\nwhile True:\n    pass",
        "x = 10 ** (10 ** 8)",  # C, but CPython's long power checks for signals
    ),
    "restore": (
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
        "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\nwhile 1: pass",
        "import time\nwhile True:\n    try:\n        time.sleep(1)\n"
        "    except KeyboardInterrupt:\n        pass",
        "sum(range(10 ** 13))",  # one C call that never looks at signals
    ),
    "crash": (
        "import os\nos._exit(1)",
        "import ctypes\nctypes.string_at(0)",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    ),
}


@dataclass(frozen=True)
class Sequence:
    path: Path
    before: tuple[str, ...]
    slow: str
    after: tuple[str, ...]
    check: str  # prints True when every value defined before and after is intact


@dataclass(frozen=True)
class Outcome:
    path: Path
    slow_status: str
    slow_state: str
    intact: bool


def sequences(count: int, seed: int = 0) -> list[Sequence]:
    """`count` sequences, spread evenly over the three paths, the same for a seed."""
    rng = random.Random(seed)
    made = []
    for number in range(count):
        path = PATHS[number % len(PATHS)]
        checks: list[str] = []

        def cell(checks: list[str] = checks) -> str:
            name = f"v{len(checks)}_{rng.randrange(10**6)}"
            define, check = rng.choice(_VALUES)
            i = rng.randrange(1, 10**4)
            checks.append(check.format(n=name, i=i))
            return define.format(n=name, i=i)

        before = [cell() for _ in range(rng.randint(1, 4))]
        before.insert(rng.randrange(len(before) + 1), "undefined_name_here + 1")  # fails
        after = tuple(cell() for _ in range(rng.randint(0, 2)))
        check = "import sympy\nprint(all([\n" + "".join(f"    {c},\n" for c in checks) + "]))"
        made.append(Sequence(path, tuple(before), rng.choice(_SLOW[path]), after, check))
    return made


async def run_sequences(
    sandbox: Sandbox, generated: list[Sequence], timeout: float, concurrency: int
) -> list[Outcome]:
    """Run each sequence in a session of its own, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(number: int, sequence: Sequence) -> Outcome:
        session = f"state-after-timeout-{number}"
        async with gate:
            try:
                for code in sequence.before:
                    await sandbox.arun(code, session=session, timeout=30.0)
                slow = await sandbox.arun(sequence.slow, session=session, timeout=timeout)
                for code in sequence.after:
                    await sandbox.arun(code, session=session, timeout=30.0)
                check = await sandbox.arun(sequence.check, session=session, timeout=30.0)
            finally:
                sandbox.close_session(session)
        intact = check.status == "ok" and check.stdout == "True\n"
        return Outcome(sequence.path, slow.status, slow.state, intact)

    return list(await asyncio.gather(*(one(n, s) for n, s in enumerate(generated))))


def summarize(outcomes: list[Outcome]) -> dict[str, dict[str, object]]:
    """Per path: sequences, share whose later cells saw every earlier value, and how
    the slow cell ended (status/state counts)."""
    summary: dict[str, dict[str, object]] = {}
    for path in PATHS:
        mine = [o for o in outcomes if o.path == path]
        ends = collections.Counter(f"{o.slow_status}/{o.slow_state}" for o in mine)
        summary[path] = {
            "sequences": len(mine),
            "intact_rate": sum(o.intact for o in mine) / len(mine) if mine else 0.0,
            "slow_cell_ended": dict(ends),
        }
    return summary
