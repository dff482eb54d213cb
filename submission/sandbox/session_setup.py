"""What turns a child just forked by the fork server into a session process.

In order: it joins its cgroups, becomes a process group and subreaper of its own,
keeps only its channel and pipes, takes private mount (tmpfs), network and IPC
namespaces (where the machine allows), with the interpreter's own folders under the
hidden ones (/tmp, /run...) bound back read-only, sets its rlimits, drops to its uid,
leaves the keyrings it inherited and empties its uid's, dies with the server, and
installs the seccomp filter. Also the probes the server runs once to learn which of
these the machine allows, and the trick that keeps a root-only interpreter importable
after the drop.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import sys
import sysconfig
import time
from collections.abc import Sequence
from typing import Any

from submission.sandbox import seccomp

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
# keyctl(2) operations and special keyring ids.
_KEYCTL = {"x86_64": 250, "aarch64": 219}
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_CLEAR = 7
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5
# A session's own keyrings: its uid's user and user-session keyrings, its session keyring.
_OWN_KEYRINGS = 3
_KEY_COLLECTION_S = 0.5
# Inside a private mount namespace: one tmpfs on /tmp (the session's working directory
# and home), the other world-writable folders bound onto sub-folders of it, so all
# of them share one size budget.
PRIVATE_TMP = "/tmp"
_BOUND_TMP = {"/var/tmp": ".var-tmp", "/dev/shm": ".dev-shm", "/run/lock": ".run-lock"}
# Folders a session's mount namespace covers with its own (empty) ones.
HIDDEN_ROOTS = ("/tmp", "/var/tmp", "/dev/shm", "/run")


def become_session(
    request: dict[str, Any],
    user: list[int] | None,
    fds: list[int],
    server_channel: socket.socket,
    keep: list[int],
    interpreter_binds: list[str],
) -> None:
    server_pid = os.getppid()
    # First: everything from here on, memory and processes, counts against its budget.
    for folder in request.get("cgroups") or ():
        with open(os.path.join(folder, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
    for signum in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    # Orphans of this session's children stay in its tree, where `kill` finds them.
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    server_channel.detach()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fds[1], 1)
    os.dup2(fds[2], 2)
    _close_all_but({0, 1, 2, *fds, *keep})
    if request["isolate"]:
        _isolate(int(request["disk_mb"]), user, interpreter_binds)
        workdir = PRIVATE_TMP
    else:
        workdir = request["workdir"]
        if user is not None:
            os.chown(workdir, *user)
    if user is not None:
        # A session uid has no passwd entry: getpass.getuser() reads these first.
        os.environ.update({"USER": "sandbox", "LOGNAME": "sandbox"})
    os.chdir(workdir)
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PWD": workdir})
    for name, (soft, hard) in request["limits"].items():
        which = getattr(resource, name)
        resource.setrlimit(which, _below_hard_limit(which, soft, hard))
    if user is not None:
        _drop_privileges(user)
    # After the drop, which clears it: die with the server.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server_pid:  # the server died before the prctl
        os._exit(0)
    _leave_keyrings(
        own_uid=user is not None and request.get("uid") == user[0],
        filtered=bool(request.get("seccomp")),
    )
    if request.get("seccomp"):
        seccomp.install()
    sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115 (fd 0 outlives it)


def _below_hard_limit(which: int, soft: int, hard: int) -> tuple[int, int]:
    """(soft, hard) lowered to the current hard limit: raising it needs CAP_SYS_RESOURCE,
    which a container's root usually lacks."""
    infinity = resource.RLIM_INFINITY
    current = resource.getrlimit(which)[1]
    if current != infinity and (hard == infinity or hard > current):
        hard = current
    if hard != infinity and (soft == infinity or soft > hard):
        soft = hard
    return soft, hard


def _isolate(disk_mb: int, user: list[int] | None, interpreter_binds: Sequence[str] = ()) -> bool:
    """Private mount, network and IPC namespaces: a fresh tmpfs of `disk_mb` for /tmp
    and its kin, owned by the session's user (gone with the session's last process),
    an empty /run (host sockets such as docker's are out of reach), no network
    interface up, SysV IPC objects and message queues of its own (gone with it too).
    The interpreter's folders those hide (a venv under /tmp: `interpreter_binds`) are
    bound back at their paths, read-only. Then, where the machine allows, a /proc that
    shows only the session's own processes (other command lines may hold secrets):
    True when it does."""
    _unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)
    _mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    # Opened in the new namespace (a bind's source must be in it) before the mounts hide them.
    binds = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in interpreter_binds}
    options = f"size={disk_mb}m,mode=1777"
    if user is not None:
        options += f",uid={user[0]},gid={user[1]}"
    _mount(b"tmpfs", PRIVATE_TMP.encode(), b"tmpfs", 0, options.encode())
    if os.path.isdir("/run"):
        shm = os.path.realpath("/dev/shm")  # some images link it into /run
        _mount(b"tmpfs", b"/run", b"tmpfs", 0, b"size=64k,mode=755")
        for folder in ("/run/lock", shm):
            if folder.startswith("/run/"):
                os.makedirs(folder, exist_ok=True)
    for target, name in _BOUND_TMP.items():
        if not os.path.isdir(target):
            continue
        source = os.path.join(PRIVATE_TMP, name)
        os.mkdir(source)
        os.chmod(source, 0o1777)
        _mount(source.encode(), target.encode(), None, MS_BIND, None)
    for path, fd in binds.items():
        _bind_read_only(fd, path)
        os.close(fd)
    try:  # a container that masks parts of /proc refuses a fresh one
        _mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"hidepid=invisible")
    except OSError:
        return False
    return True


def _bind_read_only(fd: int, path: str) -> None:
    """Show the folder (or file) open as `fd` at `path` again, read-only: the mount point
    is made inside the new tmpfs (root's, 0755: the session cannot remove it)."""
    is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
    os.makedirs(path if is_dir else os.path.dirname(path), mode=0o755, exist_ok=True)
    if not is_dir and not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
    source = f"/proc/self/fd/{fd}".encode()
    _mount(source, path.encode(), None, MS_BIND | MS_REC, None)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    _mount(b"none", path.encode(), None, flags, None)


def interpreter_paths_to_bind() -> list[str]:
    """The interpreter's own paths (its prefixes, every sys.path entry) that a session's
    tmpfs over /tmp, /var/tmp, /dev/shm or /run would hide (a venv or a --target folder
    under /tmp, a checkout there on sys.path); only those every user may reach on the
    host, so the session sees nothing it could not see without namespaces (a library
    folder inside a root-only one is reached through `reachable_import_paths`). A path
    inside another one kept is left out."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    candidates.update(entry for entry in sys.path if entry)
    hidden = [os.path.realpath(root) for root in HIDDEN_ROOTS]
    found = []
    for entry in candidates:
        real = os.path.realpath(entry)
        hidden_here = os.path.exists(real) and any(_within(real, root) for root in hidden)
        if hidden_here and _world_reachable(real):
            found.append(real)
    kept: list[str] = []
    for path in sorted(found, key=len):
        if not any(_within(path, outer) for outer in kept):
            kept.append(path)
    return kept


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _leave_keyrings(own_uid: bool, filtered: bool) -> None:
    """Keyrings are not namespaced: take a session keyring of its own (not the server's,
    which every session would share). With a uid of its own (`own_uid`), empty the uid's
    user keyrings too, which an earlier holder of its lease (in this run or another) may
    have filled; a uid shared with others (the harness's own, or one for all sessions)
    is left alone, its keys are theirs. Without the seccomp filter this is all that keeps
    keys from passing between sessions, so then wait (briefly) for the kernel to collect
    the unlinked keys: their descriptions gone from /proc/keys, their quota free."""
    number = _KEYCTL.get(os.uname().machine)
    if number is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(number, KEYCTL_JOIN_SESSION_KEYRING, None)
    if not own_uid:
        return
    for ring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
        libc.syscall(number, KEYCTL_CLEAR, ctypes.c_long(ring))
    deadline = time.monotonic() + _KEY_COLLECTION_S
    while not filtered and _keys_held(os.getuid()) > _OWN_KEYRINGS:
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)


def _keys_held(uid: int) -> int:
    """How many keys `uid` holds (/proc/key-users: `uid: usage nkeys/nikeys ...`)."""
    try:
        with open("/proc/key-users") as file:
            for line in file:
                owner, _, rest = line.partition(":")
                if owner.strip() == str(uid):
                    return int(rest.split()[1].split("/")[0])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def can_filter() -> bool:
    """Whether this machine lets a forked child install the seccomp filter (a container may
    forbid seccomp, or the architecture has no filter here) and it then refuses add_key."""
    if not seccomp.supported():
        return False
    pid = os.fork()
    if pid == 0:
        try:
            seccomp.install()
            libc = ctypes.CDLL(None, use_errno=True)
            refused = libc.syscall(seccomp.DENIED_X86_64["add_key"], None, None, None, 0, 0) < 0
            os._exit(0 if refused and ctypes.get_errno() == 1 else 1)  # EPERM
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def can_isolate() -> tuple[bool, bool]:
    """Whether this machine lets a forked child take private namespaces and mount a
    tmpfs; and whether it may also mount a /proc of its own."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if _isolate(1, None) else 2)
        except OSError:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
    return code in (0, 2), code == 0


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")


def _mount(
    source: bytes, target: bytes, kind: bytes | None, flags: int, data: bytes | None
) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source, target, kind, flags, data) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target.decode()} failed")


def _drop_privileges(user: list[int]) -> None:
    uid, gid = user
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def can_drop(user: list[int]) -> bool:
    """Whether this machine lets a forked child switch to `user` (some containers do not)."""
    pid = os.fork()
    if pid == 0:
        try:
            _drop_privileges(user)
        except OSError:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _close_all_but(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def reachable_import_paths() -> dict[str, int]:
    """Keep the interpreter's files importable after the privilege drop.

    The interpreter may live under a directory the unprivileged user cannot
    enter (pyenv under /root here). Descriptors opened now as root, reached as
    /proc/self/fd/N, skip the check on those ancestors; sys.path and every loaded
    package's __path__ are rewritten to go through them. Returns them by
    directory; every session process inherits them.
    """
    fds: dict[str, int] = {}

    def through_fd(path: str) -> str:
        for root, fd in fds.items():
            if path == root or path.startswith(root + os.sep):
                return f"/proc/self/fd/{fd}{path[len(root) :]}"
        return path

    # Only the interpreter's own library folders: a descriptor opens a whole subtree,
    # and the harness's working or project folder may hold secrets (a .env file).
    paths = sysconfig.get_paths()
    libraries = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    for entry in sys.path:
        if not entry or not os.path.isdir(entry) or _world_reachable(entry):
            continue
        real = os.path.realpath(entry)
        inside = any(real == lib or real.startswith(lib + os.sep) for lib in libraries)
        if inside or os.path.basename(real) in ("site-packages", "dist-packages"):
            fds[entry] = os.open(entry, os.O_PATH | os.O_DIRECTORY)
    if not fds:
        return {}
    sys.path[:] = [through_fd(p) for p in sys.path]
    for module in list(sys.modules.values()):
        package_path = getattr(module, "__path__", None)
        if package_path is not None:
            with contextlib.suppress(AttributeError, TypeError):
                module.__path__ = [through_fd(p) for p in package_path]
    sys.path_importer_cache.clear()
    return fds


def _world_reachable(path: str) -> bool:
    """Whether any user may walk down to `path` (every ancestor has o+x)."""
    current = os.path.abspath(path)
    while True:
        if not os.stat(current).st_mode & 0o001:
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")
