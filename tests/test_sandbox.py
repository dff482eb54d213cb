"""The local exec sandbox: sessions, IPython-like display and tracebacks, limits, hostile code.

One sandbox with small limits serves the module (spare sessions off, so the
fork server's process tree holds exactly the live sessions and leak checks can
count it). Every adversarial case asserts its status, that a new session works
afterwards, and that no process is left over.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import pwd
import re
import time
import warnings
from collections.abc import Callable, Iterator

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from submission.config import SandboxConfig, load_config
from submission.families.registry import create_family
from submission.sandbox import ExecResult, Sandbox
from submission.sandbox.cleanup import UidLeases, remove_tree

MAX_CHARS = 200
LIMITS = SandboxConfig(
    memory_mb=1024,
    cpu_time_s=3,
    file_size_mb=1,
    open_files=64,
    max_processes=32,
    max_capture_chars=MAX_CHARS,
    spare_sessions=0,
    first_session_uid=62000,  # apart from other suites' sandboxes on a shared machine
)
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(LIMITS) as sb:
        yield sb


@pytest.fixture(scope="module")
def roomy() -> Iterator[Sandbox]:
    """Output limit high enough for whole tracebacks."""
    with Sandbox(dataclasses.replace(LIMITS, max_capture_chars=100_000)) as sb:
        yield sb


def tree(sb: Sandbox) -> set[int]:
    """Every process below the fork server: the sessions and whatever they started."""
    assert sb.server_pid is not None
    return {p.pid for p in psutil.Process(sb.server_pid).children(recursive=True)}


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def assert_bounded(result: ExecResult) -> None:
    assert len(result.stdout) <= MAX_CHARS
    assert len(result.stderr) <= MAX_CHARS


# -- sessions and output ----------------------------------------------------------------


def test_session_keeps_names_between_calls_and_sessions_are_separate(sandbox: Sandbox) -> None:
    assert sandbox.run("x = 41", session="keep-a").status == "ok"
    assert sandbox.run("print(x + 1)", session="keep-a").stdout == "42\n"
    other = sandbox.run("print(x)", session="keep-b")
    assert other.status == "error"
    assert "NameError: name 'x' is not defined" in other.stderr
    assert sandbox.session_pids()["keep-a"] != sandbox.session_pids()["keep-b"]
    sandbox.close_session("keep-a")
    sandbox.close_session("keep-b")
    assert "keep-a" not in sandbox.session_pids()


def test_stdout_and_stderr_are_captured_at_the_descriptor_level(sandbox: Sandbox) -> None:
    code = (
        "import os, sys\n"
        "print('py-out')\n"
        "sys.stderr.write('py-err\\n')\n"
        "os.write(1, b'fd-out\\n')\n"
        "os.write(2, b'fd-err\\n')\n"
        "_ = os.system('echo shell-out; echo shell-err 1>&2')"
    )
    result = sandbox.run(code, session="capture")
    assert result.status == "ok"
    assert result.stdout.split() == ["py-out", "fd-out", "shell-out"]
    assert result.stderr.split() == ["py-err", "fd-err", "shell-err"]
    assert result.output == result.stdout + result.stderr
    sandbox.close_session("capture")


def test_each_stream_is_capped_and_says_so(sandbox: Sandbox) -> None:
    result = sandbox.run("print('a' * 5000)\nimport sys; sys.stderr.write('b' * 300)", "cut")
    assert (result.stdout, result.stderr, result.truncated) == (
        "a" * MAX_CHARS,
        "b" * MAX_CHARS,
        True,
    )
    short = sandbox.run("print('a' * 10)", session="cut")
    assert (short.stdout, short.truncated) == ("a" * 10 + "\n", False)
    sandbox.close_session("cut")


def test_from_config_builds_the_sandbox_from_its_section() -> None:
    config = load_config(overrides=["sandbox.max_capture_chars=7", "sandbox.spare_sessions=0"])
    with Sandbox.from_config(config) as sb:
        result = sb.run("print('0123456789')", session="cfg")
        assert sb.config.max_capture_chars == 7
    assert (result.stdout, result.truncated) == ("0123456", True)


@pytest.mark.parametrize(
    ("overrides", "warning_shown"),
    [
        (["prompt.family=openmath"], False),  # the family's prelude filters warnings
        (["prompt.family=tora"], True),
        (["prompt.family=openmath", "sandbox.session_prelude=x = 1"], True),  # set: wins
    ],
)
def test_the_session_prelude_is_the_model_familys_unless_set(
    overrides: list[str], warning_shown: bool
) -> None:
    config = load_config(overrides=[*overrides, "sandbox.spare_sessions=1"])
    config.sandbox.first_session_uid = LIMITS.first_session_uid
    with Sandbox.from_config(config, create_family(config).session_prelude) as sb:
        first = sb.run("import warnings\nwarnings.warn('careful')", session="prelude")
        restored = sb.run("import os\nos._exit(1)", session="prelude")
        again = sb.run("warnings.warn('careful again')", session="prelude")
    assert (first.status, restored.state, again.status) == ("ok", "restored", "ok")
    assert ("UserWarning" in first.stderr) == warning_shown
    assert ("UserWarning" in again.stderr) == warning_shown  # re-run after the restore


def test_an_interrupted_timeout_keeps_the_session(sandbox: Sandbox) -> None:
    sandbox.run("kept = 1", session="interrupt")
    result = sandbox.run("print('before', flush=True)\nwhile True: pass", "interrupt", timeout=0.3)
    assert (result.status, result.state, result.stdout, result.stderr) == (
        "timeout",
        "kept",
        "before\n",
        "",
    )
    assert 0.3 <= result.seconds < 0.3 + LIMITS.interrupt_grace_s
    after = sandbox.run("print(kept)", session="interrupt")
    assert (after.status, after.stdout) == ("ok", "1\n")
    sandbox.close_session("interrupt")


@pytest.mark.parametrize(
    "stubborn",
    [
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
        "import time\nwhile True:\n    try:\n        time.sleep(1)\n"
        "    except KeyboardInterrupt:\n        pass",
        "sum(range(10 ** 12))",  # one C call: the interrupt waits for it
    ],
)
def test_a_timeout_the_interrupt_cannot_end_restores_the_session(
    sandbox: Sandbox, stubborn: str
) -> None:
    sandbox.run("kept = 1", session="restore")
    sandbox.run("kept += 1\nimport math", session="restore")
    sandbox.run("1 / 0", session="restore")  # not re-run: it failed
    result = sandbox.run(stubborn, "restore", timeout=0.3)
    assert (result.status, result.state) == ("timeout", "restored"), result
    after = sandbox.run("print(kept, math.pi > 3)", session="restore")
    assert (after.status, after.stdout) == ("ok", "2 True\n")
    sandbox.close_session("restore")


def test_a_crash_restores_the_session(sandbox: Sandbox) -> None:
    sandbox.run("kept = 7", session="crash")
    result = sandbox.run("import os\nos._exit(3)", session="crash")
    assert (result.status, result.state) == ("crashed", "restored")
    after = sandbox.run("print(kept)", session="crash")
    assert (after.status, after.stdout) == ("ok", "7\n")
    sandbox.close_session("crash")


def test_a_restore_past_its_cap_loses_the_state() -> None:
    config = dataclasses.replace(LIMITS, restore_timeout_s=0.5, restore_wait_s=5.0)
    with Sandbox(config) as sb:
        sb.run("import time\ntime.sleep(0.6)\nslow = 1", session="s", timeout=5)
        result = sb.run("import os\nos._exit(1)", session="s")
        assert (result.status, result.state) == ("crashed", "lost")
        after = sb.run("print('slow' in dir())", session="s")
        assert (after.status, after.stdout) == ("ok", "False\n")


def test_session_environment_is_isolated(sandbox: Sandbox) -> None:
    os.environ["AIMO_TEST_SECRET"] = "hunter2"
    try:
        with Sandbox(LIMITS) as sb:
            code = (
                "import os\nprint(os.environ.get('CUDA_VISIBLE_DEVICES'))\nprint(os.getcwd())\n"
                "print('AIMO_TEST_SECRET' in os.environ)"
            )
            result = sb.run(code, session="env")
            gpu, workdir, secret = result.stdout.split("\n")[:3]
            assert (gpu, secret) == ("", "False")
            assert workdir != os.getcwd()
            scratch = os.path.join(workdir, "aimo-scratch.txt")
            assert sb.run(f"open({scratch!r}, 'w').write('x')", session="env").status == "ok"
            sb.close_session("env")
            assert not os.path.exists(scratch)
    finally:
        del os.environ["AIMO_TEST_SECRET"]


FIRST_SESSION_UID = LIMITS.first_session_uid


@pytest.mark.skipif(not AS_ROOT, reason="the privilege drop happens only when run as root")
def test_sessions_run_as_uids_of_their_own_and_can_still_import(sandbox: Sandbox) -> None:
    nobody = pwd.getpwnam("nobody")
    code = (
        "import os, getpass, decimal, email.mime.text, sympy.physics.units\n"
        "print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), getpass.getuser())"
    )
    first, second = (sandbox.run(code, session=f"user-{i}") for i in range(2))
    assert first.status == second.status == "ok", (first, second)
    uid, euid, gid, groups, name = first.stdout.split()
    assert uid == euid and int(uid) >= FIRST_SESSION_UID
    assert (int(gid), groups, name) == (nobody.pw_gid, "[]", "sandbox")
    assert second.stdout.split()[0] not in (uid, str(nobody.pw_uid), "0")
    for i in range(2):
        sandbox.close_session(f"user-{i}")


@pytest.mark.skipif(not AS_ROOT, reason="the privilege drop happens only when run as root")
def test_kill_everything_reaches_only_the_sessions_own_processes(sandbox: Sandbox) -> None:
    assert sandbox.run("x = 41", session="bystander").status == "ok"
    # kill(-1) spares the caller; with a uid to itself there is nothing else to reach.
    killer = sandbox.run("import os, signal\nos.kill(-1, signal.SIGKILL)", session="killer")
    assert killer.status == "ok", killer
    after = sandbox.run("print(x + 1)", session="bystander")
    assert (after.status, after.stdout) == ("ok", "42\n")
    for name in ("bystander", "killer"):
        sandbox.close_session(name)


@pytest.mark.skipif(not AS_ROOT, reason="the privilege drop happens only when run as root")
def test_files_left_in_shared_tmp_go_with_the_session(sandbox: Sandbox) -> None:
    code = (
        "import os\nos.mkdir('/tmp/aimo-left-dir')\nopen('/tmp/aimo-left-dir/f', 'w').write('x')\n"
        "open('/dev/shm/aimo-left-file', 'w').write('x')"
    )
    result = sandbox.run(code, session="litter")
    assert result.status == "ok", result
    # A private /tmp (namespaces) never shows them; else they go when the session ends.
    visible = os.path.exists("/tmp/aimo-left-dir/f") and os.path.exists("/dev/shm/aimo-left-file")
    assert visible != sandbox.guards()["namespaces"].startswith("private")
    sandbox.close_session("litter")
    assert not os.path.exists("/tmp/aimo-left-dir")
    assert not os.path.exists("/dev/shm/aimo-left-file")


@pytest.mark.skipif(not AS_ROOT, reason="the privilege drop happens only when run as root")
def test_sessions_can_share_the_users_uid() -> None:
    """first_session_uid = 0: every session as the unprivileged user itself."""
    with Sandbox(dataclasses.replace(LIMITS, first_session_uid=0)) as sb:
        ids = [sb.run("import os\nprint(os.getuid())", session=f"s{i}").stdout for i in range(2)]
        # Which is why sessions get uids of their own by default: here kill(-1) reaches s0.
        assert sb.run("x = 41", session="s0").status == "ok"
        sb.run("import os, signal\nos.kill(-1, signal.SIGKILL)", session="s1")
        assert sb.run("print(x + 1)", session="s0").stdout != "42\n"
    nobody = pwd.getpwnam("nobody").pw_uid
    assert ids == [f"{nobody}\n"] * 2


@pytest.mark.skipif(not AS_ROOT, reason="the privilege drop happens only when run as root")
def test_a_missing_user_still_drops_to_nobodys_ids() -> None:
    with Sandbox(dataclasses.replace(LIMITS, unprivileged_user="no-such-user-here")) as sb:
        result = sb.run("import os\nprint(os.getgid())", session="missing-user")
    assert result.stdout == "65534\n"


@pytest.mark.skipif(not AS_ROOT, reason="needs the privilege drop (run as root)")
def test_cannot_write_outside_its_directory(sandbox: Sandbox, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path_factory.mktemp("outside")
    os.chmod(outside, 0o755)
    target = outside / "pwned.txt"
    # Wherever the checkout and the folders are (under /tmp too): not there at all behind
    # a private /tmp, read-only where the interpreter's own paths are bound back into it,
    # else not writable for the session's user.
    refusals = ("PermissionError", "FileNotFoundError", "Read-only file system")
    for path in (str(target), os.path.join(os.path.dirname(os.path.abspath(__file__)), "pwned")):
        result = sandbox.run(f"open({path!r}, 'w').write('x')", session="outside")
        assert result.status == "error", result
        assert any(refusal in result.stderr for refusal in refusals), result
        assert not os.path.exists(path)
    sandbox.close_session("outside")


def test_close_kills_every_session_and_the_server() -> None:
    sb = Sandbox(LIMITS)
    sb.run("import subprocess; p = subprocess.Popen(['sleep', '60'])", session="one")
    sb.run("pass", session="two")
    processes = [psutil.Process(pid) for pid in tree(sb)] + [psutil.Process(sb.server_pid)]
    assert len(processes) == 4
    sb.close()
    _, alive = psutil.wait_procs(processes, timeout=5)
    assert alive == []


def test_a_dead_fork_server_is_replaced() -> None:
    with Sandbox(LIMITS) as sb:
        old_server = sb.server_pid
        assert old_server is not None
        sb.run("x = 1", session="victim")
        victim = sb.session_pids()["victim"]
        os.kill(old_server, 9)
        assert eventually(lambda: _is_zombie(old_server) and _is_zombie(victim))
        # Its session is restored in the new server before the call runs.
        result = sb.run("print(x)", session="victim")
        assert (result.status, result.stdout, result.state) == ("ok", "1\n", "restored")
        assert sb.server_pid != old_server


def test_server_started_by_the_constructor_is_a_fresh_interpreter() -> None:
    with Sandbox(LIMITS) as sb:
        server = psutil.Process(sb.server_pid)
        assert server.ppid() == os.getpid()
        assert sb.run("pass").status == "ok"  # it has been exec'd and is serving
        assert "submission.sandbox.forkserver" in server.cmdline()


# -- IPython fidelity -------------------------------------------------------------------


def ipython_output(code: str) -> str:
    """What IPython itself shows for a cell (plain tracebacks, no colours), NeMo-Skills style."""
    shell_module = pytest.importorskip("IPython.core.interactiveshell")
    capture = pytest.importorskip("IPython.utils.capture")
    shell = shell_module.InteractiveShell.instance(colors="nocolor")
    shell.InteractiveTB.set_mode("Plain")
    with capture.capture_output() as captured, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IPython warns that sys.exit does not exit
        shell.run_cell(code)
    shell.reset()
    # The output prompt's number differs between IPython versions (Out[1] in 8, Out[0] in 9).
    return re.sub(r"Out\[\d+\]: ", "", captured.stdout + captured.stderr).strip()


IPYTHON_CELLS = {
    "long list": "list(range(40))",
    "dict order": "{'b': 1, 'a': 2}",
    "set": "{3, 1, 2}",
    "string": "'text'",
    "sympy expression": "import sympy\nx = sympy.Symbol('x')\nsympy.expand((x + 1) ** 3)",
    "numpy array": "import numpy as np\nnp.arange(12).reshape(3, 4)",
    "None is not shown": "None",
    "semicolon does not hide (no history, as in NeMo-Skills)": "1 + 1;",
    "print then value": "print('a')\n7 * 6",
    "error in a function": "def f(x):\n    return 1 / x\nf(0)",
    "name error": "undefined_name + 1",
    "library frames": "import sympy\nsympy.factorint('a')",
    "chained": "try:\n    1/0\nexcept Exception as e:\n    raise KeyError(2) from e",
    "syntax error": "x = (1 +\n",
    "bad indentation": "if True:\nprint(1)",
    "sys.exit": "import sys\nsys.exit(3)",
}


@pytest.mark.parametrize("name", IPYTHON_CELLS)
def test_display_and_tracebacks_match_ipython(roomy: Sandbox, name: str) -> None:
    code = IPYTHON_CELLS[name]
    expected = ipython_output(code)
    result = roomy.run(code, session="ipython")
    assert result.output.strip() == expected
    roomy.close_session("ipython")


# -- asyncio ----------------------------------------------------------------------------


async def test_arun_does_not_block_the_event_loop(sandbox: Sandbox) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    result = await sandbox.arun("import time; time.sleep(0.5); print('done')", "async")
    task.cancel()
    assert result.stdout == "done\n"
    assert ticks >= 10  # the loop kept running while the code slept
    sandbox.close_session("async")


async def test_sixteen_sessions_run_at_the_same_time(sandbox: Sandbox) -> None:
    code = "import time\nstart = time.time()\ntime.sleep(0.5)\nprint(start, time.time())"
    results = await asyncio.gather(*(sandbox.arun(code, f"many-{i}") for i in range(16)))
    assert [r.status for r in results] == ["ok"] * 16
    spans = [tuple(map(float, r.stdout.split())) for r in results]
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # all overlapped
    for i in range(16):
        sandbox.close_session(f"many-{i}")


async def test_cancelled_arun_kills_its_session(sandbox: Sandbox) -> None:
    task = asyncio.create_task(sandbox.arun("import time; time.sleep(30)", "cancel", 60))
    for _ in range(500):
        await asyncio.sleep(0.01)
        if "cancel" in sandbox.session_pids():
            break
    await asyncio.sleep(0.2)
    pid = sandbox.session_pids()["cancel"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert eventually(lambda: not psutil.pid_exists(pid) or _is_zombie(pid))


def _is_zombie(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    return True


# -- adversarial code -------------------------------------------------------------------

# name -> (code, statuses it may end with, timeout in seconds)
ADVERSARIAL: dict[str, tuple[str, set[str], float]] = {
    "infinite loop": ("while True:\n    pass", {"timeout"}, 0.5),
    "sleep forever": ("import time\ntime.sleep(600)", {"timeout"}, 0.5),
    "spinning thread": (
        "import threading\n"
        "def spin():\n    while True:\n        pass\n"
        "threading.Thread(target=spin, daemon=True).start()\nprint('started')",
        {"ok"},
        5.0,
    ),
    "fork bomb": ("import os\nwhile True:\n    os.fork()", {"error", "timeout"}, 2.0),
    "memory bomb list": ("x = [0] * (10 ** 10)", {"error"}, 5.0),
    "memory bomb growth": (
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))",
        {"error"},
        10.0,
    ),
    "numpy memory bomb": ("import numpy as np\nnp.ones(10 ** 10)", {"error"}, 5.0),
    "1 GB of output": (
        "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)",
        {"ok", "timeout"},
        30.0,
    ),
    "1 GB at the fd level": (
        "import os\nchunk = b'y' * (1 << 20)\nfor _ in range(1024):\n    os.write(1, chunk)",
        {"ok", "timeout"},
        30.0,
    ),
    "endless printing": ("while True:\n    print('spam')", {"timeout"}, 0.5),
    "os._exit": ("import os\nos._exit(0)", {"crashed"}, 5.0),
    "sys.exit": ("import sys\nsys.exit(1)", {"error"}, 5.0),
    "exit builtin": ("exit()", {"error"}, 5.0),
    "kill the parent": (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        {"error"} if AS_ROOT else {"crashed", "killed"},  # not root: the server is replaced
        5.0,
    ),
    "kill own process group": ("import os, signal\nos.killpg(0, signal.SIGKILL)", {"killed"}, 5.0),
    "ignore SIGTERM": (
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass",
        {"timeout"},
        0.5,
    ),
    "close fds 0-2": (
        "import os\nfor fd in (0, 1, 2):\n    os.close(fd)\nprint('lost')",
        {"ok", "error"},
        5.0,
    ),
    "read stdin": ("input()", {"error"}, 5.0),
    "read all of stdin": ("import sys\nsys.stdin.read()", {"ok"}, 5.0),
    "deep recursion": ("def f(n):\n    return f(n + 1)\nf(0)", {"error"}, 5.0),
    "unbounded recursion": (
        "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1)\nf(0)",
        {"crashed", "killed", "error"},
        10.0,
    ),
    "sys.modules cleared": ("import sys\nsys.modules.clear()\nimport json", {"ok", "error"}, 5.0),
    "sys.modules poisoned": (
        "import sys\nfor name in ('json', 'socket', 'os', 'traceback'):\n"
        "    sys.modules[name] = None",
        {"ok"},
        5.0,
    ),
    "builtins replaced": (
        "import builtins\nbuiltins.print = None\nbuiltins.len = None",
        {"ok", "crashed"},
        5.0,
    ),
    "subprocess outlives the call": (
        "import subprocess\nsubprocess.Popen(['sleep', '60'])\nprint('spawned')",
        {"ok"},
        5.0,
    ),
    "daemon escapes the group": (
        "import os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)",
        {"ok"},
        5.0,
    ),
    "non-UTF-8 output": (
        "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x80 tail\\n')",
        {"ok"},
        5.0,
    ),
    "lone surrogate": ("print('\\udcff')", {"ok"}, 5.0),
    "huge int to text": ("print(10 ** 100000)", {"error"}, 5.0),
    "huge int power": ("x = 2 ** (2 ** 40)", {"error", "timeout"}, 1.0),
    "not Python": ("Let me compute the sum of the first 100 integers: 5050.", {"error"}, 5.0),
    "LaTeX": ("\\boxed{42}", {"error"}, 5.0),
    "null byte": ("print(1)\x00", {"error"}, 5.0),
    "segfault": ("import ctypes\nctypes.string_at(0)", {"crashed"}, 5.0),
    "abort": ("import os\nos.abort()", {"crashed"}, 5.0),
    "file size limit": ("open('big.bin', 'wb').write(b'0' * (2 << 20))", {"error"}, 5.0),
    "open files limit": ("files = [open(f'f{i}', 'w') for i in range(1000)]", {"error"}, 5.0),
    "alarm signal": ("import signal, time\nsignal.alarm(1)\ntime.sleep(5)", {"crashed"}, 4.0),
    "exit from a thread": (
        "import os, threading, time\nthreading.Timer(0.05, os._exit, args=(3,)).start()\n"
        "time.sleep(3)",
        {"crashed"},
        5.0,
    ),
    "garbage on every descriptor": (
        "import os\nfor fd in range(3, 64):\n    try:\n"
        "        os.write(fd, b'\\x00\\x00\\x00\\x05hello')\n    except OSError:\n        pass",
        {"crashed", "ok"},
        5.0,
    ),
    "stdout replaced": ("import sys\nsys.stdout = None\nprint('lost')", {"ok"}, 5.0),
    "keyboard interrupt": ("raise KeyboardInterrupt", {"error"}, 5.0),
    "thread holds the GIL": (
        "import threading\nthreading.Thread(target=lambda: 10 ** (10 ** 8)).start()",
        {"timeout", "killed"},
        1.0,
    ),
    "huge cell": ("x = 1\n" * 50_000 + "print(x)", {"ok"}, 10.0),
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_code_cannot_hurt_the_harness(sandbox: Sandbox, name: str) -> None:
    code, statuses, timeout = ADVERSARIAL[name]
    if name == "fork bomb" and not AS_ROOT:
        pytest.skip("the process-count limit holds only for the unprivileged user (run as root)")
    before = tree(sandbox)
    harness_fds = psutil.Process().num_fds()
    session = f"adversarial-{name}"
    result = sandbox.run(code, session=session, timeout=timeout)
    assert result.status in statuses, result
    assert_bounded(result)
    sandbox.close_session(session)
    assert eventually(lambda: tree(sandbox) <= before), f"leaked: {tree(sandbox) - before}"
    fresh = sandbox.run("print(6 * 7)", session=f"{session}-next")
    assert (fresh.status, fresh.stdout) == ("ok", "42\n")
    sandbox.close_session(f"{session}-next")
    assert eventually(lambda: tree(sandbox) <= before), f"leaked: {tree(sandbox) - before}"
    assert psutil.Process().num_fds() == harness_fds


def test_non_utf8_output_is_replaced_not_fatal(sandbox: Sandbox) -> None:
    result = sandbox.run("import sys\n_ = sys.stdout.buffer.write(b'\\xff tail\\n')", "bytes")
    assert result.stdout == "\ufffd tail\n"
    sandbox.close_session("bytes")


def test_output_of_a_big_stream_is_bounded_and_marked(sandbox: Sandbox) -> None:
    code = "import os\nfor _ in range(64):\n    os.write(1, b'z' * (1 << 20))"
    result = sandbox.run(code, session="stream")
    assert (result.stdout, result.truncated) == ("z" * MAX_CHARS, True)
    sandbox.close_session("stream")


def test_cpu_time_limit_kills_the_session(sandbox: Sandbox) -> None:
    result = sandbox.run("while True:\n    pass", session="cpu", timeout=60)
    assert (result.status, result.state) == ("killed", "restored")
    sandbox.close_session("cpu")


@pytest.mark.parametrize(
    "code",
    [
        "import os\nfor fd in (0, 1, 2):\n    os.close(fd)",
        "import sys\nsys.stdout = None\nsys.stderr = None",
        "import threading\ndef spin():\n    while True:\n        pass\n"
        "threading.Thread(target=spin, daemon=True).start()",
        "exit()",
    ],
)
def test_same_session_recovers_after_tampering(sandbox: Sandbox, code: str) -> None:
    sandbox.run("kept = 5", session="tamper")
    sandbox.run(code, session="tamper")
    result = sandbox.run("print(kept * 2)\nimport sys\n_ = sys.stderr.write('e')", session="tamper")
    assert (result.status, result.stdout, result.stderr) == ("ok", "10\n", "e")
    sandbox.close_session("tamper")


# -- generated snippets -----------------------------------------------------------------

# The module's sandbox is meant to be shared by every generated example.
FIXTURE_OK = HealthCheck.function_scoped_fixture
printable = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=printable)
def test_printed_text_comes_back_exactly_or_cut(sandbox: Sandbox, text: str) -> None:
    result = sandbox.run(f"print({text!r})", session="hypothesis-print")
    assert result.status == "ok"
    expected = text + "\n"
    assert result.stdout == expected[:MAX_CHARS]
    assert result.truncated == (len(expected) > MAX_CHARS)


FRAGMENTS = st.one_of(
    printable.map(lambda t: f"print({t!r})"),
    printable.map(lambda t: f"import sys; sys.stderr.write({t!r})"),
    st.integers().map(lambda n: f"v = {n}\nv * 2"),
    st.sampled_from(["1/0", "raise ValueError('x')", "undefined", "[][1]", "{}['k']", "x = (1,"]),
    st.text(max_size=80),  # anything at all, mostly not Python
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cells=st.lists(FRAGMENTS, min_size=1, max_size=4))
def test_generated_cells_never_break_the_session(sandbox: Sandbox, cells: list[str]) -> None:
    before = tree(sandbox)
    for cell in cells:
        result = sandbox.run(cell, session="hypothesis-cells", timeout=5)
        assert result.status in {"ok", "error", "timeout", "killed"}, result  # "9**9**9"
        assert_bounded(result)
    after = sandbox.run("print(6 * 7)", session="hypothesis-cells")
    assert after.stdout.endswith("42\n")
    sandbox.close_session("hypothesis-cells")
    assert eventually(lambda: tree(sandbox) <= before)


def test_result_output_is_stdout_then_stderr() -> None:
    result = ExecResult("out\n", "err\n", "ok", 0.0)
    assert result.output == "out\nerr\n"


# -- weaker machines: each guard off in turn ----------------------------------------------

FALLBACKS = {
    "no namespaces": {"use_namespaces": False},
    "no cgroups": {"use_cgroups": False},
    "rlimits and a shared uid only": {
        "use_namespaces": False,
        "use_cgroups": False,
        "first_session_uid": 0,
    },
}
LITTER = (
    "import os, subprocess\n"
    "def deep(root, depth):\n"
    "    os.makedirs(root, exist_ok=True)\n"
    "    here = os.open(root, os.O_RDONLY)\n"
    "    for _ in range(depth):\n"
    "        os.mkdir('d', dir_fd=here)\n"
    "        nxt = os.open('d', os.O_RDONLY, dir_fd=here)\n"
    "        os.close(here)\n"
    "        here = nxt\n"
    "deep('tree', 1600)\n"
    "deep('/tmp/aimo-fallback-{tag}', 1600)\n"
    "subprocess.Popen(['setsid', 'sleep', '300'])\n"
    "import ctypes\n"
    "print(ctypes.CDLL(None).shmget(0, 4096, 0o1600))"  # IPC_PRIVATE, IPC_CREAT | 0600
)


def shm_ids() -> set[int]:
    with open("/proc/sysvipc/shm") as file:
        return {int(line.split()[1]) for line in file.readlines()[1:]}


@pytest.mark.skipif(not AS_ROOT, reason="the guards need root")
@pytest.mark.parametrize("name", FALLBACKS)
def test_each_fallback_still_keeps_the_promise(name: str) -> None:
    tag = re.sub(r"\W", "-", name)
    with Sandbox(dataclasses.replace(LIMITS, **FALLBACKS[name])) as sb:
        guards = sb.guards()
        litter = sb.run(LITTER.replace("{tag}", tag), session="litter", timeout=30)
        assert litter.status == "ok", litter
        segment = int(litter.stdout)
        assert segment >= 0
        if guards["namespaces"].startswith("off"):  # else its id is its namespace's own
            assert segment in shm_ids()  # the host's, until the session is cleaned up
        sb.run("kept = 3", session="restore")
        crash = sb.run("import os\nos._exit(1)", session="restore")
        assert (crash.status, crash.state) == ("crashed", "restored")
        after = sb.run("print(kept)", session="restore")
        assert (after.status, after.stdout) == ("ok", "3\n")
        sb.close_session("litter")
        assert eventually(
            lambda: (
                not [
                    p
                    for p in psutil.process_iter(["cmdline"])
                    if p.info["cmdline"] == ["sleep", "300"]
                ]
            )
        )
    left = f"/tmp/aimo-fallback-{tag}"
    if FALLBACKS[name].get("first_session_uid") == 0:
        # Known limit: with one uid for all, nothing tells whose files these are.
        assert os.path.exists(left) and segment in shm_ids()
        remove_tree(left)  # 1,600 levels: no recursion, no PATH_MAX
        ctypes.CDLL(None).shmctl(segment, 0, None)  # IPC_RMID
    elif guards["namespaces"].startswith("off"):
        assert segment not in shm_ids()
    assert not os.path.exists(left)
    assert guards["namespaces"].startswith("off") == (
        not FALLBACKS[name].get("use_namespaces", True)
    )
    assert guards["memory and processes"].startswith("rlimits") == (
        not FALLBACKS[name].get("use_cgroups", True)
    )


def test_remove_tree_never_follows_links_and_survives_unreadable_folders(tmp_path) -> None:  # type: ignore[no-untyped-def]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("x")
    root = tmp_path / "victim"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "link-dir").symlink_to(precious)
    (root / "link-file").symlink_to(precious / "keep.txt")
    (root / "a" / "b" / "f").write_text("y")
    os.chmod(root / "a" / "b", 0)
    remove_tree(str(root))
    assert not root.exists()
    assert (precious / "keep.txt").read_text() == "x"
    link = tmp_path / "top-link"
    link.symlink_to(precious)
    remove_tree(str(link))
    assert not link.exists() and precious.is_dir()


def test_uid_leases_are_exclusive_across_holders(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first, second = UidLeases(64500, str(tmp_path)), UidLeases(64500, str(tmp_path))
    taken = [first.take(False), second.take(False), first.take(False)]
    assert len(set(taken)) == 3 and min(taken) == 64500
    first.release(taken[0])
    assert second.take(False) == taken[0]
    first.close()
    second.close()


# -- the benchmark's own path -------------------------------------------------------------


@pytest.mark.slow  # eight sandboxes and both timeout paths: about a minute
def test_bench_sandbox_measures_each_guard_set_side_by_side(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`bench sandbox` (tiny, no Jupyter) reports every measure, for every guard set."""
    from submission.__main__ import main
    from submission.bench.sandbox import GUARD_SETS

    args = ["--reps", "3", "--anchor-reps", "1", "--concurrent", "2", "--no-jupyter", "--json"]
    assert main(["bench", "sandbox", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["guards"]) == set(GUARD_SETS)
    for row in report["guards"].values():
        assert set(row) == {"call_p50_ms", "new_session_spare_p50_ms", "new_session_fork_p50_ms"}
        assert all(value > 0 for value in row.values())
    assert report["sandbox"]["concurrent_all_ok"] is True
    assert all(row["ours_ms"] > 0 for row in report["snippets"].values())
