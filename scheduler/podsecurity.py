"""Pod Security Standards: what a namespace's level lets its pods do (pod security admission).

Kubernetes defines three levels (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
and its pod-security-admission enforces the one a Namespace names with the label
``pod-security.kubernetes.io/enforce``. orch does the same, with the latest version of
the standard's checks, here as pure functions over a validated pod spec:

* ``privileged`` — no checks at all;
* ``baseline`` — no known privilege escalation: no ``privileged`` containers, none of
  the host's namespaces (``hostNetwork``, ``hostPID``, ``hostIPC``), no ``hostPath``
  volumes, no ``hostPort``, no capabilities added beyond the baseline set (which
  leaves out NET_RAW, though Docker's default set has it), no seccomp profile
  ``Unconfined``, no AppArmor annotation other than ``runtime/default``,
  ``localhost/*`` or empty;
* ``restricted`` — baseline, and: ``allowPrivilegeEscalation: false`` on every
  container, ``runAsNonRoot: true`` (pod or every container) and no ``runAsUser: 0``
  (both waived for a pod with ``hostUsers: false``), ``seccompProfile`` RuntimeDefault
  (or Localhost, which orch has not) on the pod or every container, capabilities
  ``drop: [ALL]`` with nothing added but NET_BIND_SERVICE, and only the volume types
  the standard lists (of orch's two, emptyDir; hostPath is out).

Where a restricted check tightens a baseline one (capabilities, seccomp, volumes) it
takes its place, as in Kubernetes, so each problem is reported once.

A namespace with no Namespace object, or whose object has no enforce label, is at
``baseline`` — the default kube-apiserver's admission configuration would need to be
told; orch starts where the standard recommends.

The checks the standard has for fields orch refuses anyway (``seLinuxOptions``,
``procMount``, ``sysctls``, ``windowsOptions.hostProcess``, ``appArmorProfile``, probe
and lifecycle ``host``) have nothing to look at and are left out. Capability names are
compared as orch reads them: ``CAP_CHOWN`` is ``CHOWN`` (Kubernetes compares the
strings, and would forbid the former at baseline).

Each problem is a ``Violation`` naming the field path (``spec.containers[0].securityContext
.privileged``); ``errors`` turns them into FieldErrors that say which level of which
namespace forbids them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from apimachinery.errors import FieldError
from apimachinery.meta import DEFAULT_POD_SECURITY_LEVEL, POD_SECURITY_ENFORCE_LABEL, POD_SECURITY_LEVELS, Obj

__all__ = [
    "BASELINE_CAPABILITIES",
    "Violation",
    "check_pod",
    "errors",
    "level_of",
    "violations",
]

#: Capabilities a baseline container may add (the standard's list; Docker's default set without NET_RAW).
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
#: The one capability a restricted container may add.
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
#: Volume sources the restricted level allows; of orch's two, only emptyDir is among them.
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image",
                                "persistentVolumeClaim", "projected", "secret"})
#: seccompProfile types that are not "Unconfined".
CONFINED_SECCOMP = ("RuntimeDefault", "Localhost")
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")

_RANK = {level: i for i, level in enumerate(POD_SECURITY_LEVELS)}


@dataclass(frozen=True, slots=True)
class Violation:
    """One field a level does not allow: its path, and either the value it must not have
    (``shown``, may be empty when the field's presence says it all) or what it must be."""

    path: str
    shown: str = ""
    requirement: str = ""

    def message(self, level: str, namespace: str) -> str:
        where = f'pod security level "{level}" of namespace "{namespace}"'
        if self.requirement:
            return f"{self.requirement}, as {where} requires"
        return f"forbidden by {where}" + (f" (got {self.shown})" if self.shown else "")


def level_of(namespace: Obj | None) -> str:
    """The level a namespace enforces: its Namespace's enforce label (validated when the
    Namespace was applied), else the default."""
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = labels.get(POD_SECURITY_ENFORCE_LABEL, DEFAULT_POD_SECURITY_LEVEL)
    return level if level in _RANK else DEFAULT_POD_SECURITY_LEVEL


def _at_least(level: str, floor: str) -> bool:
    return _RANK[level] >= _RANK[floor]


def _name(capability: str) -> str:
    return capability.removeprefix("CAP_")


def _containers(spec: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """(path, container, its securityContext) for every container of the spec."""
    for i, c in enumerate(spec.get("containers") or []):
        yield f"{path}.containers[{i}]", c, c.get("securityContext") or {}


# --- baseline ---------------------------------------------------------------------------------


def _host_namespaces(spec: Mapping[str, Any], path: str) -> Iterator[Violation]:
    for name in HOST_NAMESPACES:
        if spec.get(name) is True:
            yield Violation(f"{path}.{name}")


def _privileged(spec: Mapping[str, Any], path: str) -> Iterator[Violation]:
    for at, _, sc in _containers(spec, path):
        if sc.get("privileged") is True:
            yield Violation(f"{at}.securityContext.privileged")


def _added_capabilities(spec: Mapping[str, Any], path: str, allowed: frozenset[str]) -> Iterator[Violation]:
    for at, _, sc in _containers(spec, path):
        for j, cap in enumerate((sc.get("capabilities") or {}).get("add") or []):
            if _name(cap) not in allowed:
                yield Violation(f"{at}.securityContext.capabilities.add[{j}]", f'"{cap}"')


def _host_ports(spec: Mapping[str, Any], path: str) -> Iterator[Violation]:
    for at, c, _ in _containers(spec, path):
        for j, port in enumerate(c.get("ports") or []):
            if port.get("hostPort"):
                yield Violation(f"{at}.ports[{j}].hostPort", str(port["hostPort"]))


def _volumes(spec: Mapping[str, Any], path: str, allowed: frozenset[str] | None) -> Iterator[Violation]:
    """hostPath volumes (baseline: ``allowed`` None), or every source not in ``allowed`` (restricted)."""
    for i, volume in enumerate(spec.get("volumes") or []):
        for source in volume:
            if source == "name":
                continue
            if (source == "hostPath") if allowed is None else (source not in allowed):
                yield Violation(f"{path}.volumes[{i}].{source}")


def _seccomp_not_unconfined(spec: Mapping[str, Any], path: str) -> Iterator[Violation]:
    profiles = [(f"{path}.securityContext", spec.get("securityContext") or {})]
    profiles += [(f"{at}.securityContext", sc) for at, _, sc in _containers(spec, path)]
    for at, sc in profiles:
        kind = (sc.get("seccompProfile") or {}).get("type")
        if kind is not None and kind not in CONFINED_SECCOMP:
            yield Violation(f"{at}.seccompProfile.type", f'"{kind}"')


def _apparmor_annotations(metadata: Mapping[str, Any], path: str) -> Iterator[Violation]:
    for key, value in sorted((metadata.get("annotations") or {}).items()):
        if key.startswith(APPARMOR_ANNOTATION_PREFIX) and value and value != "runtime/default" \
                and not value.startswith("localhost/"):
            yield Violation(f"{path}.annotations[{key}]", f'"{value}"')


# --- restricted -------------------------------------------------------------------------------


def _no_privilege_escalation(spec: Mapping[str, Any], path: str) -> Iterator[Violation]:
    for at, _, sc in _containers(spec, path):
        if sc.get("allowPrivilegeEscalation") is not False:
            yield Violation(f"{at}.securityContext.allowPrivilegeEscalation", requirement="must be false")


def _pod_or_every_container(spec: Mapping[str, Any], path: str, field: str, good: Callable[[Any], bool],
                            requirement: str, shown_field: str = "") -> Iterator[Violation]:
    """A setting the pod may make for all its containers, or each container for itself: a bad
    value anywhere is a violation where it is set; a container that sets nothing is one
    unless the pod sets a good value. Reported at ``shown_field`` (default ``field``)."""
    shown_field = shown_field or field
    pod_value = (spec.get("securityContext") or {}).get(field)
    if pod_value is not None and not good(pod_value):
        yield Violation(f"{path}.securityContext.{shown_field}", requirement=requirement)
    pod_good = pod_value is not None and good(pod_value)
    for at, _, sc in _containers(spec, path):
        value = sc.get(field)
        if value is not None and not good(value):
            yield Violation(f"{at}.securityContext.{shown_field}", requirement=requirement)
        elif value is None and not pod_good:
            yield Violation(f"{at}.securityContext.{shown_field}",
                            requirement=f"{requirement} (here or in {path}.securityContext)")


def _run_as_non_root(spec: Mapping[str, Any], path: str) -> Iterator[Violation]:
    if spec.get("hostUsers") is False:
        return  # root in a user namespace of its own is nobody on the node
    yield from _pod_or_every_container(spec, path, "runAsNonRoot", lambda v: v is True, "must be true")


def _not_root_user(spec: Mapping[str, Any], path: str) -> Iterator[Violation]:
    if spec.get("hostUsers") is False:
        return
    if (spec.get("securityContext") or {}).get("runAsUser") == 0:
        yield Violation(f"{path}.securityContext.runAsUser", "0")
    for at, _, sc in _containers(spec, path):
        if sc.get("runAsUser") == 0:
            yield Violation(f"{at}.securityContext.runAsUser", "0")


def _seccomp_confined(spec: Mapping[str, Any], path: str) -> Iterator[Violation]:
    yield from _pod_or_every_container(
        spec, path, "seccompProfile", lambda v: isinstance(v, Mapping) and v.get("type") in CONFINED_SECCOMP,
        'must be "RuntimeDefault" or "Localhost"', "seccompProfile.type")


def _capabilities_dropped(spec: Mapping[str, Any], path: str) -> Iterator[Violation]:
    for at, _, sc in _containers(spec, path):
        if "ALL" not in {_name(c) for c in (sc.get("capabilities") or {}).get("drop") or []}:
            yield Violation(f"{at}.securityContext.capabilities.drop", requirement='must include "ALL"')
    yield from _added_capabilities(spec, path, RESTRICTED_CAPABILITIES)


# --- the entry points -------------------------------------------------------------------------


def check_pod(level: str, spec: Mapping[str, Any], metadata: Mapping[str, Any] | None = None, *,
              spec_path: str = "spec", metadata_path: str = "metadata") -> list[Violation]:
    """Every way a pod (its validated ``spec`` and ``metadata``) breaks ``level``, check by check."""
    if level not in _RANK:
        raise ValueError(f"unknown pod security level {level!r}")
    if not _at_least(level, "baseline"):
        return []
    restricted = _at_least(level, "restricted")
    found = [
        *_host_namespaces(spec, spec_path),
        *_privileged(spec, spec_path),
        *(_capabilities_dropped(spec, spec_path) if restricted
          else _added_capabilities(spec, spec_path, BASELINE_CAPABILITIES)),
        *_host_ports(spec, spec_path),
        *_volumes(spec, spec_path, RESTRICTED_VOLUMES if restricted else None),
        *(_seccomp_confined(spec, spec_path) if restricted else _seccomp_not_unconfined(spec, spec_path)),
        *_apparmor_annotations(metadata or {}, metadata_path),
    ]
    if restricted:
        found += [*_no_privilege_escalation(spec, spec_path), *_run_as_non_root(spec, spec_path),
                  *_not_root_user(spec, spec_path)]
    return found


def violations(obj: Obj, level: str) -> list[Violation]:
    """A Pod's violations of ``level``, or a Deployment's pod template's; none for other kinds."""
    if obj.get("kind") == "Pod":
        return check_pod(level, obj["spec"], obj.get("metadata"))
    if obj.get("kind") == "Deployment":
        template = obj["spec"]["template"]
        return check_pod(level, template["spec"], template.get("metadata"), spec_path="spec.template.spec",
                         metadata_path="spec.template.metadata")
    return []


def errors(obj: Obj, level: str, namespace: str) -> list[FieldError]:
    """``violations`` as FieldErrors whose messages name the level and the namespace."""
    return [FieldError(v.path, v.message(level, namespace)) for v in violations(obj, level)]
