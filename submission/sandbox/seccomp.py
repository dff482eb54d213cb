"""A seccomp filter for session processes: the system calls no namespace here contains fail.

Namespaces do not cover the kernel's keyrings: a key one session adds to its uid's
keyring is there for the next session leased that uid, in this run or the next, and
keys fill the uid's quota. Unprivileged user namespaces give a cell root inside one:
mounts (a tmpfs past `disk_mb`), and kernel code unprivileged users never reach
otherwise. So, as Docker's default profile does (docs.docker.com/engine/security/seccomp,
"Significant syscalls blocked by the default profile"), these fail with EPERM:

- keyrings: add_key, request_key, keyctl;
- new namespaces: unshare, setns, clone with any CLONE_NEW* flag (clone3 fails with
  ENOSYS instead, as in Docker since moby/moby#42681: its flags sit in memory a filter
  cannot read, and glibc then falls back to clone, whose flags it can);
- mounts: mount, umount2, pivot_root and the new mount API;
- other processes' memory: ptrace, process_vm_readv, process_vm_writev;
- kernel attack surface a math cell never needs: bpf, perf_event_open, userfaultfd,
  io_uring, kexec, kernel modules, reboot, swap, acct.

A call through another ABI (32-bit `int 0x80`, x32 numbers) could bypass a list of
x86_64 numbers: such calls kill the process (the 32-bit entry) or fail (x32). The filter
is written for x86_64 only; elsewhere `supported()` says no and sessions run without it
(`Sandbox.guards()` says so). It is a small BPF program installed through ctypes
(prctl PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP), no library needed.
"""

from __future__ import annotations

import ctypes
import errno
import platform

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
# offsets in struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR, _ARCH, _ARG0 = 0, 4, 16
# BPF opcodes: load word at absolute offset, jumps on the accumulator, return.
_LD_ABS = 0x20
_JEQ = 0x15
_JGE = 0x35
_JSET = 0x45
_RET = 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_KILL_PROCESS = 0x80000000

# x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl).
DENIED_X86_64 = {
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "setns": 308,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "reboot": 169,
    "swapon": 167,
    "swapoff": 168,
    "acct": 163,
}
_CLONE = 56
_CLONE3 = 435
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
# CLONE_NEWPID | CLONE_NEWNET (CLONE_NEWTIME is unshare/clone3 only).
_CLONE_NEW_NAMESPACES = 0x00020000 | 0x7E000000


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def supported() -> bool:
    """Whether there is a filter for this machine's architecture."""
    return platform.machine() == "x86_64"


def program() -> list[tuple[int, int, int, int]]:
    """The filter as (code, jump if true, jump if false, k) instructions."""
    denied = sorted(DENIED_X86_64.values())
    # Layout: arch check, x32 check, one test per denied call, the clone test, returns.
    deny_at = 5 + len(denied) + 5  # index of the "return EPERM" instruction
    code: list[tuple[int, int, int, int]] = [
        (_LD_ABS, 0, 0, _ARCH),
        (_JEQ, 1, 0, _AUDIT_ARCH_X86_64),
        (_RET, 0, 0, _KILL_PROCESS),  # another ABI (the 32-bit entry): never a math cell's
        (_LD_ABS, 0, 0, _NR),
    ]
    code.append((_JGE, deny_at - len(code) - 1, 0, _X32_SYSCALL_BIT))
    for number in denied:
        code.append((_JEQ, deny_at - len(code) - 1, 0, number))
    code.append((_JEQ, deny_at + 1 - len(code) - 1, 0, _CLONE3))  # -> return ENOSYS
    code.append((_JEQ, 0, 2, _CLONE))
    code.append((_LD_ABS, 0, 0, _ARG0))  # clone's flags (their low 32 bits)
    code.append((_JSET, deny_at - len(code) - 1, 0, _CLONE_NEW_NAMESPACES))
    code.append((_RET, 0, 0, _ALLOW))
    assert len(code) == deny_at
    code.append((_RET, 0, 0, _ERRNO | errno.EPERM))
    code.append((_RET, 0, 0, _ERRNO | errno.ENOSYS))
    return code


def install() -> None:
    """Install the filter on this process (and so on all it starts from now on); no
    privilege needed. Raises OSError where the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    instructions = program()
    array = (_SockFilter * len(instructions))(*(_SockFilter(*i) for i in instructions))
    fprog = _SockFprog(len(instructions), array)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
