"""A container process's privileges: capabilities, user and groups, no_new_privs, seccomp.

``restrict_current_process(config)`` is the last step before ``exec``: the
shim's child calls it after building the root filesystem, and ``exec`` into a
running container calls it after joining the container's namespaces and root.
It only changes the calling process (and what it will exec), so it works in
either place; call it in a single-threaded process (a forked child): seccomp
and capabilities are per thread.

What it applies, as Docker and the Kubernetes CRI runtimes do:

* the capability **bounding set**: Docker's default 14 capabilities, plus
  ``capabilities_add``, minus ``capabilities_drop`` (``ALL`` in either list,
  as Kubernetes: add ALL = every capability, drop ALL = none, then the named
  ones); a ``privileged`` container keeps every capability it was given;
* the **user and groups**: ``setgroups([gid])``, ``setresgid``, ``setresuid``
  to ``run_as_group``/``run_as_user`` (default 0). Capabilities are kept across
  the switch and then set to the bounding set: effective = permitted =
  bounding, inheritable and ambient empty (empty inheritable as Docker since
  CVE-2022-24769). A non-root user therefore execs with an empty effective
  and permitted set, as under Docker;
* **no_new_privs** unless ``allow_privilege_escalation`` is True or the
  container is privileged. Unset means "no escalation" here — stricter than
  Kubernetes, whose unset means allowed — except with CAP_SYS_ADMIN, which
  Kubernetes treats as allowing escalation anyway;
* a **seccomp** filter equal to Docker's default profile (``seccomp.py``)
  unless privileged or ``seccomp_unconfined``. Ordered like runc: with
  no_new_privs the filter is loaded last, right before exec, so nothing in
  between needs allowing; without it the kernel wants CAP_SYS_ADMIN for the
  load, so it goes first, while the process still has it.

Gotcha: every import this module needs happens at import time (libseccomp
included); import it before entering a container's root, where the host's
Python and libraries may be out of sight.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.runtime import seccomp
from agent.runtime import syscalls as sc

if TYPE_CHECKING:
    from agent.runtime.shim import ContainerConfig

__all__ = [
    "CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "SecurityPlan",
    "capability_mask",
    "capability_name",
    "container_capabilities",
    "restrict_current_process",
    "security_plan",
]

#: Capability names by number (<linux/capability.h>), 0 .. CAP_LAST_CAP of Linux 5.9+.
CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",  # 0-4
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",  # 5-9
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",  # 10-14
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",  # 15-19
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",  # 20-24
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",  # 25-29
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",  # 30-34
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",  # 35-39
    "CAP_CHECKPOINT_RESTORE",  # 40
)
_NUMBER = {name: i for i, name in enumerate(CAPABILITIES)}

#: Docker's (and containerd's) default set; as a mask 0x00000000a80425fb.
DEFAULT_CAPABILITIES: frozenset[str] = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
})


# ---------------------------------------------------------------- pure parts


def capability_name(text: str) -> str:
    """``net_admin``, ``NET_ADMIN`` or ``CAP_NET_ADMIN`` -> ``CAP_NET_ADMIN``; ``all`` -> ``ALL``.

    Raises ``ValueError`` for an unknown name.
    """
    upper = text.strip().upper()
    if upper in ("ALL", "CAP_ALL"):
        return "ALL"
    name = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if name not in _NUMBER:
        raise ValueError(f"unknown capability {text!r}")
    return name


def container_capabilities(add: Iterable[str], drop: Iterable[str], *, privileged: bool = False) -> frozenset[str]:
    """The capability set of a container, in containerd's order of evaluation.

    Start from Docker's default set; ``ALL`` in ``add`` makes it every
    capability, then ``ALL`` in ``drop`` makes it empty; then the named adds,
    then the named drops. ``add: [ALL], drop: [CHOWN]`` is everything but
    CAP_CHOWN; ``drop: [ALL], add: [NET_BIND_SERVICE]`` is only that one.
    """
    if privileged:
        return frozenset(CAPABILITIES)
    adds = [capability_name(c) for c in add]
    drops = [capability_name(c) for c in drop]
    caps = set(DEFAULT_CAPABILITIES)
    if "ALL" in adds:
        caps = set(CAPABILITIES)
    if "ALL" in drops:
        caps = set()
    caps |= {c for c in adds if c != "ALL"}
    caps -= {c for c in drops if c != "ALL"}
    return frozenset(caps)


def capability_mask(names: Iterable[str]) -> int:
    """Bit n set for capability n, as ``CapEff`` etc. in /proc/<pid>/status."""
    mask = 0
    for name in names:
        mask |= 1 << _NUMBER[capability_name(name)]
    return mask


@dataclass(frozen=True, slots=True)
class SecurityPlan:
    """What ``restrict_current_process`` will do for a config; pure data, for tests and logs."""

    capabilities: frozenset[str] | None  # None: keep every capability the process has (privileged)
    no_new_privs: bool
    seccomp: bool
    uid: int
    gid: int


def security_plan(config: ContainerConfig) -> SecurityPlan:
    caps = None if config.privileged else container_capabilities(config.capabilities_add,
                                                                 config.capabilities_drop)
    if config.privileged or config.allow_privilege_escalation is True:
        nnp = False
    elif config.allow_privilege_escalation is False:
        nnp = True
    else:
        nnp = caps is not None and "CAP_SYS_ADMIN" not in caps
    return SecurityPlan(
        capabilities=caps,
        no_new_privs=nnp,
        seccomp=not config.privileged and not config.seccomp_unconfined,
        uid=config.run_as_user if config.run_as_user is not None else 0,
        gid=config.run_as_group if config.run_as_group is not None else 0,
    )


# ---------------------------------------------------------------- the kernel side


@functools.cache
def last_capability() -> int:
    """The highest capability number the running kernel knows (``cap_last_cap``), without reading /proc.

    Cached: a kernel constant, and the fork server's children inherit the answer.
    """
    last = -1
    while last < 63:
        try:
            sc.prctl(sc.PR_CAPBSET_READ, last + 1)
        except OSError:
            break
        last += 1
    return last


def restrict_current_process(config: ContainerConfig) -> None:
    """Drop the calling process to ``config``'s privileges; the next step is exec.

    Raises ``OSError`` (with the errno) naming the failing step. After an
    error the process is in an undefined, partly restricted state: exit it.
    """
    plan = security_plan(config)
    last_cap = last_capability()
    known = (1 << (last_cap + 1)) - 1
    caps = plan.capabilities
    cap_names = sorted(caps) if caps is not None else [c for c in CAPABILITIES if _NUMBER[c] <= last_cap]
    # Capabilities this kernel doesn't know are silently left out, as runc does.
    keep = capability_mask(cap_names) & known

    if plan.seccomp and not plan.no_new_privs:
        seccomp.load(seccomp.DEFAULT_PROFILE, cap_names, set_no_new_privs=False)
    if caps is not None:
        for n in range(last_cap + 1):
            if not keep & (1 << n):
                # Needs CAP_SETPCAP, still effective here; dropping one already gone is no error.
                sc.prctl(sc.PR_CAPBSET_DROP, n)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)

    # KEEPCAPS: a switch to a non-root uid would otherwise clear permitted too.
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    try:
        os.setgroups([plan.gid])
        os.setresgid(plan.gid, plan.gid, plan.gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
    except OSError as e:
        raise OSError(e.errno, f"switch to uid {plan.uid} gid {plan.gid}: {e.strerror}") from None
    sc.prctl(sc.PR_SET_KEEPCAPS, 0)
    _, permitted, _ = sc.capget()
    final = permitted & keep if caps is not None else permitted
    # Inheritable stays empty: with it, a file's inheritable bits could hand a
    # non-root exec capabilities (CVE-2022-24769).
    sc.capset(effective=final, permitted=final, inheritable=0)

    if plan.no_new_privs:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        if plan.seccomp:
            seccomp.load(seccomp.DEFAULT_PROFILE, cap_names, set_no_new_privs=True)
