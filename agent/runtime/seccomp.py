"""Seccomp filters through libseccomp (ctypes), and a profile equivalent to Docker's default.

Why libseccomp through ctypes, and not a Python package: libseccomp is the
library runc, crun, containerd and Docker themselves build on, it is on every
distribution (Debian ``libseccomp2``), and it carries what is hard to get right
by hand — the syscall number tables of every architecture, the x86/x32
sub-architecture checks and the BPF generation. The Python bindings are a poor
fit: Debian's ``python3-seccomp`` is a C extension for the system interpreter
only, and ``pyseccomp`` on PyPI is an unmaintained thin ctypes wrapper of the
same library. What we call is nine functions; binding them here costs less
than a dependency and keeps the shim free of imports.

Gotcha: the library is loaded when this module is imported. Import it before
``pivot_root`` (``shim.py`` and ``security.py`` do): afterwards the host's
library directories may be out of sight.

``DEFAULT_PROFILE`` is the policy of Docker's ``profiles/seccomp/default.json``
(as of Docker 25, which no longer allows io_uring) expressed as data: everything not allowed fails with EPERM; a few calls are
allowed only with a capability (``mount`` with CAP_SYS_ADMIN, ``ptrace`` with
CAP_SYS_PTRACE on old kernels ...), ``clone`` only without namespace flags,
``clone3`` fails with ENOSYS so that libc falls back to ``clone``, and
``socket`` refuses AF_VSOCK. ``build_rules`` evaluates those conditions for a
container's capability set, ``load`` installs the result on the calling thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass

from agent.runtime import syscalls as sc

__all__ = [
    "ACT_ALLOW",
    "DEFAULT_PROFILE",
    "ArgCmp",
    "Profile",
    "Rule",
    "SeccompUnavailable",
    "act_errno",
    "build_rules",
    "load",
]


class SeccompUnavailable(OSError):
    """libseccomp could not be loaded (Debian package ``libseccomp2``)."""


# <seccomp.h> actions
ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000


def act_errno(err: int) -> int:
    """The action "fail the call with ``err``" (SCMP_ACT_ERRNO)."""
    return _ACT_ERRNO | (err & 0xFFFF)


# enum scmp_compare
CMP_NE = 1
CMP_EQ = 4
CMP_MASKED_EQ = 7

# enum scmp_filter_attr

#: Architectures a filter covers, by native machine: the 64-bit ABI and the
#: compatibility ABIs the same kernel also accepts syscalls through. Without
#: them a process could reach blocked calls with ``int 0x80``.
_ARCHES = {
    "x86_64": ("x86_64", "x86", "x32"),
    "aarch64": ("aarch64", "arm"),
}
#: Docker's architecture names (Go's GOARCH), used by the profile's arch conditions.
_DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _load_library() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        return None
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_native.argtypes = []
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_add.restype = ctypes.c_int
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    return lib


_lib = _load_library()
_NR_SCMP_ERROR = -1


# ---------------------------------------------------------------- the profile as data


@dataclass(frozen=True, slots=True)
class ArgCmp:
    """A condition on argument ``index``: ``op`` is CMP_EQ, CMP_NE or CMP_MASKED_EQ (``value`` is the mask)."""

    index: int
    op: int
    value: int
    value_two: int = 0


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of a profile: ``action`` for ``names`` when the conditions hold.

    ``caps``: applies only if the container has *all* of these capabilities;
    ``not_caps``: only if it has *none* of them. ``arches``/``not_arches`` are
    Docker's architecture names (amd64, arm64 ...). ``min_kernel`` is (major, minor).
    """

    names: tuple[str, ...]
    action: int = ACT_ALLOW
    args: tuple[ArgCmp, ...] = ()
    caps: frozenset[str] = frozenset()
    not_caps: frozenset[str] = frozenset()
    arches: frozenset[str] = frozenset()
    not_arches: frozenset[str] = frozenset()
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    default_action: int
    rules: tuple[Rule, ...]


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: Allowed for every container (Docker's unconditional allow list). Not io_uring_*:
#: the operations of a ring bypass seccomp, and Docker 25 (moby#46762) and
#: containerd 1.7 (containerd#9320) took them out of their default profiles.
_ALWAYS_ALLOWED = _names("""
    accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
    clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat
    dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
    epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group
    faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat
    fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr
    fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64
    futex futex_time64 futex_waitv futimesat
    getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32
    getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
    getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage
    getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
    inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
    io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get
    ioprio_set io_setup io_submit ipc kill
    landlock_add_rule landlock_create_ruleset landlock_restrict_self
    lchown lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek
    lsetxattr lstat lstat64
    madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2
    mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
    mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv
    msgsnd msync munlock munlockall munmap
    name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
    pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl
    pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev
    pwritev2
    read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
    sched_getaffinity sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
    sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity
    sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
    semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto
    setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer
    setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32
    setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area
    set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack
    signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs
    statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo
    tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
    timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
    timerfd_settime timerfd_settime64 times tkill truncate truncate64
    ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes
    vfork vmsplice wait4 waitid waitpid write writev
""")

#: CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET: clone(2) may not make namespaces.
_CLONE_NAMESPACE_FLAGS = 0x7E020000
_AF_VSOCK = 40

DEFAULT_PROFILE = Profile(
    default_action=act_errno(errno.EPERM),
    rules=(
        Rule(_ALWAYS_ALLOWED),
        Rule(_names("process_vm_readv process_vm_writev ptrace"), min_kernel=(4, 8)),
        Rule(("socket",), args=(ArgCmp(0, CMP_NE, _AF_VSOCK),)),
        # personality(2) only for the harmless personas: PER_LINUX, PER_LINUX32,
        # UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff.
        *(Rule(("personality",), args=(ArgCmp(0, CMP_EQ, persona),))
          for persona in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),
        Rule(_names("sync_file_range2 swapcontext"), arches=frozenset({"ppc64le"})),
        Rule(_names("arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"),
             arches=frozenset({"arm", "arm64"})),
        Rule(("arch_prctl",), arches=frozenset({"amd64", "x32"})),
        Rule(("modify_ldt",), arches=frozenset({"amd64", "x32", "x86"})),
        Rule(_names("s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"),
             arches=frozenset({"s390", "s390x"})),
        Rule(("riscv_flush_icache",), arches=frozenset({"riscv64"})),
        Rule(("open_by_handle_at",), caps=frozenset({"CAP_DAC_READ_SEARCH"})),
        Rule(_names("""bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount
                       mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd
                       setdomainname sethostname setns syslog umount umount2 unshare"""),
             caps=frozenset({"CAP_SYS_ADMIN"})),
        Rule(("clone",), args=(ArgCmp(0, CMP_MASKED_EQ, _CLONE_NAMESPACE_FLAGS, 0),),
             not_caps=frozenset({"CAP_SYS_ADMIN"}), not_arches=frozenset({"s390", "s390x"})),
        # s390 passes clone's flags second.
        Rule(("clone",), args=(ArgCmp(1, CMP_MASKED_EQ, _CLONE_NAMESPACE_FLAGS, 0),),
             not_caps=frozenset({"CAP_SYS_ADMIN"}), arches=frozenset({"s390", "s390x"})),
        # ENOSYS, not EPERM: libc then falls back to clone(2), whose flags the
        # filter can see (clone3 passes them in memory).
        Rule(("clone3",), action=act_errno(errno.ENOSYS), not_caps=frozenset({"CAP_SYS_ADMIN"})),
        Rule(("reboot",), caps=frozenset({"CAP_SYS_BOOT"})),
        Rule(("chroot",), caps=frozenset({"CAP_SYS_CHROOT"})),
        Rule(_names("delete_module init_module finit_module"), caps=frozenset({"CAP_SYS_MODULE"})),
        Rule(("acct",), caps=frozenset({"CAP_SYS_PACCT"})),
        Rule(_names("kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace"),
             caps=frozenset({"CAP_SYS_PTRACE"})),
        Rule(_names("iopl ioperm"), caps=frozenset({"CAP_SYS_RAWIO"})),
        Rule(_names("settimeofday stime clock_settime clock_settime64"), caps=frozenset({"CAP_SYS_TIME"})),
        Rule(("vhangup",), caps=frozenset({"CAP_SYS_TTY_CONFIG"})),
        Rule(_names("get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
             caps=frozenset({"CAP_SYS_NICE"})),
        Rule(("syslog",), caps=frozenset({"CAP_SYSLOG"})),
        Rule(("bpf",), caps=frozenset({"CAP_BPF"})),
        Rule(("perf_event_open",), caps=frozenset({"CAP_PERFMON"})),
    ),
)


# ---------------------------------------------------------------- pure evaluation


def native_arch() -> str:
    """Docker's name for this machine's architecture (amd64, arm64 ...)."""
    machine = platform.machine().lower()
    return _DOCKER_ARCH.get(machine, machine)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``release`` (default: the running kernel), e.g. "6.1.0-18-amd64" -> (6, 1)."""
    text = release if release is not None else os.uname().release
    parts = (text.split("-")[0].split(".") + ["0", "0"])[:2]
    digits = ["".join(c for c in p if c.isdigit()) or "0" for p in parts]
    return int(digits[0]), int(digits[1])


def build_rules(profile: Profile, caps: Iterable[str], arch: str | None = None,
                kernel: tuple[int, int] | None = None) -> list[tuple[str, int, tuple[ArgCmp, ...]]]:
    """The (syscall name, action, conditions) triples ``profile`` gives a container with ``caps``.

    ``caps`` are full names (``CAP_SYS_ADMIN``). Pure: conditions are
    evaluated as Docker does (every listed cap for ``caps``, any for ``not_caps``).
    """
    have = frozenset(caps)
    arch = arch or native_arch()
    kernel = kernel or kernel_version()
    out: list[tuple[str, int, tuple[ArgCmp, ...]]] = []
    for rule in profile.rules:
        if rule.caps and not rule.caps <= have:
            continue
        if rule.not_caps & have:
            continue
        if rule.arches and arch not in rule.arches:
            continue
        if arch in rule.not_arches:
            continue
        if rule.min_kernel is not None and kernel < rule.min_kernel:
            continue
        out.extend((name, rule.action, rule.args) for name in rule.names)
    return out


# ---------------------------------------------------------------- the kernel side


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


class _SockFprog(ctypes.Structure):
    """struct sock_fprog: a classic BPF program (8-byte instructions) for PR_SET_SECCOMP."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_INSTRUCTION = 8

#: Compiled filters by (profile, capability set). Building one takes libseccomp
#: some 18 ms; the fork server compiles Docker's default once, before it forks,
#: so every shim and container child inherits it ready to install.
_COMPILED: dict[tuple[int, tuple[str, ...]], bytes] = {}


def compiled(profile: Profile, caps: Iterable[str]) -> bytes:
    """``profile`` for a container with ``caps`` as a BPF program (cached per process)."""
    key = (id(profile), tuple(sorted(caps)))
    bpf = _COMPILED.get(key)
    if bpf is None:
        bpf = _COMPILED[key] = _compile(profile, key[1])
    return bpf


_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]


def load(profile: Profile, caps: Iterable[str], *, set_no_new_privs: bool) -> None:
    """Install ``profile`` for a container with ``caps`` on the calling thread.

    ``set_no_new_privs=False`` leaves the no_new_privs bit alone; the kernel then
    requires CAP_SYS_ADMIN for the load, so the caller must still have it.
    Gotcha: a filter is inherited by children and survives exec; there is no
    way to remove it. Raises ``OSError`` naming the failing step.
    """
    bpf = compiled(profile, caps)
    if set_no_new_privs:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // _BPF_INSTRUCTION, ctypes.cast(program, ctypes.c_void_p))
    if _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


def _compile(profile: Profile, caps: tuple[str, ...]) -> bytes:
    """Build the filter with libseccomp and export it as BPF (what seccomp_load would install)."""
    if _lib is None:
        raise SeccompUnavailable(errno.ENOSYS, "seccomp: cannot load libseccomp.so.2 (install libseccomp2)")
    ctx = _lib.seccomp_init(profile.default_action)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        for arch_name in _ARCHES.get(platform.machine().lower(), ()):
            token = _lib.seccomp_arch_resolve_name(arch_name.encode())
            if token and token != _lib.seccomp_arch_native():
                rc = _lib.seccomp_arch_add(ctx, token)
                if rc != -errno.EEXIST:
                    _check(rc, f"seccomp_arch_add({arch_name})")
        for name, action, args in build_rules(profile, caps):
            nr = _lib.seccomp_syscall_resolve_name(name.encode())
            if nr == _NR_SCMP_ERROR:
                continue  # unknown to this libseccomp (e.g. another architecture's call)
            cmp = (_ArgCmp * max(1, len(args)))(*[_ArgCmp(a.index, a.op, a.value, a.value_two) for a in args])
            rc = _lib.seccomp_rule_add_array(ctx, action, nr, len(args), cmp)
            # EEXIST: the same call listed twice (syslog under two capabilities).
            # EDOM/EINVAL for a pseudo-syscall no architecture of the filter has.
            if rc not in (0, -errno.EEXIST, -errno.EDOM):
                _check(rc, f"seccomp_rule_add({name})")
        # An anonymous memory file: this may run after pivot_root, in a read-only root.
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        with os.fdopen(fd, "w+b") as out:
            _check(_lib.seccomp_export_bpf(ctx, out.fileno()), "seccomp_export_bpf")
            out.seek(0)
            bpf = out.read()
    finally:
        _lib.seccomp_release(ctx)
    if not bpf or len(bpf) % _BPF_INSTRUCTION:
        raise OSError(errno.EINVAL, f"seccomp_export_bpf gave {len(bpf)} bytes, not whole instructions")
    return bpf
