"""The read-execute loop inside a session process: IPython-like cells on one namespace.

A cell's final bare expression is displayed the way IPython displays it, and
errors are shown as IPython's plain traceback (mode "Plain", no colours) with
the harness's own frames removed, every cell labelled ``Cell In[1]`` as in the
NeMo-Skills sandbox the OpenMath models were trained with. Like that sandbox
(IPython's run_cell without history), a trailing semicolon does not hide the value.
"""

from __future__ import annotations

import ast
import builtins
import codeop
import contextlib
import gc
import io
import itertools
import linecache
import math
import os
import resource
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

from submission.sandbox import protocol

# The harness puts this on the channel just before it sends SIGINT at a cell's deadline,
# so the cell's interrupt handler can tell the harness's interrupt (`timeout`, no
# traceback) from a SIGINT the cell or its children sent (KeyboardInterrupt, an error).
# Nothing in the session can write into its own end of the channel.
INTERRUPT_NOTICE = protocol.encode({"interrupt": True})
# What the REPL's own code needs from the interpreter, as it was before any cell ran:
# after each cell the builtins are put back and the hooks that would run the cell's code
# inside the REPL's own (trace, profile, gc callbacks) are removed.
_BUILTINS = builtins.__dict__
_SAVED_BUILTINS = dict(builtins.__dict__)
# Read past any property a cell's exception class defines (the REPL must never raise).
_TYPE_NAME = type.__dict__["__name__"]
_CAUSE = BaseException.__dict__["__cause__"]
_CONTEXT = BaseException.__dict__["__context__"]
_SUPPRESS_CONTEXT = BaseException.__dict__["__suppress_context__"]
_TRACEBACK = BaseException.__dict__["__traceback__"]

CELL_LABEL = "Cell In[1]"
_CELL_PREFIX = "<sandbox-cell-"
# Read at import, in the fork server: sessions get their own HOME.
_HOME = os.path.expanduser("~")
_SYSTEM_EXIT_NOTE = "An exception has occurred, use %tb to see the full traceback.\n"
_CAUSE_NOTE = "\nThe above exception was the direct cause of the following exception:\n"
_CONTEXT_NOTE = "\nDuring handling of the above exception, another exception occurred:\n"
_PARSE_FLAGS = (
    ast.PyCF_ONLY_AST | codeop.PyCF_DONT_IMPLY_DEDENT | codeop.PyCF_ALLOW_INCOMPLETE_INPUT
)


def display_formatter() -> Callable[[Any], str]:
    """IPython's plain-text display formatter when IPython is installed, else pprint."""
    try:
        from IPython.core.formatters import PlainTextFormatter
    except ImportError:
        import pprint

        return lambda value: pprint.pformat(value, sort_dicts=False)
    return PlainTextFormatter()


def serve(
    channel: socket.socket,
    out_fd: int,
    err_fd: int,
    display: Callable[[Any], str],
    path_map: dict[str, str],
    cpu_budget_s: float = 0.0,
) -> None:
    """Answer `{"code": ..., "seq": n}` requests with `{"status": ..., "seq": n}` until
    the channel closes. status is "ok", "error" or "interrupted" (the harness's SIGINT
    reached the cell: it passed its deadline; the namespace is intact).

    `out_fd` and `err_fd` are private copies of the capture pipes: before each
    cell they are put back on fds 1 and 2, so a cell that closed or redirected
    them breaks only itself. `path_map` maps directories the session cannot
    enter to /proc/self/fd paths it can (for library source in tracebacks).
    Before each cell its RLIMIT_CPU soft limit is set to the CPU time it has used plus
    `cpu_budget_s`: the limit bounds a call (and what its threads spin between calls),
    never the session's life.
    """
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    session_pid = os.getpid()
    # Bound here, once: a cell replacing this module's functions changes nothing below.
    run, cell_runner, recv, send, restore_streams = (
        _run_interruptible,
        run_cell,
        protocol.recv,
        protocol.send,
        _restore_std_streams,
    )
    # Our own streams: line-buffered (output printed before a timeout is kept) and
    # never failing on text UTF-8 cannot encode (lone surrogates).
    sys.__stdout__, sys.__stderr__ = _text_stream(1), _text_stream(2)
    sys.unraisablehook = _unraisable
    _Interrupts.channel = channel
    signal.signal(signal.SIGINT, _Interrupts.handler)
    count = 0
    while True:
        try:
            request, _ = recv(channel)
        except (protocol.ProtocolError, OSError):
            os._exit(0)
        if "code" not in request:  # an interrupt notice that came after its cell ended
            continue
        count += 1
        restore_streams(out_fd, err_fd)
        if cpu_budget_s:
            _renew_cpu_limit(cpu_budget_s)
        status = run(cell_runner, str(request["code"]), namespace, count, display, path_map)
        if os.getpid() != session_pid:  # a process the cell forked: never a second REPL
            os._exit(0)
        for stream in (sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):  # a cell may have replaced them with anything
                stream.flush()
        try:
            send(channel, {"status": status, "seq": request.get("seq")})
        except OSError:
            os._exit(0)


def _renew_cpu_limit(budget_s: float) -> None:
    """RLIMIT_CPU soft limit = CPU used so far + one call's budget (+1 s: the harness's own
    check of the call comes first; this one catches what spins between calls)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + budget_s) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    with contextlib.suppress(ValueError, OSError):  # a cell lowered its hard limit: its own harm
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


class _Interrupts:
    """SIGINT raises KeyboardInterrupt only while a cell runs; the harness's (its notice is
    on the channel) is remembered, so the cell ends as interrupted, not as an error."""

    in_cell = False
    received = False
    channel: socket.socket | None = None

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        if cls.in_cell:
            if cls._harness_notice():
                cls.received = True
            raise KeyboardInterrupt

    @classmethod
    def _harness_notice(cls) -> bool:
        """Take the harness's interrupt notice off the channel, if it is there."""
        channel, size = cls.channel, len(INTERRUPT_NOTICE)
        if channel is None:
            return False
        try:
            if channel.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT) != INTERRUPT_NOTICE:
                return False
            channel.recv(size, socket.MSG_DONTWAIT)
        except OSError:  # nothing waiting, or a cell broke the channel
            return False
        return True


def _run_interruptible(
    cell_runner: Callable[..., str],
    code: str,
    namespace: dict[str, Any],
    count: int,
    display: Callable[[Any], str],
    path_map: dict[str, str],
) -> str:
    """run_cell with the harness's interrupt: "interrupted" when it reached the cell
    (even if the cell caught the KeyboardInterrupt), its traceback not shown."""
    _Interrupts.received = False
    # Reinstalled every cell: a cell may have ignored SIGINT or replaced the handler.
    signal.signal(signal.SIGINT, _Interrupts.handler)
    try:
        _Interrupts.in_cell = True
        status = cell_runner(code, namespace, count, display, path_map, _Interrupts)
    except KeyboardInterrupt:  # landed in run_cell's own code, outside the cell
        status = "error"
    finally:
        _Interrupts.in_cell = False
    return "interrupted" if _Interrupts.received else status


def run_cell(
    code: str,
    namespace: dict[str, Any],
    count: int,
    display: Callable[[Any], str],
    path_map: dict[str, str] | None = None,
    interrupts: type[_Interrupts] | None = None,
) -> str:
    """Execute one cell; print the displayed value to stdout, a traceback to stderr
    (none for the harness's own interrupt: the call's status says it)."""
    filename = f"{_CELL_PREFIX}{count}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    try:
        # IPython's flags: an unfinished cell reads "incomplete input", as it does there.
        tree = compile(code, filename, "exec", _PARSE_FLAGS, dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # ValueError: source with null bytes
        # IPython shows a cell that does not compile without a traceback header.
        _write_stderr(_exception_only(exc))
        return "error"
    shown: ast.Expression | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        shown = ast.Expression(tree.body.pop().value)
    try:
        # The inner `finally` runs before the `except` clauses look up their names:
        # a cell that emptied the builtins gets them back first.
        try:
            exec(compile(tree, filename, "exec", dont_inherit=True), namespace)
            value = None
            if shown is not None:
                value = eval(compile(shown, filename, "eval", dont_inherit=True), namespace)
            text = None if value is None else display(value)
        finally:
            _restore_interpreter()
        if text is not None:  # by the REPL's own means: the cell may have replaced print
            sys.stdout.write(text + "\n")
    except SystemExit as exc:
        _write_stderr(_SYSTEM_EXIT_NOTE + _report(exc, {}, only_last=True))
        return "error"
    except BaseException as exc:
        if interrupts is not None:
            interrupts.in_cell = False
            if interrupts.received and type(exc) is KeyboardInterrupt:
                return "error"
        _write_stderr(_report(exc, path_map or {}))
        return "error"
    return "ok"


def _restore_interpreter() -> None:
    """Put back what the REPL's own code relies on (see _SAVED_BUILTINS)."""
    _BUILTINS.update(_SAVED_BUILTINS)
    sys.settrace(None)
    sys.setprofile(None)
    gc.callbacks.clear()


def _report(exc: BaseException, path_map: dict[str, str], only_last: bool = False) -> str:
    """The error report for `exc`; never raises, whatever the cell's exception does when
    its attributes are read (a last resort names only its class)."""
    try:
        return _exception_only(exc) if only_last else _format_exception(exc, path_map)
    except BaseException:
        try:
            return f"{_TYPE_NAME.__get__(type(exc))}\n"
        except BaseException:
            return "Exception\n"


def _unraisable(unraisable: Any) -> None:
    """sys.unraisablehook: as Python's own ("Exception ignored in: ..."), with the
    traceback in the REPL's format (the harness's frames dropped)."""
    with contextlib.suppress(BaseException):
        where = unraisable.err_msg or "Exception ignored in"
        try:
            target = f": {unraisable.object!r}" if unraisable.object is not None else ""
        except BaseException:
            target = ": <object repr() failed>"
        exc = unraisable.exc_value
        report = _report(exc, {}) if exc is not None else "\n"
        _write_stderr(f"{where}{target}\n{report}")


def _write_stderr(text: str) -> None:
    """Write an error report; a cell that closed its stderr loses it, the session lives on."""
    with contextlib.suppress(Exception):
        sys.stderr.write(text)


def _format_exception(exc: BaseException, path_map: dict[str, str]) -> str:
    """IPython's plain traceback text, chained exceptions first, harness frames dropped."""
    chain: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and not any(node is seen for seen in chain) and len(chain) < 32:
        chain.append(node)
        cause, context = _CAUSE.__get__(node), _CONTEXT.__get__(node)
        if cause is not None:
            node = cause
        elif context is not None and not _SUPPRESS_CONTEXT.__get__(node):
            node = context
        else:
            node = None
    parts: list[str] = []
    for older, newer in itertools.pairwise(reversed(chain)):
        parts.append(_format_one(older, path_map))
        parts.append(_CAUSE_NOTE if _CAUSE.__get__(newer) is older else _CONTEXT_NOTE)
    parts.append(_format_one(chain[0], path_map))
    return "".join(parts)


def _format_one(exc: BaseException, path_map: dict[str, str]) -> str:
    frames = [
        f for f in traceback.extract_tb(_TRACEBACK.__get__(exc)) if not _is_harness_file(f.filename)
    ]
    lines: list[str] = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        for frame in frames:
            lines.append(_frame_header(frame.filename, frame.lineno, frame.name))
            source = frame.line or _library_line(frame.filename, frame.lineno, path_map)
            if source:
                lines.append(f"    {source.strip()}\n")
    lines.append(_exception_only(exc))
    return "".join(lines)


def _frame_header(filename: str, lineno: int | None, name: str) -> str:
    if filename.startswith(_CELL_PREFIX):
        where = f"  {CELL_LABEL}, line {lineno}"
        return where + ("\n" if name == "<module>" else f" in {name}\n")
    return f"  File {_short_path(filename)}:{lineno} in {name}\n"


def _exception_only(exc: BaseException) -> str:
    """The last lines of a report as IPython writes them (bare class name, one caret)."""
    lines: list[str] = []
    if issubclass(type(exc), SyntaxError):
        syntax = SyntaxError.__dict__
        filename = syntax["filename"].__get__(exc) or "<string>"
        lineno, offset = syntax["lineno"].__get__(exc), syntax["offset"].__get__(exc)
        if filename.startswith(_CELL_PREFIX):
            where = f"{CELL_LABEL}, line {lineno}" if lineno else CELL_LABEL
        else:
            where = f"File {_short_path(filename)}" + (f":{lineno}" if lineno else "")
        lines.append(f"  {where}\n")
        text = (linecache.getline(filename, lineno) if lineno else "") or syntax["text"].__get__(
            exc
        )
        if text is not None:
            indent = len(text) - len(text.lstrip())
            lines.append(f"    {text.strip()}\n")
            if offset is not None:
                pad = "".join(c if c.isspace() else " " for c in text[indent : offset - 1])
                lines.append(f"    {pad}^\n")
        message = syntax["msg"].__get__(exc)
    else:
        name = _TYPE_NAME.__get__(type(exc))
        try:
            message = str(exc)
        except Exception:
            message = f"<unprintable {name} object>"
    name = _TYPE_NAME.__get__(type(exc))
    lines.append(f"{name}: {message}\n" if message else f"{name}\n")
    return "".join(lines)


def _library_line(filename: str, lineno: int | None, path_map: dict[str, str]) -> str:
    """A source line from a file the session can only reach through /proc/self/fd."""
    for root, reachable in path_map.items():
        if lineno and filename.startswith(root + os.sep):
            return linecache.getline(reachable + filename[len(root) :], lineno)
    return ""


def _short_path(filename: str) -> str:
    """The path as IPython prints it: the harness user's home shown as ~."""
    home = _HOME
    return "~" + filename[len(home) :] if home != "/" and filename.startswith(home) else filename


def _is_harness_file(filename: str) -> bool:
    return filename == __file__ or filename.startswith("<frozen ")


def _restore_std_streams(out_fd: int, err_fd: int) -> None:
    """Put the capture pipes back on fds 0-2 and fresh text streams on sys.std*."""
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    try:
        os.fstat(0)
    except OSError:
        null = os.open(os.devnull, os.O_RDONLY)
        if null != 0:
            os.dup2(null, 0)
            os.close(null)
    if not _is_healthy(sys.__stdout__, 1):
        sys.__stdout__ = _text_stream(1)
    if not _is_healthy(sys.__stderr__, 2):
        sys.__stderr__ = _text_stream(2)
    if not _is_healthy(sys.__stdin__, 0):
        sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115 (fd 0 outlives it)
    sys.stdout = sys.__stdout__
    sys.stderr = sys.__stderr__
    sys.stdin = sys.__stdin__


def _is_healthy(stream: Any, fd: int) -> bool:
    try:
        return stream is not None and not stream.closed and stream.fileno() == fd
    except Exception:  # a cell's replacement stream may raise anything
        return False


def _text_stream(fd: int) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", line_buffering=True)
