"""Seccomp: the agent's RuntimeDefault profile, and docker-style profiles converted to OCI.

Both functions return the OCI runtime-spec ``linux.seccomp`` object (``defaultAction``,
``defaultErrnoRet``, ``architectures``, ``syscalls[{names, action, errnoRet, args}]``),
already filtered for one container: its capabilities, the host architecture and kernel.

``default_profile`` is what the kubelet's ``RuntimeDefault`` means here. It is written as
our own tables below (groups of always-allowed syscalls plus small conditional rules),
and is equivalent in effect to moby's default profile as of mid-2025 (Docker Engine 28.x,
after moby PRs #47341, #50077 and #50097). Read at github.com/moby/profiles
``seccomp/default.json`` @ 190fa92cb275 and ``seccomp/default_linux.go`` @ 6e3ef8039bcc,
cross-checked with moby/moby ``profiles/seccomp/default.json`` @ 00f3d189e420 and
containerd ``contrib/seccomp/seccomp_default.go`` @ 96929a5d3102. Each of those two
moby/profiles commits carries one change we could not find in a Docker release
(``add_key``/``keyctl``/``request_key`` allowed; ``unshare`` without CAP_SYS_ADMIN); we
keep the released policy: the key syscalls stay denied and ``unshare`` needs
CAP_SYS_ADMIN. In short:

* default ``SCMP_ACT_ERRNO`` with EPERM; 361 syscall names allowed outright (some exist only
  on 32-bit ABIs);
* ``socket`` except ``AF_VSOCK``; ``personality`` only with the five harmless values;
* ``ptrace``/``process_vm_*`` on kernels >= 4.8 (older ones let ptrace bypass seccomp);
* syscalls that need a capability are allowed only when the container has it
  (CAP_SYS_ADMIN: mount, unshare, setns, bpf, ...; CAP_SYS_PTRACE, CAP_SYS_BOOT, ...);
* without CAP_SYS_ADMIN, ``clone`` may not create namespaces and ``clone3`` (whose flags
  live in memory seccomp cannot read) fails with ENOSYS so that libc falls back to clone.

containers/common ``pkg/seccomp/seccomp.json`` (CRI-O's default; read @ 4d1476ba87c2) is
looser (mount, unshare, keyctl allowed outright; ENOSYS by default), so this profile is
stricter than that file; containerd generates moby's policy in Go.

``from_docker_json`` converts the profiles the kubelet points at with ``Localhost``:
docker/containers-style JSON (``archMap``, ``includes``/``excludes``, ``name``,
containers' ``defaultErrno``/``errno`` names) or plain OCI form, with moby's filtering
rules: ``includes.caps`` needs every listed capability, ``excludes.caps`` drops the rule
if any is present, ``arches`` are Go architecture names (amd64, arm64, ...), and
``minKernel`` ("4.8") is compared with ``os.uname().release``.

Size: longer than the ~500-line rule on purpose: the RuntimeDefault tables and
the code that filters them per container are one policy, audited together.
"""

from __future__ import annotations

import errno as errno_names
import json
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import InvalidArgument

__all__ = [
    "ACTIONS",
    "ALWAYS_ALLOWED",
    "CONDITIONAL_RULES",
    "OPERATORS",
    "Arg",
    "Filter",
    "Rule",
    "default_profile",
    "from_docker_json",
]

ACT_ALLOW = "SCMP_ACT_ALLOW"
ACT_ERRNO = "SCMP_ACT_ERRNO"

#: Every action runc accepts (libcontainer/seccomp ``getAction``).
ACTIONS = frozenset(
    {
        ACT_ALLOW,
        ACT_ERRNO,
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
#: Every argument comparison runc accepts; MASKED_EQ is ``(arg & value) == valueTwo``.
OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)
#: libseccomp architecture names (runtime-spec config-linux.md).
ARCHITECTURES = frozenset(
    f"SCMP_ARCH_{a}"
    for a in (
        *("X86", "X86_64", "X32", "ARM", "AARCH64", "PPC", "PPC64", "PPC64LE", "S390", "S390X"),
        *("MIPS", "MIPS64", "MIPS64N32", "MIPSEL", "MIPSEL64", "MIPSEL64N32"),
        *("PARISC", "PARISC64", "RISCV64"),
    )
)
#: The most an errno return may be (the kernel's MAX_ERRNO).
_MAX_ERRNO = 4095

# Flag values used by the rules (linux/sched.h, linux/socket.h, linux/personality.h).
_CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
_AF_VSOCK = 40
_PER_LINUX = 0x0000
_PER_LINUX32 = 0x0008
_UNAME26 = 0x0020000
_PERSONALITY_QUERY = 0xFFFFFFFF


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument comparison: ``args[index] <op> value`` (MASKED_EQ uses ``value_two``)."""

    index: int
    value: int
    op: str
    value_two: int = 0

    def to_oci(self) -> dict[str, Any]:
        return {"index": self.index, "value": self.value, "valueTwo": self.value_two, "op": self.op}


@dataclass(frozen=True, slots=True)
class Filter:
    """A condition on the container: capabilities, Go arch names, minimum kernel."""

    caps: frozenset[str] = frozenset()
    arches: frozenset[str] = frozenset()
    min_kernel: tuple[int, ...] | None = None

    def is_empty(self) -> bool:
        return not self.caps and not self.arches and self.min_kernel is None


@dataclass(frozen=True, slots=True)
class _Target:
    """What the rules are evaluated against: one container on one host."""

    caps: frozenset[str]
    goarch: str
    kernel: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """Syscalls that get ``action`` when ``includes`` holds and ``excludes`` does not.

    ``includes``: every listed capability present, the arch listed, kernel new enough.
    ``excludes``: any listed capability present, or the arch listed, or kernel new enough.
    """

    names: tuple[str, ...]
    action: str = ACT_ALLOW
    errno_ret: int | None = None
    args: tuple[Arg, ...] = ()
    includes: Filter = field(default_factory=Filter)
    excludes: Filter = field(default_factory=Filter)

    def applies_to(self, target: _Target) -> bool:
        ex, inc = self.excludes, self.includes
        if ex.arches and target.goarch in ex.arches:
            return False
        if ex.caps and not ex.caps.isdisjoint(target.caps):
            return False
        if ex.min_kernel is not None and target.kernel >= ex.min_kernel:
            return False
        if inc.arches and target.goarch not in inc.arches:
            return False
        if inc.caps and not inc.caps <= target.caps:
            return False
        return not (inc.min_kernel is not None and target.kernel < inc.min_kernel)

    def to_oci(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"names": list(self.names), "action": self.action}
        if self.errno_ret is not None:
            entry["errnoRet"] = self.errno_ret
        if self.args:
            entry["args"] = [a.to_oci() for a in self.args]
        return entry


def _needs(cap: str, *names: str) -> Rule:
    return Rule(names, includes=Filter(caps=frozenset({cap})))


def _on(arches: str, *names: str) -> Rule:
    return Rule(names, includes=Filter(arches=frozenset(arches.split())))


def _personality(value: int) -> Rule:
    return Rule(("personality",), args=(Arg(0, value, "SCMP_CMP_EQ"),))


# --------------------------------------------------------------------------- the profile

# fmt: off
#: Syscalls every container may make, by what they are for. The kernel still applies its
#: own permission checks (e.g. setuid needs CAP_SETUID); seccomp only narrows the surface.
ALWAYS_ALLOWED: dict[str, tuple[str, ...]] = {
    # Run programs and processes: exec, exit, wait, ids, sessions, thread-local setup.
    "processes": (
        "execve", "execveat", "exit", "exit_group", "fork", "vfork", "wait4", "waitid",
        "waitpid", "getpid", "getppid", "gettid", "getpgid", "getpgrp", "getsid", "setpgid",
        "setsid", "set_tid_address", "prctl", "restart_syscall", "pidfd_open",
        "process_mrelease", "uname", "sysinfo", "getcpu", "get_thread_area",
        "set_thread_area", "rseq",
    ),
    # Threads: futexes (incl. futex2), robust lists, memory barriers.
    "threads": (
        "futex", "futex_time64", "futex_waitv", "futex_wait", "futex_wake", "futex_requeue",
        "set_robust_list", "get_robust_list", "membarrier",
    ),
    # Send, block, wait for and handle signals.
    "signals": (
        "kill", "tkill", "tgkill", "pidfd_send_signal", "rt_sigaction", "rt_sigpending",
        "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
        "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaltstack",
        "signalfd", "signalfd4", "sigprocmask", "sigreturn", "pause",
    ),
    # Read and change user/group ids and capability sets (the kernel checks CAP_SET*).
    "credentials": (
        "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid",
        "getegid32", "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups",
        "getgroups32", "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32",
        "setregid", "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32",
        "setfsuid", "setfsuid32", "setfsgid", "setfsgid32", "setgroups", "setgroups32",
        "capget", "capset",
    ),
    # The process's own memory: mappings, protection keys, locking, sealing, memfds.
    "memory": (
        "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore",
        "msync", "mlock", "mlock2", "mlockall", "munlock", "munlockall", "remap_file_pages",
        "memfd_create", "memfd_secret", "pkey_alloc", "pkey_free", "pkey_mprotect",
        "map_shadow_stack", "mseal",
    ),
    # Open, read, write, sync and splice file descriptors; pipes.
    "file I/O": (
        "open", "openat", "openat2", "creat", "close", "close_range", "dup", "dup2", "dup3",
        "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "pwrite64",
        "pwritev", "pwritev2", "lseek", "_llseek", "fcntl", "fcntl64", "ioctl", "flock",
        "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "fallocate", "ftruncate",
        "ftruncate64", "truncate", "truncate64", "fadvise64", "fadvise64_64", "readahead",
        "sendfile", "sendfile64", "splice", "tee", "vmsplice", "copy_file_range", "pipe",
        "pipe2", "cachestat",
    ),
    # Paths and inode metadata: stat, directories, links, modes, owners, times, mounts seen.
    "paths and metadata": (
        "access", "faccessat", "faccessat2", "stat", "stat64", "lstat", "lstat64", "fstat",
        "fstat64", "fstatat64", "newfstatat", "statx", "statfs", "statfs64", "fstatfs",
        "fstatfs64", "statmount", "listmount", "getdents", "getdents64", "getcwd", "chdir",
        "fchdir", "mkdir", "mkdirat", "mknod", "mknodat", "rmdir", "rename", "renameat",
        "renameat2", "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat",
        "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown",
        "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32", "umask", "utime",
        "utimes", "utimensat", "utimensat_time64", "futimesat", "name_to_handle_at",
    ),
    # Extended attributes.
    "xattrs": (
        "getxattr", "lgetxattr", "fgetxattr", "getxattrat", "setxattr", "lsetxattr",
        "fsetxattr", "setxattrat", "listxattr", "llistxattr", "flistxattr", "listxattrat",
        "removexattr", "lremovexattr", "fremovexattr", "removexattrat",
    ),
    # Watch files for changes (creating a fanotify group needs CAP_SYS_ADMIN, below).
    "file notifications": (
        "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
        "fanotify_mark",
    ),
    # Wait on many descriptors; eventfds.
    "event loops": (
        "poll", "ppoll", "ppoll_time64", "select", "_newselect", "pselect6",
        "pselect6_time64", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
        "epoll_wait", "epoll_wait_old", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
    ),
    # Linux native AIO (io_uring is not here: moby blocks it since Docker 25).
    "async I/O": (
        "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents",
        "io_pgetevents", "io_pgetevents_time64",
    ),
    # Read clocks, sleep, timers; adjtimex/clock_adjtime only read without CAP_SYS_TIME.
    "time": (
        "time", "gettimeofday", "clock_gettime", "clock_gettime64", "clock_getres",
        "clock_getres_time64", "clock_nanosleep", "clock_nanosleep_time64", "nanosleep",
        "adjtimex", "clock_adjtime", "clock_adjtime64", "times", "alarm", "getitimer",
        "setitimer", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
        "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
        "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
    ),
    # Use sockets (creating one is the socket rule below).
    "sockets": (
        "accept", "accept4", "bind", "connect", "listen", "getsockname", "getpeername",
        "getsockopt", "setsockopt", "send", "sendto", "sendmsg", "sendmmsg", "recv",
        "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64", "shutdown", "socketpair",
        "socketcall",
    ),
    # System V and POSIX IPC (namespaced by the pod's IPC namespace).
    "ipc": (
        "ipc", "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop",
        "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget", "mq_open",
        "mq_unlink", "mq_notify", "mq_getsetattr", "mq_timedsend", "mq_timedsend_time64",
        "mq_timedreceive", "mq_timedreceive_time64",
    ),
    # Scheduling, priorities and resource limits (the kernel checks CAP_SYS_NICE/RESOURCE).
    "scheduling and limits": (
        "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr",
        "sched_setattr", "sched_getparam", "sched_setparam", "sched_getscheduler",
        "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min",
        "sched_rr_get_interval", "sched_rr_get_interval_time64", "getpriority",
        "setpriority", "ioprio_get", "ioprio_set", "getrlimit", "setrlimit", "ugetrlimit",
        "prlimit64", "getrusage",
    ),
    # A process may sandbox itself further.
    "self-sandboxing": (
        "seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    ),
    # Randomness, uprobe returns, RISC-V hardware probing.
    "misc": ("getrandom", "uretprobe", "riscv_hwprobe"),
}

#: Allowed only when the container holds the capability (as the kernel would demand).
_CAPABILITY_RULES = (
    _needs("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    # Mounts, namespaces, hostnames, tracing and BPF, quotas, LSM attributes, the kernel log.
    _needs(
        "CAP_SYS_ADMIN",
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr",
        "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl",
        "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
        "umount2", "unshare",
    ),
    _needs("CAP_SYS_BOOT", "reboot"),
    _needs("CAP_SYS_CHROOT", "chroot"),
    _needs("CAP_SYS_MODULE", "delete_module", "init_module", "finit_module"),
    _needs("CAP_SYS_PACCT", "acct"),
    _needs(
        "CAP_SYS_PTRACE",
        "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
        "ptrace",
    ),
    _needs("CAP_SYS_RAWIO", "iopl", "ioperm"),
    _needs("CAP_SYS_TIME", "settimeofday", "stime", "clock_settime", "clock_settime64"),
    _needs("CAP_SYS_TTY_CONFIG", "vhangup"),
    _needs("CAP_SYS_NICE", "get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    _needs("CAP_SYSLOG", "syslog"),
    _needs("CAP_BPF", "bpf"),
    _needs("CAP_PERFMON", "perf_event_open"),
)

#: Everything else that depends on the container, the architecture or the kernel.
CONDITIONAL_RULES: tuple[Rule, ...] = (
    # Before 4.8 a traced process could skip seccomp, so ptrace only on newer kernels.
    Rule(
        ("process_vm_readv", "process_vm_writev", "ptrace"),
        includes=Filter(min_kernel=(4, 8)),
    ),
    # Any socket family except AF_VSOCK (host/VM sockets outside the network namespace).
    Rule(("socket",), args=(Arg(0, _AF_VSOCK, "SCMP_CMP_NE"),)),
    # personality(2) only to query or select Linux/Linux32 with or without UNAME26.
    _personality(_PER_LINUX),
    _personality(_PER_LINUX32),
    _personality(_UNAME26),
    _personality(_UNAME26 | _PER_LINUX32),
    _personality(_PERSONALITY_QUERY),
    # Architecture-specific syscalls (Go arch names, like moby's profile).
    _on("ppc64le", "sync_file_range2", "swapcontext"),
    _on(
        "arm arm64",
        "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
        "cacheflush", "set_tls",
    ),
    _on("amd64 x32", "arch_prctl"),
    _on("amd64 x32 x86", "modify_ldt"),
    _on("s390 s390x", "s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    _on("riscv64", "riscv_flush_icache"),
    *_CAPABILITY_RULES,
    # Without CAP_SYS_ADMIN: clone/fork/threads yes, new namespaces no (s390 swaps args).
    Rule(
        ("clone",),
        args=(Arg(0, _CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0),),
        excludes=Filter(caps=frozenset({"CAP_SYS_ADMIN"}), arches=frozenset({"s390", "s390x"})),
    ),
    Rule(
        ("clone",),
        args=(Arg(1, _CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0),),
        includes=Filter(arches=frozenset({"s390", "s390x"})),
        excludes=Filter(caps=frozenset({"CAP_SYS_ADMIN"})),
    ),
    # clone3 passes its flags in memory seccomp cannot inspect: ENOSYS makes libc use clone.
    Rule(
        ("clone3",),
        action=ACT_ERRNO,
        errno_ret=errno_names.ENOSYS,
        excludes=Filter(caps=frozenset({"CAP_SYS_ADMIN"})),
    ),
)
# fmt: on


@dataclass(frozen=True, slots=True)
class _Platform:
    goarch: str
    #: libseccomp name of the native ABI, None if we do not know this machine.
    native: str | None
    subs: tuple[str, ...] = ()


_PLATFORMS = {
    "x86_64": _Platform("amd64", "SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
    "aarch64": _Platform("arm64", "SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
    "i686": _Platform("386", "SCMP_ARCH_X86"),
    "armv7l": _Platform("arm", "SCMP_ARCH_ARM"),
    "ppc64le": _Platform("ppc64le", "SCMP_ARCH_PPC64LE"),
    "s390x": _Platform("s390x", "SCMP_ARCH_S390X", ("SCMP_ARCH_S390",)),
    "riscv64": _Platform("riscv64", "SCMP_ARCH_RISCV64"),
    "mips64": _Platform("mips64", "SCMP_ARCH_MIPS64", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32")),
    "mips64el": _Platform(
        "mips64le", "SCMP_ARCH_MIPSEL64", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32")
    ),
}
#: Other spellings of the same machines (Go's GOARCH and uname variants).
_ARCH_ALIASES = {
    "amd64": "x86_64",
    "arm64": "aarch64",
    "386": "i686",
    "i386": "i686",
    "i586": "i686",
    "x86": "i686",
    "arm": "armv7l",
    "armv8l": "armv7l",
    "mips64le": "mips64el",
}


# --------------------------------------------------------------------------- public API


def default_profile(
    capabilities: Collection[str], arch: str | None = None, *, kernel: str | None = None
) -> dict[str, Any]:
    """The RuntimeDefault ``linux.seccomp`` object for a container with ``capabilities``.

    ``capabilities`` are the container's effective capabilities, with or without the
    ``CAP_`` prefix. ``arch`` is a uname machine or Go arch name (default: this host);
    ``kernel`` a release string like ``6.1.0-18-amd64`` (default: this host's).
    """
    platform = _platform(arch)
    target = _target(capabilities, platform, kernel)
    always = Rule(tuple(sorted({n for names in ALWAYS_ALLOWED.values() for n in names})))
    rules = [always, *(r for r in CONDITIONAL_RULES if r.applies_to(target))]
    return {
        "defaultAction": ACT_ERRNO,
        "defaultErrnoRet": errno_names.EPERM,
        "architectures": [platform.native, *platform.subs] if platform.native else [],
        "syscalls": [r.to_oci() for r in rules],
    }


def from_docker_json(
    data: bytes | str,
    capabilities: Collection[str],
    arch: str | None = None,
    *,
    kernel: str | None = None,
) -> dict[str, Any]:
    """Convert a docker/containers-style (or OCI) seccomp profile to ``linux.seccomp``.

    Rules are kept or dropped by their ``includes``/``excludes`` against
    ``capabilities``, ``arch`` and ``kernel`` (defaults as in ``default_profile``);
    ``archMap`` becomes the ``architectures`` of this machine. Raises
    ``InvalidArgument`` naming the field for anything runc would refuse or we cannot
    interpret; the caller adds the file's path.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"not valid JSON: {exc}") from None
    profile = _object(doc, "top level")
    platform = _platform(arch)
    target = _target(capabilities, platform, kernel)

    out: dict[str, Any] = {"defaultAction": _action(profile.get("defaultAction"), "defaultAction")}
    default_errno = _errno_ret(profile, "defaultErrnoRet", "defaultErrno", "")
    if default_errno is not None:
        out["defaultErrnoRet"] = default_errno
    out["architectures"] = _architectures(profile, platform)
    if profile.get("flags") is not None:
        out["flags"] = _strings(profile["flags"], "flags")
    for key in ("listenerPath", "listenerMetadata"):
        if profile.get(key) is not None:
            out[key] = _string(profile[key], key)

    syscalls = profile.get("syscalls")
    entries = [] if syscalls is None else _list(syscalls, "syscalls")
    rules = [_rule(entry, f"syscalls[{i}]") for i, entry in enumerate(entries)]
    out["syscalls"] = [r.to_oci() for r in rules if r.applies_to(target)]
    return out


# --------------------------------------------------------------------------- helpers


def _platform(arch: str | None) -> _Platform:
    machine = (arch or os.uname().machine).strip().lower()
    machine = _ARCH_ALIASES.get(machine, machine)
    return _PLATFORMS.get(machine) or _Platform(machine, None)


def _normalize_cap(cap: str) -> str:
    cap = cap.strip().upper()
    return cap if cap.startswith("CAP_") else f"CAP_{cap}"


def _kernel_version(release: str, what: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release.strip())
    if match is None:
        raise InvalidArgument(f"{what}: {release!r} is not a kernel version like '4.8'")
    return tuple(int(part) for part in match.groups() if part is not None)


def _target(capabilities: Iterable[str], platform: _Platform, kernel: str | None) -> _Target:
    release = kernel if kernel is not None else os.uname().release
    return _Target(
        caps=frozenset(_normalize_cap(c) for c in capabilities),
        goarch=platform.goarch,
        kernel=_kernel_version(release, "kernel release"),
    )


def _architectures(profile: Mapping[str, Any], platform: _Platform) -> list[str]:
    listed, arch_map = profile.get("architectures"), profile.get("archMap")
    if listed and arch_map:
        raise InvalidArgument("use either 'architectures' or 'archMap', not both")
    if arch_map:
        found: list[str] = []
        for i, entry in enumerate(_list(arch_map, "archMap")):
            item = _object(entry, f"archMap[{i}]")
            native = _arch(item.get("architecture"), f"archMap[{i}].architecture")
            subs = item.get("subArchitectures")
            sub_list = [] if subs is None else _list(subs, f"archMap[{i}].subArchitectures")
            subs_checked = [
                _arch(s, f"archMap[{i}].subArchitectures[{j}]") for j, s in enumerate(sub_list)
            ]
            if native == platform.native:
                found += [native, *subs_checked]
        return found
    if listed is None:
        return []
    return [_arch(a, f"architectures[{i}]") for i, a in enumerate(_list(listed, "architectures"))]


def _rule(entry: Any, where: str) -> Rule:
    item = _object(entry, where)
    name, names = item.get("name"), item.get("names")
    if name is not None and names:
        raise InvalidArgument(f"{where}: use either 'name' or 'names', not both")
    if name is not None:
        all_names = [_string(name, f"{where}.name")]
    else:
        all_names = _strings(names, f"{where}.names") if names is not None else []
    if not all_names or any(not n for n in all_names):
        raise InvalidArgument(f"{where}: needs a non-empty 'names' list of syscall names")
    raw_args = item.get("args")
    args = [] if raw_args is None else _list(raw_args, f"{where}.args")
    return Rule(
        names=tuple(all_names),
        action=_action(item.get("action"), f"{where}.action"),
        errno_ret=_errno_ret(item, "errnoRet", "errno", f"{where}."),
        args=tuple(_arg(a, f"{where}.args[{j}]") for j, a in enumerate(args)),
        includes=_filter(item.get("includes"), f"{where}.includes"),
        excludes=_filter(item.get("excludes"), f"{where}.excludes"),
    )


def _arg(entry: Any, where: str) -> Arg:
    item = _object(entry, where)
    index = _uint(item.get("index"), f"{where}.index", limit=5)
    value = _uint(item.get("value", 0), f"{where}.value", limit=2**64 - 1)
    value_two = _uint(item.get("valueTwo", 0), f"{where}.valueTwo", limit=2**64 - 1)
    op = item.get("op")
    if op not in OPERATORS:
        raise InvalidArgument(
            f"{where}.op: unknown operator {op!r} (expected one of {', '.join(sorted(OPERATORS))})"
        )
    return Arg(index, value, op, value_two)


def _filter(value: Any, where: str) -> Filter:
    if value is None:
        return Filter()
    item = _object(value, where)
    caps = item.get("caps")
    arches = item.get("arches")
    min_kernel = item.get("minKernel")
    return Filter(
        caps=frozenset(_normalize_cap(c) for c in _strings(caps, f"{where}.caps"))
        if caps
        else frozenset(),
        arches=frozenset(_strings(arches, f"{where}.arches")) if arches else frozenset(),
        min_kernel=_kernel_version(_string(min_kernel, f"{where}.minKernel"), f"{where}.minKernel")
        if min_kernel
        else None,
    )


def _action(value: Any, where: str) -> str:
    if value not in ACTIONS:
        raise InvalidArgument(
            f"{where}: unknown seccomp action {value!r} "
            f"(expected one of {', '.join(sorted(ACTIONS))})"
        )
    return str(value)


def _arch(value: Any, where: str) -> str:
    if value not in ARCHITECTURES:
        raise InvalidArgument(f"{where}: unknown seccomp architecture {value!r}")
    return str(value)


def _errno_ret(item: Mapping[str, Any], num_key: str, name_key: str, where: str) -> int | None:
    """``errnoRet`` (a number) or containers' ``errno`` (a name like "ENOSYS")."""
    number = item.get(num_key)
    name = item.get(name_key)
    by_number = None if number is None else _uint(number, where + num_key, limit=_MAX_ERRNO)
    by_name = None
    if name:
        code = getattr(errno_names, _string(name, where + name_key), None)
        if not isinstance(code, int) or not str(name).startswith("E"):
            raise InvalidArgument(f"{where}{name_key}: unknown errno name {name!r}")
        by_name = code
    if by_number is not None and by_name is not None and by_number != by_name:
        raise InvalidArgument(f"{where}{num_key} ({by_number}) and {name_key} ({name}) disagree")
    return by_name if by_name is not None else by_number


def _uint(value: Any, where: str, *, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise InvalidArgument(f"{where}: expected an integer from 0 to {limit}, got {value!r}")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}: expected a JSON list, got {type(value).__name__}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    return [_string(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where))]
