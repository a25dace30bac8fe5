"""The node's container runtime: namespaces, cgroups, rootfs and a per-container shim.

Layers, lowest first (each only imports the ones above it in this list):

* ``syscalls`` — raw ctypes calls (unshare, mount, umount2, pivot_root, sethostname);
* ``cgroups``  — the ``CgroupDriver`` interface with its v1 and v2 drivers;
* ``rootfs``   — builds an ``image: host`` root in a new mount namespace;
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

__all__ = [
    "CgroupDriver",
    "ContainerConfig",
    "ContainerState",
    "ContainerStatus",
    "Limits",
    "Runtime",
    "V1Driver",
    "V2Driver",
    "detect_driver",
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
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'agent.runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
