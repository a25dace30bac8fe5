"""Validation and defaulting of the objects users write: Pods, Deployments, Namespaces, PriorityClasses.

``validate(obj)`` checks one Kubernetes-shaped object as a whole and returns a new,
normalized dict with Kubernetes' defaults filled in; the input is never modified.
When anything is wrong it raises one ``ValidationError`` listing *every* problem,
each a ``FieldError`` whose path is written as Kubernetes writes it
(``spec.template.spec.containers[1].resources.limits.memory``). Which document the
object came from is the caller's to add.

The schema is closed: a field this module does not know is an error, with a
suggestion when it looks like a typo (``imagee`` → ``image``), because a silently
ignored field is a spec that does not do what its author thinks. A ``null`` value
counts as absent, as it does in Kubernetes. Booleans are not integers, and integral
floats are not integers either: both are type errors that name what was expected.

How it is built: every field has a *check*, a function ``(errors, value, path)`` that
records what is wrong and returns the normalized value (or ``_BAD``). Small
factories (``_string``, ``_integer``, ``_enum``, ``_list``, ``_struct``) make the
checks for simple fields; rules that span fields (a request above its limit, a
selector that does not select its template) live in the function of the object that
holds them. Checks never raise: a bad value is recorded and walking goes on, so one
pass finds every problem. The result is assembled fresh as the walk goes, which is
what keeps the input untouched.

Status is accepted and dropped (Kubernetes ignores status on writes to the main
resource); server-owned metadata (``uid``, ``resourceVersion``, …) is checked and
kept as given, for the registry to use or replace.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from apimachinery.errors import FieldError, ValidationError
from apimachinery.labels import (
    describe_value,
    did_you_mean,
    label_selector_errors,
    selector_from_label_selector,
    validate_dns1123_label,
    validate_dns1123_subdomain,
    validate_label_key,
    validate_label_value,
)
from apimachinery.meta import POD_SECURITY_ENFORCE_LABEL, POD_SECURITY_LABEL_PREFIX, POD_SECURITY_LEVELS
from apimachinery.quantity import QuantityError, parse_cpu, parse_memory

__all__ = [
    "DEFAULT_SCHEDULER_NAME",
    "MAX_DEPTH",
    "MAX_GRACE_PERIOD_SECONDS",
    "MAX_OBJECT_BYTES",
    "RESOURCE_NAMES",
    "SUPPORTED_KINDS",
    "container_limits",
    "container_requests",
    "DocumentError",
    "default_image_pull_policy",
    "document_problem",
    "loads_json",
    "pod_requests",
    "validate",
    "validate_node_spec",
]

#: kind → the apiVersion it is served at.
SUPPORTED_KINDS: Mapping[str, str] = MappingProxyType({"Deployment": "apps/v1", "Namespace": "v1", "Pod": "v1",
                                                      "PriorityClass": "scheduling.k8s.io/v1"})

#: The resources a container may request or be limited to, and how each is parsed.
RESOURCE_NAMES: Mapping[str, Callable[[str | int | float], int]] = MappingProxyType(
    {"cpu": parse_cpu, "memory": parse_memory, "ephemeral-storage": parse_memory}
)

DEFAULT_SCHEDULER_NAME = "default-scheduler"

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# Kubernetes caps the total size of an object's annotations at 256 KiB.
_ANNOTATIONS_MAX_BYTES = 256 * 1024

# --- limits on any document, whatever its kind ---------------------------------------
#
# These bound what a hostile or broken document can cost before validation looks at
# its meaning: ``orchctl`` applies them to what it reads from YAML or JSON, the
# Cluster API to every JSON document it is sent (``document_problem``).

#: etcd's default ``--max-request-bytes`` (1.5 MiB): the most one etcd write, and so one
#: object, can be. kube-apiserver has the same outer bound for the same reason.
MAX_OBJECT_BYTES = 3 * 512 * 1024

#: Collections nested deeper than this are refused. The deepest path the schema has
#: (a Deployment's pod anti-affinity term's matchExpressions values) is 13 levels, real
#: manifests measure 5 to 8; 64 leaves room and keeps every recursive walk of a document
#: (json, copy.deepcopy, the merge patch) far from Python's recursion limit.
MAX_DEPTH = 64

#: The longest a termination grace period may be, in seconds: about 68 years. Kubernetes
#: allows any int64, but a deletion deadline past the year 9999 cannot be written down
#: (Python's datetime, and RFC 3339, stop there).
MAX_GRACE_PERIOD_SECONDS = INT32_MAX


class DocumentError(ValueError):
    """A JSON text that ``loads_json`` refuses for more than its syntax; the message says why."""


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"duplicate key {json.dumps(key[:80], ensure_ascii=False)} in one JSON object")
        out[key] = value
    return out


def _json_int(text: str) -> int:
    # Checked before int(): Python refuses strings of over 4300 digits with a bare ValueError.
    if len(text.lstrip("-")) > 19 or not INT64_MIN <= int(text) <= INT64_MAX:
        return _out_of_range(text)
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _out_of_range(text)
    return value


def _out_of_range(text: str) -> Any:
    shown = text if len(text) <= 24 else text[:21] + "..."
    raise DocumentError(f"number {shown} out of range: integers must fit in 64 bits, and numbers be finite")


def _json_constant(name: str) -> Any:
    raise DocumentError(f"{name} is not a JSON number; numbers must be finite")


def loads_json(text: str) -> Any:
    """``json.loads(text)``, refusing what no stored object may hold, and what Python's json
    would take without a word: NaN and Infinity, integers outside int64 (or longer than
    Python converts), duplicate keys (Python keeps the last; kubectl's strict field
    validation refuses them, since two ``image:`` lines do not say which was meant), and
    nesting deep enough to exhaust the parser's recursion. Syntax errors raise
    ``json.JSONDecodeError``, the rest ``DocumentError``; walk the result with
    ``document_problem`` for the rest of the limits.
    """
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicates, parse_int=_json_int,
                          parse_float=_json_float, parse_constant=_json_constant)
    except RecursionError:
        raise DocumentError(f"nested deeper than {MAX_DEPTH} levels") from None


def _text_problem(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Only a JSON escape like "\ud800" makes one: it is half of a UTF-16 pair, no character.
        return "contains a lone UTF-16 surrogate, which is not a Unicode character"
    return None


def document_problem(value: Any, *, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """The first thing that makes ``value`` no JSON document orch can store, as
    ``(field path, why)``; None when it is one.

    Refused: nesting deeper than ``max_depth``; mapping keys that are not strings (YAML
    allows ``1:`` or ``on:``); integers outside int64 and non-finite numbers (NaN,
    Infinity: no JSON, and nothing Go's decoder would read back); strings with lone
    surrogates; any other type (a YAML ``!!set``, bytes, dates). The walk is iterative,
    so a deep document cannot exhaust the stack while being checked.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                return path, f"nested deeper than {max_depth} levels"
            for key, child in item.items():
                if not isinstance(key, str):
                    return path, f"mapping keys must be strings, got {describe_value(key)}"
                problem = _text_problem(key)
                if problem:
                    return path, f"a key {problem}"
                stack.append((child, _field(path, key), depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                return path, f"nested deeper than {max_depth} levels"
            stack.extend((child, _index(path, i), depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return path, problem
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                return path, "integer out of range: numbers must fit in 64 bits"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path, f"{item!r} is not a number JSON can hold; numbers must be finite"
        else:
            return path, f"a value of type {type(item).__name__} cannot be part of an object"
    return None

# Fields Kubernetes has and orch does not. Reported as unsupported rather than as a
# typo, so that someone applying a real Kubernetes manifest is not told to check
# their spelling.
_KUBERNETES_ONLY = frozenset({
    "appArmorProfile", "automountServiceAccountToken", "claims", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "envFrom", "ephemeralContainers", "finalizers", "fsGroupChangePolicy",
    "hostAliases", "imagePullSecrets", "initContainers",
    "lifecycle", "managedFields", "matchLabelKeys", "mismatchLabelKeys", "nodeAffinityPolicy",
    "nodeTaintsPolicy", "os", "overhead",
    "procMount", "readinessGates", "resizePolicy", "resourceClaims", "runtimeClassName",
    "schedulingGates", "seLinuxOptions", "selfLink", "serviceAccount",
    "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace", "stdinOnce", "subdomain",
    "supplementalGroups", "sysctls", "terminationMessagePath", "terminationMessagePolicy",
    "valueFrom", "volumeDevices",
    "windowsOptions",
    # in volumeMounts: orch mounts whole volumes, without propagation
    "mountPropagation", "recursiveReadOnly", "subPath", "subPathExpr",
})

# Kubernetes' volume sources other than the two orch has (hostPath, emptyDir).
_KUBERNETES_ONLY_VOLUMES = frozenset({
    "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap", "csi", "downwardAPI",
    "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk", "gitRepo", "glusterfs", "image", "iscsi",
    "nfs", "persistentVolumeClaim", "photonPersistentDisk", "portworxVolume", "projected", "quobyte", "rbd",
    "scaleIO", "secret", "storageos", "vsphereVolume",
})

# Linux capability names without the CAP_ prefix (capability.h, 0 to 40), and ALL.
_CAPABILITIES = (
    "ALL", "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE",
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL",
    "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE",
    "NET_BROADCAST", "NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG",
    "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE",
    "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "WAKE_ALARM",
)


# --- the walking machinery ------------------------------------------------------


class _Errors:
    """The FieldErrors found so far in one ``validate`` call."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(FieldError(path, message))


class _Bad:
    """The value a check returns after recording an error; never reaches a result."""

    def __repr__(self) -> str:
        return "<invalid>"


_BAD: Any = _Bad()

Check = Callable[[_Errors, Any, str], Any]


def _field(path: str, name: object) -> str:
    return f"{path}.{name}" if path else str(name)


def _index(path: str, i: int | str) -> str:
    return f"{path}[{i}]"


def _type_error(errors: _Errors, path: str, expected: str, value: object) -> Any:
    errors.add(path, f"must be {expected}, got {describe_value(value)}")
    return _BAD


def _unknown_field_message(name: object, known: Mapping[str, Any] | tuple[str, ...]) -> str:
    if name in _KUBERNETES_ONLY:
        # Exactly a Kubernetes field, not a typo of one of ours (subPath is no mountPath).
        return f"unknown field; orch does not support Kubernetes' {name}"
    return "unknown field" + did_you_mean(name, tuple(known))


def _fields(errors: _Errors, value: Any, path: str, fields: Mapping[str, Check],
            required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Check a mapping against its fields; the normalized dict of the valid ones, or None.

    Unknown fields are errors; null values are skipped as if absent; a missing required
    field is an error on the field's own path.
    """
    if not isinstance(value, dict):
        _type_error(errors, path, "a mapping", value)
        return None
    out: dict[str, Any] = {}
    for name, item in value.items():
        check = fields.get(name) if isinstance(name, str) else None
        if check is None:
            errors.add(_field(path, name), _unknown_field_message(name, fields))
            continue
        if item is None:
            continue
        result = check(errors, item, _field(path, name))
        if result is not _BAD:
            out[name] = result
    for name in required:
        if value.get(name) is None:
            errors.add(_field(path, name), "is required")
    return out


def _struct(fields: Mapping[str, Check], required: tuple[str, ...] = ()) -> Check:
    def check(errors: _Errors, value: Any, path: str) -> Any:
        out = _fields(errors, value, path, fields, required)
        return _BAD if out is None else out
    return check


def _string(*, nonempty: bool = False, rule: Callable[[str], str | None] | None = None) -> Check:
    def check(errors: _Errors, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            return _type_error(errors, path, "a string", value)
        if nonempty and not value:
            errors.add(path, "must not be empty")
            return _BAD
        problem = rule(value) if rule is not None else None
        if problem:
            errors.add(path, problem)
            return _BAD
        return value
    return check


def _is_int(value: object) -> bool:
    # bool is a subclass of int; `replicas: true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(minimum: int | None = None, maximum: int = INT64_MAX) -> Check:
    low = INT64_MIN if minimum is None else minimum

    def check(errors: _Errors, value: Any, path: str) -> Any:
        if not _is_int(value):
            return _type_error(errors, path, "an integer", value)
        if low <= value <= maximum:
            return value
        shown = describe_value(value).removeprefix("integer ")
        if minimum is not None and maximum < INT64_MAX:
            errors.add(path, f"must be between {minimum} and {maximum}, got {shown}")
        elif value < low:
            errors.add(path, f"must be greater than or equal to {low}, got {shown}")
        else:
            errors.add(path, f"must be less than or equal to {maximum}, got {shown}")
        return _BAD
    return check


def _boolean(errors: _Errors, value: Any, path: str) -> Any:
    if not isinstance(value, bool):
        return _type_error(errors, path, "a boolean", value)
    return value


def _enum(*allowed: str) -> Check:
    shown = ", ".join(f'"{a}"' for a in allowed)

    def check(errors: _Errors, value: Any, path: str) -> Any:
        if isinstance(value, str) and value in allowed:
            return value
        errors.add(path, f"must be one of {shown}, got {describe_value(value)}" + did_you_mean(value, allowed))
        return _BAD
    return check


def _list(item: Check, *, min_items: int = 0, too_few: str = "") -> Check:
    """A list of ``item``; the result keeps each index (``_BAD`` where an item failed)
    so that cross-item rules can still name ``containers[3]`` correctly."""

    def check(errors: _Errors, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            return _type_error(errors, path, "a list", value)
        if len(value) < min_items:
            errors.add(path, too_few or f"must have at least {min_items} item{'s' if min_items > 1 else ''}")
            return _BAD
        return [item(errors, v, _index(path, i)) for i, v in enumerate(value)]
    return check


def _labels(errors: _Errors, value: Any, path: str) -> Any:
    """A label map: keys and values by Kubernetes' rules. Key problems are reported on the
    map (``metadata.labels``), value problems on the key (``metadata.labels[app]``), as
    Kubernetes does."""
    if not isinstance(value, dict):
        return _type_error(errors, path, "a mapping of label keys to values", value)
    out: dict[str, str] = {}
    for k, v in value.items():
        problem = validate_label_key(k)
        if problem:
            errors.add(path, problem)
            continue
        problem = validate_label_value(v)
        if problem:
            errors.add(_index(path, k), problem)
            continue
        out[k] = v
    return out


def _annotations(errors: _Errors, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        return _type_error(errors, path, "a mapping of strings to strings", value)
    out: dict[str, str] = {}
    size = 0
    for k, v in value.items():
        problem = validate_label_key(k)
        if problem:
            errors.add(path, problem.replace("label key", "annotation key"))
            continue
        if not isinstance(v, str):
            _type_error(errors, _index(path, k), "a string", v)
            continue
        size += len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
        out[k] = v
    if size > _ANNOTATIONS_MAX_BYTES:
        errors.add(path, f"annotations are too long: {size} bytes, the most is {_ANNOTATIONS_MAX_BYTES}")
        return _BAD
    return out


def _label_selector(errors: _Errors, value: Any, path: str) -> Any:
    problems = label_selector_errors(value)
    for rel, message in problems:
        errors.add(_field(path, rel) if rel else path, message)
    if problems:
        return _BAD
    out: dict[str, Any] = {}
    if value.get("matchLabels") is not None:
        out["matchLabels"] = dict(value["matchLabels"])
    if value.get("matchExpressions") is not None:
        out["matchExpressions"] = [
            {k: (list(v) if isinstance(v, list) else v) for k, v in e.items() if v is not None}
            for e in value["matchExpressions"]
        ]
    return out


# --- small rules ------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))", re.ASCII)
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_PERCENT = re.compile(r"[0-9]{1,10}%")


def _resource_version(text: str) -> str | None:
    # "" is what an unset resourceVersion looks like on the wire; anything else is a
    # precondition and must be a revision.
    if text and not _DIGITS.fullmatch(text):
        return f"must be a string of digits (a resourceVersion read from the server), got {describe_value(text)}"
    return None


def _rfc3339(text: str) -> str | None:
    m = _RFC3339.fullmatch(text)
    ok = m is not None
    if m is not None:
        try:
            year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
            datetime.datetime(year, month, day, hour, minute, second)
        except ValueError:
            ok = False
        if m[9] is not None and (int(m[9]) > 23 or int(m[10]) > 59):
            ok = False
    if not ok:
        return f"must be an RFC 3339 time like 2024-01-31T12:00:00Z, got {describe_value(text)}"
    return None


def _generate_name(text: str) -> str | None:
    # Kubernetes checks a prefix with its trailing dash masked, since a suffix follows.
    masked = text[:-1] + "a" if len(text) > 1 and text.endswith("-") else text
    return validate_dns1123_subdomain(masked)


def _env_name(text: str) -> str | None:
    if not _ENV_NAME.fullmatch(text):
        return (f"{describe_value(text).removeprefix('string ')} is not a valid environment variable name: "
                "use letters, digits, '_', '-' or '.', not starting with a digit")
    return None


def _absolute_path(text: str) -> str | None:
    return None if text.startswith("/") else f"must be an absolute path, got {describe_value(text)}"


def _ip(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return f"must be an IP address, got {describe_value(text)}"
    return None


def _port_name(text: str) -> str | None:
    """Kubernetes' IANA_SVC_NAME: ≤15 lowercase alphanumerics and '-', a letter somewhere, no '--'."""
    if (len(text) > 15 or not _IANA_SVC_NAME.fullmatch(text) or "--" in text
            or not any(c.isalpha() for c in text)):
        return (f"{describe_value(text).removeprefix('string ')} is not a valid port name: at most 15 lower case "
                "letters, digits and '-', with at least one letter, starting and ending alphanumeric, no '--'")
    return None


def _image(errors: _Errors, value: Any, path: str) -> Any:
    if not isinstance(value, str):
        return _type_error(errors, path, "a string", value)
    if not value:
        errors.add(path, "must not be empty")
        return _BAD
    if any(c.isspace() for c in value):
        errors.add(path, f"must not contain whitespace, got {describe_value(value)}")
        return _BAD
    return value


def _capability(text: str) -> str | None:
    name = text.removeprefix("CAP_")
    if name in _CAPABILITIES:
        return None
    return f"unknown capability {describe_value(text).removeprefix('string ')}" + did_you_mean(name, _CAPABILITIES)


def _port_number_or_name(errors: _Errors, value: Any, path: str) -> Any:
    if _is_int(value):
        if 1 <= value <= 65535:
            return value
        errors.add(path, f"must be between 1 and 65535, got {describe_value(value).removeprefix('integer ')}")
        return _BAD
    if isinstance(value, str):
        problem = _port_name(value)
        if problem:
            errors.add(path, problem)
            return _BAD
        return value
    return _type_error(errors, path, "a port number or a port name", value)


def _int_or_percent(errors: _Errors, value: Any, path: str) -> Any:
    if _is_int(value):
        if value < 0:
            errors.add(path, f"must be greater than or equal to 0, got {value}")
            return _BAD
        if value > INT32_MAX:
            errors.add(path, f"must be less than or equal to {INT32_MAX}, got {describe_value(value)}")
            return _BAD
        return value
    if isinstance(value, str) and _PERCENT.fullmatch(value):
        return value
    return _type_error(errors, path, 'an integer or a percentage like "25%"', value)


def _is_zero(value: int | str) -> bool:
    return value == 0 or (isinstance(value, str) and int(value[:-1]) == 0)


# --- metadata ---------------------------------------------------------------------


def _owner_references(errors: _Errors, value: Any, path: str) -> Any:
    refs = _list(_struct(_OWNER_REFERENCE_FIELDS, required=("apiVersion", "kind", "name", "uid")))(
        errors, value, path)
    if refs is _BAD:
        return _BAD
    controllers = sum(1 for r in refs if isinstance(r, dict) and r.get("controller") is True)
    if controllers > 1:
        errors.add(path, f"only one reference can have controller set to true, found {controllers}")
    return refs


_OWNER_REFERENCE_FIELDS: dict[str, Check] = {
    "apiVersion": _string(nonempty=True),
    "kind": _string(nonempty=True),
    "name": _string(nonempty=True),
    "uid": _string(nonempty=True),
    "controller": _boolean,
    "blockOwnerDeletion": _boolean,
}

_METADATA_FIELDS: dict[str, Check] = {
    "name": _string(rule=validate_dns1123_subdomain),
    "generateName": _string(rule=_generate_name),
    "namespace": _string(rule=validate_dns1123_label),
    "labels": _labels,
    "annotations": _annotations,
    # Server-owned: checked for shape and kept as given; the registry decides what to do.
    "uid": _string(),
    "resourceVersion": _string(rule=_resource_version),
    "generation": _integer(0),
    "creationTimestamp": _string(rule=_rfc3339),
    "deletionTimestamp": _string(rule=_rfc3339),
    "deletionGracePeriodSeconds": _integer(0, MAX_GRACE_PERIOD_SECONDS),
    "ownerReferences": _owner_references,
}


def _metadata(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, _METADATA_FIELDS, required=("name",))
    if out is None:
        return _BAD
    out.setdefault("namespace", "default")
    return out


def _ignored(errors: _Errors, value: Any, path: str) -> Any:
    """Accepted for compatibility, then dropped by the caller."""
    if not isinstance(value, str):
        return _type_error(errors, path, "a string", value)
    return value


_TEMPLATE_METADATA_FIELDS: dict[str, Check] = {
    "labels": _labels,
    "annotations": _annotations,
    # Kubernetes accepts and ignores these in a template: each pod gets its own name and
    # the Deployment's namespace. Kept out of the result so nobody copies them by mistake.
    "name": _ignored,
    "namespace": _ignored,
    "generateName": _ignored,
    # `kubectl create … -o yaml` writes `creationTimestamp: null` into every template.
    "creationTimestamp": _ignored,
}


def _template_metadata(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, _TEMPLATE_METADATA_FIELDS)
    if out is None:
        return _BAD
    for ignored in ("name", "namespace", "generateName", "creationTimestamp"):
        out.pop(ignored, None)
    return out


# --- containers ---------------------------------------------------------------------


def default_image_pull_policy(image: str) -> str:
    """Kubernetes' default: Always for ``:latest`` or an untagged image, else IfNotPresent.

    An image pinned by digest never changes, so it is IfNotPresent. The ``host`` image
    (the node's own /usr, /bin, /lib) is never pulled from anywhere: IfNotPresent.
    """
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    repository, _, tag = image.rpartition(":") if ":" in last else (image, "", "")
    if repository == "host":
        return "IfNotPresent"
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _resource_list(errors: _Errors, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        return _type_error(errors, path, "a mapping of resource names to quantities", value)
    out: dict[str, Any] = {}
    for name, quantity in value.items():
        parse = RESOURCE_NAMES.get(name) if isinstance(name, str) else None
        if parse is None:
            errors.add(_field(path, name),
                       f"unknown resource; supported: {', '.join(RESOURCE_NAMES)}"
                       # A high cutoff: "gpu" is not a typo of "cpu".
                       + did_you_mean(name, tuple(RESOURCE_NAMES), cutoff=0.75))
            continue
        if quantity is None:
            continue
        try:
            parse(quantity)
        except QuantityError as e:
            errors.add(_field(path, name), e.message)
            continue
        out[name] = quantity
    return out


def _shown_quantity(value: str | int | float) -> str:
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


def _resources(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {"requests": _resource_list, "limits": _resource_list})
    if out is None:
        return _BAD
    requests: dict[str, Any] = out.get("requests", {})
    limits: dict[str, Any] = out.get("limits", {})
    for name, request in requests.items():
        if name in limits and RESOURCE_NAMES[name](request) > RESOURCE_NAMES[name](limits[name]):
            errors.add(_field(_field(path, "requests"), name),
                       f"must be less than or equal to {name} limit {_shown_quantity(limits[name])}")
    if limits:
        # Kubernetes: a resource with a limit and no request is requested at its limit.
        out["requests"] = {**limits, **requests}
    return out


_PORT_FIELDS: dict[str, Check] = {
    "name": _string(rule=_port_name),
    "containerPort": _integer(1, 65535),
    "protocol": _enum("TCP", "UDP", "SCTP"),
    "hostPort": _integer(1, 65535),
    "hostIP": _string(rule=_ip),
}


def _port(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, _PORT_FIELDS, required=("containerPort",))
    if out is None:
        return _BAD
    out.setdefault("protocol", "TCP")
    return out


_PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket")

_PROBE_FIELDS: dict[str, Check] = {
    "exec": _struct({"command": _list(_string(), min_items=1, too_few="must have at least one word")},
                    required=("command",)),
    "httpGet": _struct({"path": _string(rule=_absolute_path), "port": _port_number_or_name,
                        "scheme": _enum("HTTP", "HTTPS")}, required=("port",)),
    "tcpSocket": _struct({"port": _port_number_or_name}, required=("port",)),
    "initialDelaySeconds": _integer(0, INT32_MAX),
    "timeoutSeconds": _integer(1, INT32_MAX),
    "periodSeconds": _integer(1, INT32_MAX),
    "successThreshold": _integer(1, INT32_MAX),
    "failureThreshold": _integer(1, INT32_MAX),
}

# Kubernetes' probe defaults (pkg/apis/core/v1/defaults.go).
_PROBE_DEFAULTS = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}


def _probe(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, _PROBE_FIELDS)
    if out is None:
        return _BAD
    given = [h for h in _PROBE_HANDLERS if value.get(h) is not None]
    if not given:
        errors.add(path, "must specify one handler: exec, httpGet or tcpSocket")
    elif len(given) > 1:
        errors.add(path, f"may not specify more than one handler, found {' and '.join(given)}")
    for name, default in _PROBE_DEFAULTS.items():
        out.setdefault(name, default)
    if isinstance(out.get("httpGet"), dict):
        out["httpGet"].setdefault("path", "/")
        out["httpGet"].setdefault("scheme", "HTTP")
    return out


_CAPABILITIES_FIELDS: dict[str, Check] = {
    "add": _list(_string(rule=_capability)),
    "drop": _list(_string(rule=_capability)),
}

#: ``seccompProfile.type`` values orch runs: RuntimeDefault is Docker's default profile,
#: which every container that is not privileged gets anyway (agent/runtime/seccomp.py).
#: Localhost (a profile file on the node) is Kubernetes' third type; orch has none.
SECCOMP_PROFILE_TYPES = ("RuntimeDefault", "Unconfined")


def _seccomp_profile(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {"type": _string(), "localhostProfile": _string()}, required=("type",))
    if out is None:
        return _BAD
    kind = out.get("type")
    if kind == "Localhost" or "localhostProfile" in out:
        errors.add(_field(path, "type" if kind == "Localhost" else "localhostProfile"),
                   "orch does not support Localhost seccomp profiles; use \"RuntimeDefault\" (Docker's default "
                   "profile) or \"Unconfined\"")
        return _BAD
    if kind is not None and kind not in SECCOMP_PROFILE_TYPES:
        errors.add(_field(path, "type"), f'must be one of "RuntimeDefault", "Unconfined", got {describe_value(kind)}'
                   + did_you_mean(kind, SECCOMP_PROFILE_TYPES))
        return _BAD
    return out


_CONTAINER_SECURITY_FIELDS: dict[str, Check] = {
    "runAsUser": _integer(0, INT32_MAX),
    "runAsGroup": _integer(0, INT32_MAX),
    "runAsNonRoot": _boolean,
    "readOnlyRootFilesystem": _boolean,
    "allowPrivilegeEscalation": _boolean,
    "privileged": _boolean,
    "capabilities": _struct(_CAPABILITIES_FIELDS),
    "seccompProfile": _seccomp_profile,
}


def _container_security_context(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, _CONTAINER_SECURITY_FIELDS)
    if out is None:
        return _BAD
    if out.get("privileged") is True and out.get("allowPrivilegeEscalation") is False:
        # A privileged container can always escalate; Kubernetes rejects the pair.
        errors.add(_field(path, "allowPrivilegeEscalation"), "cannot be false when privileged is true")
    return out


_ENV_FIELDS: dict[str, Check] = {"name": _string(nonempty=True, rule=_env_name), "value": _string()}


def _no_backsteps(text: str) -> str | None:
    # Kubernetes refuses '..' in volume paths: a path must say where it is, not climb out of it.
    return "must not contain '..'" if ".." in text.split("/") else None


def _host_path(text: str) -> str | None:
    return _absolute_path(text) or _no_backsteps(text)


def _mount_path(text: str) -> str | None:
    problem = _absolute_path(text) or _no_backsteps(text)
    if problem is None and not text.strip("/"):
        problem = "must not be /: a volume cannot take the place of the container's root"
    return problem


_VOLUME_MOUNT_FIELDS: dict[str, Check] = {
    "name": _string(nonempty=True),
    "mountPath": _string(nonempty=True, rule=_mount_path),
    "readOnly": _boolean,
}

_CONTAINER_FIELDS: dict[str, Check] = {
    "name": _string(rule=validate_dns1123_label),
    "image": _image,
    "command": _list(_string()),
    "args": _list(_string()),
    "env": _list(_struct(_ENV_FIELDS, required=("name",))),
    "workingDir": _string(rule=_absolute_path),
    "ports": _list(_port),
    "resources": _resources,
    "imagePullPolicy": _enum("Always", "IfNotPresent", "Never"),
    "securityContext": _container_security_context,
    "stdin": _boolean,
    "tty": _boolean,
    "livenessProbe": _probe,
    "readinessProbe": _probe,
    "startupProbe": _probe,
    "volumeMounts": _list(_struct(_VOLUME_MOUNT_FIELDS, required=("name", "mountPath"))),
}


def _container(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, _CONTAINER_FIELDS, required=("name", "image"))
    if out is None:
        return _BAD
    if "image" in out:
        out.setdefault("imagePullPolicy", default_image_pull_policy(out["image"]))
    mount_paths: set[str] = set()
    for i, mount in enumerate(out.get("volumeMounts", [])):
        where = mount.get("mountPath") if isinstance(mount, dict) else None
        if where is None:
            continue
        normal = "/" + "/".join(p for p in where.split("/") if p not in ("", "."))
        if normal in mount_paths:
            errors.add(_field(_index(_field(path, "volumeMounts"), i), "mountPath"), f'duplicate mount path "{where}"')
        mount_paths.add(normal)
    port_names: set[str] = set()
    for i, port in enumerate(out.get("ports", [])):
        name = port.get("name") if isinstance(port, dict) else None
        if name is None:
            continue
        if name in port_names:
            errors.add(_field(_index(_field(path, "ports"), i), "name"), f'duplicate port name "{name}"')
        port_names.add(name)
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = out.get(probe_name)
        if not isinstance(probe, dict):
            continue
        if probe_name != "readinessProbe" and probe.get("successThreshold", 1) != 1:
            errors.add(_field(_field(path, probe_name), "successThreshold"),
                       f"must be 1 for a {probe_name}, got {probe['successThreshold']}")
        for handler in ("httpGet", "tcpSocket"):
            port = probe[handler].get("port") if isinstance(probe.get(handler), dict) else None
            if isinstance(port, str) and port not in port_names:
                # Kubernetes finds out only when the probe runs; the agent needs the number.
                errors.add(_field(_field(_field(path, probe_name), handler), "port"),
                           f'no port named "{port}" in this container\'s ports')
    return out


# --- pod spec -------------------------------------------------------------------------


def _label_key_or_empty(text: str) -> str | None:
    return validate_label_key(text) if text else None


_TOLERATION_FIELDS: dict[str, Check] = {
    "key": _string(rule=_label_key_or_empty),
    "operator": _enum("Equal", "Exists"),
    "value": _string(),
    "effect": _enum("NoSchedule", "PreferNoSchedule", "NoExecute", ""),
    "tolerationSeconds": _integer(),
}


def _toleration(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, _TOLERATION_FIELDS)
    if out is None:
        return _BAD
    if any(value.get(f) is not None and f not in out for f in ("key", "operator", "effect")):
        return out  # their own errors are recorded; the rules below would only echo them
    operator = out.setdefault("operator", "Equal")
    if not out.get("key") and operator != "Exists":
        errors.add(_field(path, "operator"), 'must be "Exists" when key is empty (to tolerate every taint)')
    if operator == "Exists" and out.get("value"):
        errors.add(_field(path, "value"), 'must be empty when operator is "Exists"')
    elif operator == "Equal" and "value" in out:
        problem = validate_label_value(out["value"])
        if problem:
            errors.add(_field(path, "value"), problem)
    if "tolerationSeconds" in out and out.get("effect") != "NoExecute":
        errors.add(_field(path, "tolerationSeconds"), 'may only be set when effect is "NoExecute"')
    return out


def _node_selector_requirement(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {
        "key": _string(rule=validate_label_key),
        "operator": _enum("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"),
        "values": _list(_string()),
    }, required=("key", "operator"))
    if out is None:
        return _BAD
    operator, values = out.get("operator"), out.get("values") or []
    if operator in ("In", "NotIn") and not values:
        errors.add(_field(path, "values"), f"must be non-empty when operator is {operator}")
    elif operator in ("Exists", "DoesNotExist") and values:
        errors.add(_field(path, "values"), f"must be empty when operator is {operator}")
    elif operator in ("Gt", "Lt") and (
            len(values) != 1 or not isinstance(values[0], str) or not re.fullmatch(r"-?[0-9]{1,18}", values[0])):
        errors.add(_field(path, "values"), f"must be a single integer when operator is {operator}")
    return out


def _node_field_requirement(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {
        "key": _enum("metadata.name"),
        "operator": _enum("In", "NotIn"),
        "values": _list(_string()),
    }, required=("key", "operator", "values"))
    if out is None:
        return _BAD
    if isinstance(out.get("values"), list) and len(out["values"]) != 1:
        errors.add(_field(path, "values"), "must have exactly one node name")
    return out


_NODE_SELECTOR_TERM = _struct({
    "matchExpressions": _list(_node_selector_requirement),
    "matchFields": _list(_node_field_requirement),
})

_POD_AFFINITY_TERM = _struct({
    "labelSelector": _label_selector,
    "namespaceSelector": _label_selector,
    "namespaces": _list(_string(rule=validate_dns1123_label)),
    "topologyKey": _string(rule=validate_label_key),
}, required=("topologyKey",))


def _pod_affinity() -> Check:
    return _struct({
        "requiredDuringSchedulingIgnoredDuringExecution": _list(_POD_AFFINITY_TERM),
        "preferredDuringSchedulingIgnoredDuringExecution": _list(_struct(
            {"weight": _integer(1, 100), "podAffinityTerm": _POD_AFFINITY_TERM},
            required=("weight", "podAffinityTerm"))),
    })


_AFFINITY = _struct({
    "nodeAffinity": _struct({
        "requiredDuringSchedulingIgnoredDuringExecution": _struct(
            {"nodeSelectorTerms": _list(_NODE_SELECTOR_TERM, min_items=1,
                                        too_few="must have at least one node selector term")},
            required=("nodeSelectorTerms",)),
        "preferredDuringSchedulingIgnoredDuringExecution": _list(_struct(
            {"weight": _integer(1, 100), "preference": _NODE_SELECTOR_TERM},
            required=("weight", "preference"))),
    }),
    "podAffinity": _pod_affinity(),
    "podAntiAffinity": _pod_affinity(),
})

def _topology_spread_constraint(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {
        "maxSkew": _integer(1, INT32_MAX),
        "topologyKey": _string(nonempty=True, rule=validate_label_key),
        "whenUnsatisfiable": _enum("DoNotSchedule", "ScheduleAnyway"),
        "labelSelector": _label_selector,
        "minDomains": _integer(1, INT32_MAX),
    }, required=("maxSkew", "topologyKey", "whenUnsatisfiable"))
    if out is None:
        return _BAD
    if "minDomains" in out and out.get("whenUnsatisfiable") == "ScheduleAnyway":
        errors.add(_field(path, "minDomains"), 'may only be set when whenUnsatisfiable is "DoNotSchedule"')
    return out


def _unique_list(item: Check, keys: tuple[str, str], describe: Callable[[tuple[Any, Any]], str],
                 field: str | None = None) -> Check:
    """A list of ``item`` in which no two entries share the values of both ``keys``; a
    repeat is reported at its index (and ``field``) with ``describe(values)``."""
    whole = _list(item)

    def check(errors: _Errors, value: Any, path: str) -> Any:
        out = whole(errors, value, path)
        if out is _BAD:
            return _BAD
        seen: set[tuple[Any, Any]] = set()
        for i, entry in enumerate(out):
            if not isinstance(entry, dict) or any(k not in entry for k in keys):
                continue
            pair = (entry[keys[0]], entry[keys[1]])
            if pair in seen:
                at = _index(path, i)
                errors.add(_field(at, field) if field else at, describe(pair))
            seen.add(pair)
        return out

    return check


#: Kubernetes: no two constraints may share both topologyKey and whenUnsatisfiable.
_topology_spread_constraints = _unique_list(
    _topology_spread_constraint, ("topologyKey", "whenUnsatisfiable"),
    lambda pair: f'duplicate constraint on "{pair[0]}" with whenUnsatisfiable "{pair[1]}"', field="topologyKey")


_POD_SECURITY_FIELDS: dict[str, Check] = {
    "runAsUser": _integer(0, INT32_MAX),
    "runAsGroup": _integer(0, INT32_MAX),
    "runAsNonRoot": _boolean,
    "fsGroup": _integer(0, INT32_MAX),
    "seccompProfile": _seccomp_profile,
}

# --- volumes ---------------------------------------------------------------------------

#: hostPath ``type`` values, as Kubernetes has them; "" checks nothing (and a missing
#: path is made as a directory, as containerd does).
HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice",
                   "BlockDevice")


def _host_path_source(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {"path": _string(nonempty=True, rule=_host_path),
                                        "type": _enum(*HOST_PATH_TYPES)}, required=("path",))
    if out is None:
        return _BAD
    out.setdefault("type", "")
    return out


def _positive_memory(errors: _Errors, value: Any, path: str) -> Any:
    try:
        amount = parse_memory(value)
    except QuantityError as e:
        errors.add(path, e.message)
        return _BAD
    if amount <= 0:
        errors.add(path, f"must be greater than 0, got {_shown_quantity(value)}")
        return _BAD
    return value


def _empty_dir_source(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {"medium": _enum("", "Memory"), "sizeLimit": _positive_memory})
    if out is None:
        return _BAD
    if "sizeLimit" in out and out.get("medium") != "Memory":
        # Kubernetes evicts a pod whose disk emptyDir outgrows it; orch has no eviction.
        errors.add(_field(path, "sizeLimit"), 'orch can hold a size limit only on a memory-backed emptyDir '
                                              '(medium: "Memory", a tmpfs of that size)')
    return out


_VOLUME_SOURCES = ("hostPath", "emptyDir")
_VOLUME_FIELDS: dict[str, Check] = {
    "name": _string(nonempty=True, rule=validate_dns1123_label),
    "hostPath": _host_path_source,
    "emptyDir": _empty_dir_source,
}


def _volume(errors: _Errors, value: Any, path: str) -> Any:
    foreign = sorted(k for k in value if k in _KUBERNETES_ONLY_VOLUMES) if isinstance(value, dict) else []
    for name in foreign:
        errors.add(_field(path, name), f"orch does not support Kubernetes' {name} volumes, only hostPath and emptyDir")
    if foreign:
        value = {k: v for k, v in value.items() if k not in _KUBERNETES_ONLY_VOLUMES}
    out = _fields(errors, value, path, _VOLUME_FIELDS, required=("name",))
    if out is None:
        return _BAD
    given = [k for k in _VOLUME_SOURCES if value.get(k) is not None]
    if len(given) > 1:
        errors.add(path, f"may not specify more than one volume source, found {' and '.join(given)}")
    elif not given and not foreign:
        out["emptyDir"] = {}  # Kubernetes' default for a volume that names no source
    return out


def _check_volumes(errors: _Errors, spec: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    """Volume names are unique, and every volumeMount names one of them. Names are read from
    the document as written (``raw``), so a volume with an error of its own is still found."""
    raw_volumes = raw.get("volumes")
    if raw_volumes is not None and not isinstance(raw_volumes, list):
        return  # its error is recorded; every mount would only echo it
    declared: set[str] = set()
    for i, volume in enumerate(raw_volumes or []):
        name = volume.get("name") if isinstance(volume, dict) else None
        if not isinstance(name, str):
            continue
        if name in declared:
            errors.add(_field(_index(_field(path, "volumes"), i), "name"), f'duplicate volume name "{name}"')
        declared.add(name)
    for i, container in enumerate(spec.get("containers", [])):
        if not isinstance(container, dict):
            continue
        for j, mount in enumerate(container.get("volumeMounts", [])):
            name = mount.get("name") if isinstance(mount, dict) else None
            if name is not None and name not in declared:
                errors.add(_field(_index(_field(_index(_field(path, "containers"), i), "volumeMounts"), j), "name"),
                           f'no volume named "{name}" in {_field(path, "volumes")}')


_HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")


def _check_host_namespaces(errors: _Errors, spec: dict[str, Any], path: str) -> None:
    """Kubernetes' rules for the host's namespaces: none in a pod with a user namespace of its
    own, and a hostNetwork pod's ports are the node's: hostPort defaults to containerPort
    and may not differ from it."""
    if spec.get("hostUsers") is False:
        for name in _HOST_NAMESPACES:
            if spec.get(name) is True:
                errors.add(_field(path, name), "may not be true when hostUsers is false: a pod in a user namespace "
                                               "of its own cannot share the node's namespaces")
    if spec.get("hostNetwork") is not True:
        return
    for i, container in enumerate(spec.get("containers", [])):
        if not isinstance(container, dict):
            continue
        for j, port in enumerate(container.get("ports", [])):
            if not isinstance(port, dict) or "containerPort" not in port:
                continue
            if "hostPort" not in port:
                port["hostPort"] = port["containerPort"]
            elif port["hostPort"] != port["containerPort"]:
                errors.add(_field(_index(_field(_index(_field(path, "containers"), i), "ports"), j), "hostPort"),
                           f"must match containerPort ({port['containerPort']}) when hostNetwork is true")

_POD_SPEC_FIELDS: dict[str, Check] = {
    "containers": _list(_container, min_items=1, too_few="must have at least one container"),
    "restartPolicy": _enum("Always", "OnFailure", "Never"),
    "nodeSelector": _labels,
    "nodeName": _string(rule=validate_dns1123_subdomain),
    "terminationGracePeriodSeconds": _integer(0, MAX_GRACE_PERIOD_SECONDS),
    "activeDeadlineSeconds": _integer(1),
    "schedulerName": _string(rule=validate_dns1123_subdomain),
    "hostname": _string(rule=validate_dns1123_label),
    "priority": _integer(-(2**31), INT32_MAX),
    "priorityClassName": _string(rule=validate_dns1123_subdomain),
    "preemptionPolicy": _enum("PreemptLowerPriority", "Never"),
    "tolerations": _list(_toleration),
    "affinity": _AFFINITY,
    "topologySpreadConstraints": _topology_spread_constraints,
    "hostUsers": _boolean,
    "hostNetwork": _boolean,
    "hostPID": _boolean,
    "hostIPC": _boolean,
    "securityContext": _struct(_POD_SECURITY_FIELDS),
    "volumes": _list(_volume),
}

_POD_SPEC_DEFAULTS = {
    "restartPolicy": "Always",
    "terminationGracePeriodSeconds": 30,
    "schedulerName": DEFAULT_SCHEDULER_NAME,
}


def _pod_spec(errors: _Errors, value: Any, path: str, *, in_template: bool = False) -> Any:
    out = _fields(errors, value, path, _POD_SPEC_FIELDS, required=("containers",))
    if out is None:
        return _BAD
    _check_host_namespaces(errors, out, path)
    _check_volumes(errors, out, value, path)
    containers = out.get("containers")
    if isinstance(containers, list):
        _check_containers_together(errors, containers, _field(path, "containers"))
    if in_template:
        # A Deployment keeps its pods running: it replaces pods that exit, so a policy
        # that lets them stay exited cannot be honoured (Kubernetes rejects it too).
        policy = out.get("restartPolicy")
        if policy is not None and policy != "Always":
            errors.add(_field(path, "restartPolicy"), f'must be "Always" in a Deployment, got "{policy}"')
        if "activeDeadlineSeconds" in out:
            errors.add(_field(path, "activeDeadlineSeconds"),
                       "may not be set in a Deployment: its pods are meant to run until replaced")
    for name, default in _POD_SPEC_DEFAULTS.items():
        out.setdefault(name, default)
    return out


def _check_containers_together(errors: _Errors, containers: list[Any], path: str) -> None:
    """Rules across containers: unique names, and no host port taken twice."""
    names: set[str] = set()
    host_ports: set[tuple[str, int, str]] = set()
    for i, c in enumerate(containers):
        if not isinstance(c, dict):
            continue
        name = c.get("name")
        if isinstance(name, str):
            if name in names:
                errors.add(_field(_index(path, i), "name"), f'duplicate container name "{name}"')
            names.add(name)
        for j, port in enumerate(c.get("ports", [])):
            if not isinstance(port, dict) or "hostPort" not in port:
                continue
            key = (port.get("hostIP", ""), port["hostPort"], port.get("protocol", "TCP"))
            if key in host_ports:
                errors.add(_field(_index(_field(_index(path, i), "ports"), j), "hostPort"),
                           f"duplicate host port {key[1]}/{key[2]}")
            host_ports.add(key)


# --- deployment -----------------------------------------------------------------------


def _rolling_update(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {"maxSurge": _int_or_percent, "maxUnavailable": _int_or_percent})
    if out is None:
        return _BAD
    surge = out.setdefault("maxSurge", "25%")
    unavailable = out.setdefault("maxUnavailable", "25%")
    if isinstance(unavailable, str) and int(unavailable[:-1]) > 100:
        errors.add(_field(path, "maxUnavailable"), f"must not be greater than 100%, got {unavailable}")
    if _is_zero(surge) and _is_zero(unavailable):
        # Neither a new pod may be added nor an old one removed: the rollout could never move.
        errors.add(_field(path, "maxUnavailable"), "may not be 0 when maxSurge is 0")
    return out


def _strategy(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {"type": _enum("RollingUpdate", "Recreate"), "rollingUpdate": _rolling_update})
    if out is None:
        return _BAD
    if value.get("type") is not None and "type" not in out:
        return out
    kind = out.setdefault("type", "RollingUpdate")
    if kind == "Recreate" and value.get("rollingUpdate") is not None:
        errors.add(_field(path, "rollingUpdate"), 'may not be specified when strategy type is "Recreate"')
    if kind == "RollingUpdate" and value.get("rollingUpdate") is None:
        out["rollingUpdate"] = {"maxSurge": "25%", "maxUnavailable": "25%"}
    return out


def _template(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {
        "metadata": _template_metadata,
        "spec": lambda e, v, p: _pod_spec(e, v, p, in_template=True),
    }, required=("spec",))
    return _BAD if out is None else out


_DEPLOYMENT_SPEC_FIELDS: dict[str, Check] = {
    "replicas": _integer(0, INT32_MAX),
    "selector": _label_selector,
    "template": _template,
    "strategy": _strategy,
    "revisionHistoryLimit": _integer(0, INT32_MAX),
    "minReadySeconds": _integer(0, INT32_MAX),
    "progressDeadlineSeconds": _integer(1, INT32_MAX),
    "paused": _boolean,
}

_DEPLOYMENT_SPEC_DEFAULTS = {
    "replicas": 1,
    "revisionHistoryLimit": 10,
    "minReadySeconds": 0,
    "progressDeadlineSeconds": 600,
}


def _deployment_spec(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, _DEPLOYMENT_SPEC_FIELDS, required=("selector", "template"))
    if out is None:
        return _BAD
    selector = out.get("selector")
    if selector is not None and not selector.get("matchLabels") and not selector.get("matchExpressions"):
        errors.add(_field(path, "selector"), "must not be empty: a Deployment finds its pods by their labels")
    elif selector is not None:
        labels = _template_labels(out.get("template"), value.get("template"))
        if labels is not None and not selector_from_label_selector(selector).matches(labels):
            errors.add(_field(path, "template.metadata.labels"), "selector does not match template labels")
    if value.get("strategy") is None:
        out["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    for name, default in _DEPLOYMENT_SPEC_DEFAULTS.items():
        out.setdefault(name, default)
    if out["progressDeadlineSeconds"] <= out["minReadySeconds"]:
        # Kubernetes: otherwise a rollout would be declared stuck before a pod could count as ready.
        errors.add(_field(path, "progressDeadlineSeconds"),
                   f"must be greater than minReadySeconds ({out['minReadySeconds']})")
    return out


def _template_labels(template: Any, raw_template: Any) -> dict[str, str] | None:
    """The template's labels when all of them are valid; None when some are not (their
    errors are recorded; a selector mismatch on top would only add noise)."""
    if not isinstance(template, dict):
        return None
    raw_md = raw_template.get("metadata") if isinstance(raw_template, dict) else None
    if raw_md is not None and not isinstance(raw_md, dict):
        return None
    raw_labels = raw_md.get("labels") if raw_md is not None else None
    labels: dict[str, str] = template.get("metadata", {}).get("labels", {})
    if raw_labels is not None and (not isinstance(raw_labels, dict) or len(labels) != len(raw_labels)):
        return None  # _labels keeps only the valid entries
    return labels


# --- node ----------------------------------------------------------------------------------


def _taint(errors: _Errors, value: Any, path: str) -> Any:
    out = _fields(errors, value, path, {
        "key": _string(nonempty=True, rule=validate_label_key),
        "value": _string(rule=validate_label_value),
        "effect": _enum("NoSchedule", "PreferNoSchedule", "NoExecute"),
        "timeAdded": _string(rule=_rfc3339),
    }, required=("key", "effect"))
    return _BAD if out is None else out


#: Kubernetes: taints are unique by key and effect.
_taints = _unique_list(_taint, ("key", "effect"),
                       lambda pair: f'duplicate taint with key "{pair[0]}" and effect "{pair[1]}"')


_NODE_SPEC_FIELDS: dict[str, Check] = {
    "taints": _taints,
    "unschedulable": _boolean,
    "podCIDR": _string(),
    "podCIDRs": _list(_string()),
    "providerID": _string(),
}


def validate_node_identity(name: Any, labels: Any) -> None:
    """A registering node's name (a DNS subdomain, as any object name) and labels, checked
    before its Node is written; a ValidationError naming ``metadata.name`` / ``metadata.labels``.
    The name also becomes an etcd key segment (its lease, its allocation ledger), so
    nothing like ``a/b`` may pass."""
    errors = _Errors()
    _fields(errors, {"name": name, "labels": labels}, "metadata",
            {"name": _METADATA_FIELDS["name"], "labels": _labels}, required=("name",))
    if errors.items:
        raise ValidationError(errors.items)


def validate_node_spec(spec: Any) -> dict[str, Any]:
    """Validate a Node's ``spec`` (taints, unschedulable) whole, for whatever writes one
    (cordon, taint, registration); a new dict, or a ValidationError naming ``spec.…`` paths."""
    errors = _Errors()
    out = _fields(errors, spec, "spec", _NODE_SPEC_FIELDS)
    if errors.items:
        raise ValidationError(errors.items)
    assert out is not None
    return out


_KIND_SPECS: dict[str, Check] = {"Pod": _pod_spec, "Deployment": _deployment_spec}

_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")

#: Kubernetes' HighestUserDefinablePriority: higher values are kept for system-* classes.
HIGHEST_USER_DEFINABLE_PRIORITY = 1_000_000_000

_PRIORITY_CLASS_FIELDS: dict[str, Check] = {
    "apiVersion": _enum(SUPPORTED_KINDS["PriorityClass"]),
    "kind": _enum("PriorityClass"),
    "metadata": _metadata,
    "value": _integer(-(2**31), HIGHEST_USER_DEFINABLE_PRIORITY),
    "globalDefault": _boolean,
    "preemptionPolicy": _enum("PreemptLowerPriority", "Never"),
    "description": _string(),
}


def _validate_priority_class(obj: dict[str, Any]) -> dict[str, Any]:
    """A PriorityClass (scheduling.k8s.io/v1): cluster-scoped, its fields at the top level, no spec."""
    errors = _Errors()
    out = _fields(errors, obj, "", _PRIORITY_CLASS_FIELDS, required=("apiVersion", "metadata", "value"))
    if errors.items or out is None:
        raise ValidationError(errors.items)
    name = str(out["metadata"]["name"])
    if name.startswith("system-"):
        errors.add("metadata.name", 'the prefix "system-" is reserved for the system priority classes')
    if errors.items:
        raise ValidationError(errors.items)
    out["metadata"].pop("namespace", None)  # cluster-scoped
    out.setdefault("globalDefault", False)
    out.setdefault("preemptionPolicy", "PreemptLowerPriority")
    return out


# --- namespace -------------------------------------------------------------------------

#: The pod-security.kubernetes.io/ labels Kubernetes knows besides ``enforce``, and why orch
#: refuses them rather than keep them without effect.
_POD_SECURITY_UNSUPPORTED = {
    "warn": "orch does not support pod security warnings, only enforce",
    "audit": "orch does not support pod security audit annotations, only enforce",
    "warn-version": "orch does not support pod security warnings, only enforce",
    "audit-version": "orch does not support pod security audit annotations, only enforce",
}


def _pod_security_labels(errors: _Errors, labels: Mapping[str, str], path: str) -> None:
    """The namespace's pod security labels: ``enforce`` names a level; ``enforce-version`` may
    only be ``latest`` (the checks orch has are the latest standard's)."""
    for key, value in labels.items():
        if not key.startswith(POD_SECURITY_LABEL_PREFIX):
            continue
        mode = key.removeprefix(POD_SECURITY_LABEL_PREFIX)
        at = _index(path, key)
        if mode == "enforce":
            if value not in POD_SECURITY_LEVELS:
                errors.add(at, "must be one of " + ", ".join(f'"{v}"' for v in POD_SECURITY_LEVELS)
                           + f", got {describe_value(value)}" + did_you_mean(value, POD_SECURITY_LEVELS))
        elif mode == "enforce-version":
            if value != "latest":
                errors.add(at, f'must be "latest", got {describe_value(value)}: orch enforces the latest version '
                               "of the Pod Security Standards only")
        elif mode in _POD_SECURITY_UNSUPPORTED:
            errors.add(at, _POD_SECURITY_UNSUPPORTED[mode])
        else:
            known = ("enforce", "enforce-version", *_POD_SECURITY_UNSUPPORTED)
            errors.add(at, f"unknown pod security label; orch knows {POD_SECURITY_ENFORCE_LABEL} and "
                           f"{POD_SECURITY_ENFORCE_LABEL}-version" + did_you_mean(mode, known))


def _anything(errors: _Errors, value: Any, path: str) -> Any:
    return value


_NAMESPACE_FIELDS: dict[str, Check] = {
    "apiVersion": _enum(SUPPORTED_KINDS["Namespace"]),
    "kind": _enum("Namespace"),
    "metadata": _metadata,
    # Kubernetes' spec has finalizers only, which orch does not support: deleting a
    # Namespace object deletes that object, not what is in the namespace.
    "spec": _struct({}),
    "status": _anything,  # accepted and dropped, as for every kind
}


def _validate_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    """A Namespace (v1): cluster-scoped, a DNS-1123 label for a name, pod security labels checked."""
    errors = _Errors()
    out = _fields(errors, obj, "", _NAMESPACE_FIELDS, required=("apiVersion", "metadata"))
    md = out.get("metadata") if out is not None else None
    if isinstance(md, dict):
        problem = validate_dns1123_label(md["name"]) if isinstance(md.get("name"), str) else None
        if problem:
            errors.add("metadata.name", problem)
        _pod_security_labels(errors, md.get("labels") or {}, "metadata.labels")
    if errors.items or out is None:
        raise ValidationError(errors.items)
    out.pop("status", None)
    out["metadata"].pop("namespace", None)  # cluster-scoped
    out.setdefault("spec", {})
    return out


# --- the entry points -------------------------------------------------------------------


def validate(obj: Any) -> dict[str, Any]:
    """Validate one object whole; return a new dict with defaults filled in.

    Raises ValidationError listing every problem found. ``status`` is dropped. The
    input is not modified, and nothing in the result is shared with it.
    """
    if not isinstance(obj, dict):
        raise ValidationError(FieldError(
            "", f"an object must be a mapping with apiVersion, kind and metadata, got {describe_value(obj)}"))
    if obj.get("kind") == "PriorityClass":
        return _validate_priority_class(obj)
    if obj.get("kind") == "Namespace":
        return _validate_namespace(obj)
    errors = _Errors()
    for name in obj:
        if name not in _TOP_LEVEL:
            errors.add(_field("", name), _unknown_field_message(name, _TOP_LEVEL))

    kind: Any = obj.get("kind")
    expected_version: str | None = None
    if kind is None:
        errors.add("kind", f"is required; supported kinds: {', '.join(sorted(SUPPORTED_KINDS))}")
    elif not isinstance(kind, str):
        _type_error(errors, "kind", "a string", kind)
    elif kind not in SUPPORTED_KINDS:
        errors.add("kind", f'"{kind}" is not supported; supported kinds: {", ".join(sorted(SUPPORTED_KINDS))}'
                   + did_you_mean(kind, tuple(SUPPORTED_KINDS)))
    else:
        expected_version = SUPPORTED_KINDS[kind]

    api_version = obj.get("apiVersion")
    if api_version is None:
        errors.add("apiVersion", "is required" + (f'; use "{expected_version}" for kind {kind}'
                                                  if expected_version else ""))
    elif not isinstance(api_version, str):
        _type_error(errors, "apiVersion", "a string", api_version)
    elif expected_version is not None and api_version != expected_version:
        errors.add("apiVersion", f'must be "{expected_version}" for kind {kind}, got {describe_value(api_version)}')

    metadata = _BAD
    if obj.get("metadata") is None:
        errors.add("metadata", "is required")
    else:
        metadata = _metadata(errors, obj["metadata"], "metadata")

    spec = _BAD
    if expected_version is not None:
        if obj.get("spec") is None:
            errors.add("spec", "is required")
        else:
            spec = _KIND_SPECS[kind](errors, obj["spec"], "spec")

    if errors.items:
        raise ValidationError(errors.items)
    assert metadata is not _BAD and spec is not _BAD  # every _BAD comes with an error
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}


def container_requests(container: Mapping[str, Any]) -> tuple[int, int]:
    """``(cpu millicores, memory bytes)`` a container requests: its requests, else its limits, else 0."""
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}

    def amount(name: str) -> int:
        value = requests.get(name)
        if value is None:
            value = limits.get(name)
        return 0 if value is None else RESOURCE_NAMES[name](value)

    return amount("cpu"), amount("memory")


def container_limits(container: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(cpu millicores, memory bytes)`` a container is limited to; None where it has no limit."""
    limits = (container.get("resources") or {}).get("limits") or {}
    cpu, memory = limits.get("cpu"), limits.get("memory")
    return (None if cpu is None else parse_cpu(cpu), None if memory is None else parse_memory(memory))


def pod_requests(pod_spec: Mapping[str, Any]) -> tuple[int, int]:
    """``(cpu millicores, memory bytes)`` a pod asks of its node: the sum over its containers,
    each counting its requests, else its limits, else nothing."""
    cpu = memory = 0
    for container in pod_spec.get("containers") or []:
        c, m = container_requests(container)
        cpu += c
        memory += m
    return cpu, memory
