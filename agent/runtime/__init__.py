"""The node's container runtime: namespaces, cgroups, rootfs and a per-container shim.

Layers, lowest first (each only imports the ones above it in this list):

* ``syscalls`` — raw ctypes calls (unshare, setns, mount, umount2, pivot_root,
  sethostname, prctl, capget/capset);
* ``seccomp``  — libseccomp through ctypes, and Docker's default profile as data;
* ``cgroups``  — the ``CgroupDriver`` interface with its v1 and v2 drivers;
* ``rootfs``   — builds an ``image: host`` root in a new mount namespace, with
  runc's masked and read-only /proc paths;
* ``security`` — ``restrict_current_process``: capabilities, user, no_new_privs,
  seccomp, the last step before exec (also for exec into a container);
* ``sandbox``  — pod sandboxes: the network, UTS, IPC (and user) namespaces a
  pod's containers share, held by nsfs bind mounts;
* ``shim``     — the detached per-container supervisor, and the on-disk contract;
* ``runtime``  — ``Runtime``, the API the agent calls.

The public names are re-exported lazily: ``python -m agent.runtime.shim`` imports
this package first, and the shim must not pay for (or fork with) gRPC, which
``runtime`` pulls in through ``apimachinery.errors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.runtime.cgroups import CgroupDriver, Limits, V1Driver, V2Driver, detect_driver
    from agent.runtime.runtime import ContainerConfig, ContainerState, ContainerStatus, Runtime
    from agent.runtime.sandbox import Sandbox, Sandboxes
    from agent.runtime.security import restrict_current_process

__all__ = [
    "CgroupDriver",
    "ContainerConfig",
    "ContainerState",
    "ContainerStatus",
    "Limits",
    "Runtime",
    "Sandbox",
    "Sandboxes",
    "V1Driver",
    "V2Driver",
    "detect_driver",
    "restrict_current_process",
]

_HOMES = {
    "CgroupDriver": "agent.runtime.cgroups",
    "Limits": "agent.runtime.cgroups",
    "V1Driver": "agent.runtime.cgroups",
    "V2Driver": "agent.runtime.cgroups",
    "detect_driver": "agent.runtime.cgroups",
    "ContainerConfig": "agent.runtime.runtime",
    "ContainerState": "agent.runtime.runtime",
    "ContainerStatus": "agent.runtime.runtime",
    "Runtime": "agent.runtime.runtime",
    "Sandbox": "agent.runtime.sandbox",
    "Sandboxes": "agent.runtime.sandbox",
    "restrict_current_process": "agent.runtime.security",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'agent.runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
