"""What ``orchctl`` prints: tables, ``describe`` pages, ages, names — pure functions over object dicts.

Nothing here talks to a cluster or reads the clock on its own (every function
that shows an age takes ``now``), so every line of output can be unit-tested
from a dict.

The formats are kubectl's, down to the spacing: ``get`` tables are laid out as
kubectl's tabwriter lays them out (columns at least 6 wide, 3 spaces apart) and
``describe`` pages as its describers do (Go's ``text/tabwriter`` with 2 spaces of
padding, where a column is aligned over each run of consecutive lines that have
it). ``tabwrite`` below is a port of that algorithm, so the pages line up the
same way kubectl's do.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from apimachinery.meta import Kind, Obj, kind_for
from apimachinery.quantity import QuantityError, parse_cpu, parse_memory

NONE = "<none>"
UNKNOWN = "<unknown>"
# kubectl hides the three-way-merge bookkeeping in describe; so do we, whatever its prefix.
LAST_APPLIED_SUFFIX = "last-applied-configuration"
MAX_ANNOTATION_LEN = 140
NODE_UNREACHABLE_REASON = "NodeLost"

# kubectl's get printer: tabwriter.NewWriter(out, 6, 4, 3, ' ', RememberWidths).
TABLE_MIN_WIDTH = 6
TABLE_PADDING = 3
# kubectl's describers: tabwriter.Writer.Init(buf, 0, 8, 2, ' ', 0).
DESCRIBE_PADDING = 2


# --- time ------------------------------------------------------------------


def parse_time(text: Any) -> datetime.datetime | None:
    """A timestamp from an object (``2024-01-02T03:04:05Z``, fractions allowed), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=datetime.UTC)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def human_duration(seconds: float) -> str:
    """A duration the way kubectl's ``duration.HumanDuration`` writes it: ``5s``, ``3m2s``, ``5h``, ``3d``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 60 * 2:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rem = s % 60
        return f"{minutes}m" if rem == 0 else f"{minutes}m{rem}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rem = minutes % 60
        return f"{hours}h" if rem == 0 else f"{hours}h{rem}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rem = hours % 24
        return f"{hours // 24}d" if rem == 0 else f"{hours // 24}d{rem}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def age(timestamp: Any, now: datetime.datetime | None = None) -> str:
    """The AGE column: time since ``timestamp``, ``<unknown>`` when there is none."""
    t = parse_time(timestamp)
    if t is None:
        return UNKNOWN
    return human_duration(((now or utcnow()) - t).total_seconds())


def rfc1123z(timestamp: Any) -> str:
    """``Mon, 02 Jan 2006 15:04:05 -0700`` in local time, as describe prints times."""
    t = parse_time(timestamp)
    if t is None:
        return str(timestamp or "")
    return t.astimezone().strftime("%a, %d %b %Y %H:%M:%S %z")


# --- names -----------------------------------------------------------------


def _kind_of(obj_or_kind: Obj | Kind | str) -> tuple[str, str]:
    """``(kind, api_version)`` of an object, a Kind or a kind word."""
    if isinstance(obj_or_kind, Kind):
        return obj_or_kind.kind, obj_or_kind.api_version
    if isinstance(obj_or_kind, str):
        k = kind_for(obj_or_kind)
        return (k.kind, k.api_version) if k else (obj_or_kind, "v1")
    kind = str(obj_or_kind.get("kind") or "")
    known = kind_for(kind) if kind else None
    return kind, str(obj_or_kind.get("apiVersion") or (known.api_version if known else "v1"))


def _group(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def resource_type(obj_or_kind: Obj | Kind | str) -> str:
    """kubectl's singular type word: ``pod``, ``deployment.apps``, ``node``."""
    kind, api_version = _kind_of(obj_or_kind)
    group = _group(api_version)
    return f"{kind.lower()}.{group}" if group else kind.lower()


def resource_plural(obj_or_kind: Obj | Kind | str) -> str:
    """kubectl's plural type word, as in ``pods "x" not found``: ``pods``, ``deployments.apps``."""
    kind, api_version = _kind_of(obj_or_kind)
    known = kind_for(kind) if kind else None
    plural = known.plural if known else kind.lower() + "s"
    group = _group(api_version)
    return f"{plural}.{group}" if group else plural


def object_name(obj: Obj) -> str:
    """``-o name``: ``pod/hello``, ``deployment.apps/web``."""
    return f"{resource_type(obj)}/{_md(obj).get('name', '')}"


def not_found_message(kind: Kind | str, name: str) -> str:
    return f'{resource_plural(kind)} "{name}" not found'


# --- small helpers over object dicts ----------------------------------------


def metadata(obj: Obj) -> dict[str, Any]:
    """``obj["metadata"]``, or an empty dict when a malformed document has none."""
    md = obj.get("metadata")
    return md if isinstance(md, dict) else {}


_md = metadata


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _condition(obj: Obj, kind: str) -> dict[str, Any] | None:
    for c in _list(_dict(obj.get("status")).get("conditions")):
        if isinstance(c, dict) and c.get("type") == kind:
            return c
    return None


def _or_none(value: Any) -> str:
    return str(value) if value not in (None, "") else NONE


def _bool(value: Any) -> str:
    return "True" if value is True or value == "True" else "False"


def selector_string(selector: Any) -> str:
    """A label selector dict as text: ``app=web,tier in (a,b)``."""
    sel = _dict(selector)
    parts = [f"{k}={v}" for k, v in sorted(_dict(sel.get("matchLabels")).items())]
    for expr in _list(sel.get("matchExpressions")):
        e = _dict(expr)
        key, op, values = e.get("key", ""), str(e.get("operator", "")), [str(v) for v in _list(e.get("values"))]
        if op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            parts.append(f"{key} {op.lower()} ({','.join(values)})")
    return ",".join(parts)


# --- tabwriter -----------------------------------------------------------------


def tabwrite(text: str, *, minwidth: int = 0, padding: int = DESCRIBE_PADDING) -> str:
    """Align tab-separated cells like Go's ``text/tabwriter`` (left-aligned, space padding).

    A cell is the text before a tab; the text after a line's last tab is not part
    of any column. A column is aligned over each block of consecutive lines that
    have a cell in it, so a table inside a describe page lines up on its own.
    """
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []
    widths: list[int] = []

    def write_lines(line0: int, line1: int) -> None:
        for cells in lines[line0:line1]:
            parts = []
            for j, cell in enumerate(cells):
                if j < len(widths) and j < len(cells) - 1:
                    parts.append(cell.ljust(widths[j]))
                else:
                    parts.append(cell)
            out.append("".join(parts))

    def format_block(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            format_block(line0, this)
            widths.pop()
            line0 = this
        write_lines(line0, line1)

    format_block(0, len(lines))
    return "\n".join(out)


# --- get tables --------------------------------------------------------------


Row = list[str]


@dataclass(frozen=True, slots=True)
class TableOptions:
    wide: bool = False
    all_namespaces: bool = False
    now: datetime.datetime | None = None


def pod_status(pod: Obj) -> tuple[int, int, str, int, datetime.datetime | None]:
    """``(ready, total, STATUS, restarts, last restart)`` for a pod, by kubectl's ``printPod`` rules.

    STATUS is the phase unless something more telling is known: the reason a
    container waits or terminated (``ContainerCreating``, ``CrashLoopBackOff``,
    ``Completed``, ``OOMKilled``, ``Error``), the init container in progress, or
    ``Terminating`` once deletion has begun.
    """
    spec, status, md = _dict(pod.get("spec")), _dict(pod.get("status")), _md(pod)
    phase = str(status.get("phase") or "")
    reason = str(status.get("reason") or phase)
    statuses = [_dict(s) for s in _list(status.get("containerStatuses"))]
    total = len(_list(spec.get("containers"))) or len(statuses)
    ready = restarts = 0
    last_restart: datetime.datetime | None = None

    def note_restart(cs: dict[str, Any]) -> None:
        nonlocal restarts, last_restart
        restarts += _int(cs.get("restartCount"))
        finished = parse_time(_dict(_dict(cs.get("lastState")).get("terminated")).get("finishedAt"))
        if finished is not None and (last_restart is None or finished > last_restart):
            last_restart = finished

    init_specs = _list(spec.get("initContainers"))
    initializing = False
    for i, raw in enumerate(_list(status.get("initContainerStatuses"))):
        cs = _dict(raw)
        note_restart(cs)
        state = _dict(cs.get("state"))
        term, wait = state.get("terminated"), state.get("waiting")
        if isinstance(term, dict) and _int(term.get("exitCode")) == 0:
            continue
        initializing = True
        if isinstance(term, dict):
            if term.get("reason"):
                reason = f"Init:{term['reason']}"
            elif _int(term.get("signal")):
                reason = f"Init:Signal:{_int(term.get('signal'))}"
            else:
                reason = f"Init:ExitCode:{_int(term.get('exitCode'))}"
        elif isinstance(wait, dict) and wait.get("reason") and wait.get("reason") != "PodInitializing":
            reason = f"Init:{wait['reason']}"
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        break

    initialized = _dict(_condition(pod, "Initialized")).get("status") == "True"
    if not initializing or initialized:
        restarts, last_restart = 0, None
        has_running = False
        # Backwards, as kubectl does, so the first container's reason is the one shown.
        for cs in reversed(statuses):
            note_restart(cs)
            state = _dict(cs.get("state"))
            wait, term = state.get("waiting"), state.get("terminated")
            if isinstance(wait, dict) and wait.get("reason"):
                reason = str(wait["reason"])
            elif isinstance(term, dict) and term.get("reason"):
                reason = str(term["reason"])
            elif isinstance(term, dict):
                signal = _int(term.get("signal"))
                reason = f"Signal:{signal}" if signal else f"ExitCode:{_int(term.get('exitCode'))}"
            elif cs.get("ready") and isinstance(state.get("running"), dict):
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            # One container finished, another still runs: the pod is not "Completed".
            pod_ready = _dict(_condition(pod, "Ready")).get("status") == "True"
            reason = "Running" if pod_ready else "NotReady"

    if md.get("deletionTimestamp"):
        if status.get("reason") == NODE_UNREACHABLE_REASON:
            reason = "Unknown"
        elif phase not in ("Succeeded", "Failed"):
            reason = "Terminating"
    return ready, total, reason or "Unknown", restarts, last_restart


def pod_ip(pod: Obj) -> str:
    status = _dict(pod.get("status"))
    ips = _list(status.get("podIPs"))
    first = _dict(ips[0]).get("ip") if ips else None
    return str(status.get("podIP") or first or "")


def node_status(node: Obj) -> str:
    """``Ready``, ``NotReady`` or ``Unknown`` (no Ready condition), ``,SchedulingDisabled`` when cordoned."""
    cond = _condition(node, "Ready")
    if cond is None:
        words = ["Unknown"]
    else:
        # kubectl shows Ready=Unknown (lease lapsed) as NotReady too.
        words = ["Ready" if cond.get("status") == "True" else "NotReady"]
    if _dict(node.get("spec")).get("unschedulable"):
        words.append("SchedulingDisabled")
    return ",".join(words)


def node_roles(node: Obj) -> str:
    roles: set[str] = set()
    for key, value in _dict(_md(node).get("labels")).items():
        if key.startswith("node-role.kubernetes.io/"):
            role = key.split("/", 1)[1]
            if role:
                roles.add(role)
        elif key == "kubernetes.io/role" and value:
            roles.add(str(value))
    return ",".join(sorted(roles)) or NONE


def _node_address(node: Obj, kind: str) -> str:
    for a in _list(_dict(node.get("status")).get("addresses")):
        if _dict(a).get("type") == kind:
            return str(_dict(a).get("address") or "")
    return ""


def _pod_row(pod: Obj, opts: TableOptions) -> Row:
    ready, total, status, restarts, last = pod_status(pod)
    now = opts.now or utcnow()
    restarts_text = str(restarts)
    if restarts and last is not None:
        restarts_text = f"{restarts} ({human_duration((now - last).total_seconds())} ago)"
    row = [str(_md(pod).get("name", "")), f"{ready}/{total}", status, restarts_text,
           age(_md(pod).get("creationTimestamp"), now)]
    if opts.wide:
        row += [pod_ip(pod) or NONE, _or_none(_dict(pod.get("spec")).get("nodeName"))]
    return row


def _deployment_row(dep: Obj, opts: TableOptions) -> Row:
    spec, status = _dict(dep.get("spec")), _dict(dep.get("status"))
    replicas = _int(spec.get("replicas"), 1)
    row = [str(_md(dep).get("name", "")), f"{_int(status.get('readyReplicas'))}/{replicas}",
           str(_int(status.get("updatedReplicas"))), str(_int(status.get("availableReplicas"))),
           age(_md(dep).get("creationTimestamp"), opts.now)]
    if opts.wide:
        containers = [_dict(c) for c in _list(_dict(_dict(spec.get("template")).get("spec")).get("containers"))]
        row += [",".join(str(c.get("name", "")) for c in containers) or NONE,
                ",".join(str(c.get("image", "")) for c in containers) or NONE,
                selector_string(spec.get("selector")) or NONE]
    return row


def _lease_row(obj: Obj, opts: TableOptions) -> Row:
    """kubectl's columns for a Lease: who holds it (a scheduler's identity, for the election)."""
    holder = _dict(obj.get("spec")).get("holderIdentity") or ""
    return [str(_md(obj).get("name", "")), str(holder), age(_md(obj).get("creationTimestamp"), opts.now)]


def event_interval(event: Obj, now: datetime.datetime | None) -> str:
    """kubectl's LAST SEEN / Age of an Event: ``5s``, or ``5s (x3 over 2m)`` for a repeated one."""
    last = age(event.get("lastTimestamp") or _md(event).get("creationTimestamp"), now)
    count = _int(event.get("count"), 1)
    if count > 1:
        return f"{last} (x{count} over {age(event.get('firstTimestamp'), now)})"
    return last


def event_object(event: Obj) -> str:
    """The OBJECT column: ``pod/web``."""
    inv = _dict(event.get("involvedObject"))
    return f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}"


def _event_row(event: Obj, opts: TableOptions) -> Row:
    row = [event_interval(event, opts.now), str(event.get("type", "")), str(event.get("reason", "")),
           event_object(event), str(event.get("message", "")).strip()]
    if opts.wide:
        inv, source = _dict(event.get("involvedObject")), _dict(event.get("source"))
        row = row[:4] + [str(inv.get("fieldPath", "")), _event_source(source),
                         age(event.get("firstTimestamp"), opts.now), str(_int(event.get("count"), 1)),
                         str(_md(event).get("name", "")), row[4]]
    return row


def _event_source(source: Mapping[str, Any]) -> str:
    """kubectl's formatEventSource: ``component, host``."""
    component, host = str(source.get("component", "")), str(source.get("host", ""))
    return f"{component}, {host}" if host else component


def event_sort_key(event: Obj) -> tuple[str, str]:
    """Events are listed oldest last-seen first, as kubectl sorts them."""
    return str(event.get("lastTimestamp") or ""), str(_md(event).get("name", ""))


def _priority_class_row(pc: Obj, opts: TableOptions) -> Row:
    return [str(_md(pc).get("name", "")), str(_int(pc.get("value"))), "true" if pc.get("globalDefault") else "false",
            age(_md(pc).get("creationTimestamp"), opts.now), str(pc.get("preemptionPolicy") or "PreemptLowerPriority")]


def _namespace_row(ns: Obj, opts: TableOptions) -> Row:
    return [str(_md(ns).get("name", "")), str(_dict(ns.get("status")).get("phase") or "Active"),
            age(_md(ns).get("creationTimestamp"), opts.now)]


def _node_row(node: Obj, opts: TableOptions) -> Row:
    status = _dict(node.get("status"))
    info = _dict(status.get("nodeInfo"))
    row = [str(_md(node).get("name", "")), node_status(node), node_roles(node),
           age(_md(node).get("creationTimestamp"), opts.now), _or_none(info.get("kubeletVersion"))]
    if opts.wide:
        capacity = _dict(status.get("capacity"))
        row += [_or_none(_node_address(node, "InternalIP")), _or_none(info.get("kernelVersion")),
                _or_none(capacity.get("cpu")), _or_none(capacity.get("memory"))]
    return row


_COLUMNS: dict[str, tuple[list[str], list[str]]] = {
    "Pod": (["NAME", "READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE"]),
    "Deployment": (["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], ["CONTAINERS", "IMAGES", "SELECTOR"]),
    "Node": (["NAME", "STATUS", "ROLES", "AGE", "VERSION"], ["INTERNAL-IP", "KERNEL-VERSION", "CPU", "MEMORY"]),
    "Lease": (["NAME", "HOLDER", "AGE"], []),
    # kubectl's wide columns sit before MESSAGE, which stays last.
    "Event": (["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], []),
    "PriorityClass": (["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"], []),
    "Namespace": (["NAME", "STATUS", "AGE"], []),
}
_EVENT_WIDE = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE", "FIRST SEEN", "COUNT", "NAME", "MESSAGE"]
_ROWS: dict[str, Callable[[Obj, TableOptions], Row]] = {
    "Pod": _pod_row, "Deployment": _deployment_row, "Node": _node_row, "Lease": _lease_row,
    "Event": _event_row, "PriorityClass": _priority_class_row, "Namespace": _namespace_row,
}


def _generic_row(obj: Obj, opts: TableOptions) -> Row:
    return [str(_md(obj).get("name", "")), age(_md(obj).get("creationTimestamp"), opts.now)]


def table_header(kind: str, opts: TableOptions = TableOptions()) -> Row:
    base, wide = _COLUMNS.get(kind, (["NAME", "AGE"], []))
    header = list(base) + (list(wide) if opts.wide else [])
    if kind == "Event" and opts.wide:
        header = list(_EVENT_WIDE)
    return (["NAMESPACE"] + header) if opts.all_namespaces else header


def table_row(kind: str, obj: Obj, opts: TableOptions = TableOptions()) -> Row:
    row = _ROWS.get(kind, _generic_row)(obj, opts)
    return ([str(_md(obj).get("namespace", ""))] + row) if opts.all_namespaces else row


class TableWriter:
    """Lays out rows like kubectl's table printer, remembering column widths between calls.

    ``--watch`` prints the header and the first rows, then one row per change;
    remembering the widths keeps those later rows in the columns already on screen
    (a cell too wide for its column just pushes the rest of its line along).
    """

    def __init__(self) -> None:
        self.widths: list[int] = []

    def render(self, rows: Sequence[Row]) -> str:
        for row in rows:
            for i, cell in enumerate(row[:-1]):
                w = max(TABLE_MIN_WIDTH, len(cell) + TABLE_PADDING)
                if i >= len(self.widths):
                    self.widths.append(w)
                elif w > self.widths[i]:
                    self.widths[i] = w
        lines = []
        for row in rows:
            cells = [cell.ljust(self.widths[i]) for i, cell in enumerate(row[:-1])]
            lines.append("".join(cells) + (row[-1] if row else ""))
        return "\n".join(lines)


def table(kind: str, objects: Iterable[Obj], opts: TableOptions = TableOptions()) -> str:
    """The ``get`` table (header and one row per object), without a trailing newline."""
    rows = [table_header(kind, opts)] + [table_row(kind, o, opts) for o in objects]
    return TableWriter().render(rows)


# --- -o json / yaml / name ---------------------------------------------------


def as_list(objects: Sequence[Obj]) -> Obj:
    return {"apiVersion": "v1", "kind": "List", "items": list(objects)}


def to_json(obj: Any) -> str:
    # kubectl indents JSON by four spaces.
    return json.dumps(obj, indent=4, ensure_ascii=False)


def to_yaml(obj: Any) -> str:
    # Field order as the server sent it (apiVersion, kind, metadata, spec, status) reads best.
    text: str = yaml.safe_dump(obj, default_flow_style=False, sort_keys=False, allow_unicode=True)
    return text.rstrip("\n")


# --- describe ----------------------------------------------------------------


class _Page:
    """kubectl's PrefixWriter: lines with an indentation level (two spaces each), tab-aligned at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, level: int, text: str) -> None:
        self.lines.append("  " * level + text)

    def labels(self, title: str, labels: Any, level: int = 0) -> None:
        items = sorted(_dict(labels).items())
        if not items:
            self.write(level, f"{title}:\t{NONE}")
            return
        for i, (k, v) in enumerate(items):
            self.write(level, f"{title}:\t{k}={v}" if i == 0 else f"\t{k}={v}")

    def annotations(self, title: str, annotations: Any, level: int = 0) -> None:
        items = sorted((k, v) for k, v in _dict(annotations).items() if not k.endswith(LAST_APPLIED_SUFFIX))
        if not items:
            self.write(level, f"{title}:\t{NONE}")
            return
        for i, (k, v) in enumerate(items):
            lead = f"{title}:\t" if i == 0 else "\t"
            value = str(v).rstrip("\n")
            if len(value) + len(k) + 2 > MAX_ANNOTATION_LEN or "\n" in value:
                self.write(level, f"{lead}{k}:")
                for part in value.split("\n"):
                    short = part if len(part) <= MAX_ANNOTATION_LEN - 2 else part[: MAX_ANNOTATION_LEN - 5] + "..."
                    self.write(level, f"\t  {short}")
            else:
                self.write(level, f"{lead}{k}: {value}")

    def render(self) -> str:
        return tabwrite("\n".join(self.lines)) + "\n"


def _describe_probe(probe: Any) -> str:
    p = _dict(probe)
    attrs = (f"delay={_int(p.get('initialDelaySeconds'))}s timeout={_int(p.get('timeoutSeconds'), 1)}s "
             f"period={_int(p.get('periodSeconds'), 10)}s #success={_int(p.get('successThreshold'), 1)} "
             f"#failure={_int(p.get('failureThreshold'), 3)}")
    if isinstance(p.get("exec"), dict):
        return f"exec [{' '.join(str(c) for c in _list(p['exec'].get('command')))}] {attrs}"
    if isinstance(p.get("httpGet"), dict):
        h = p["httpGet"]
        scheme = str(h.get("scheme") or "HTTP").lower()
        path = str(h.get("path") or "")
        return f"http-get {scheme}://{h.get('host', '')}:{h.get('port', '')}{path} {attrs}"
    if isinstance(p.get("tcpSocket"), dict):
        t = p["tcpSocket"]
        return f"tcp-socket {t.get('host', '')}:{t.get('port', '')} {attrs}"
    return f"unknown {attrs}"


def _describe_state(page: _Page, title: str, state: Any) -> None:
    s = _dict(state)
    if isinstance(s.get("running"), dict):
        page.write(2, f"{title}:\tRunning")
        page.write(3, f"Started:\t{rfc1123z(s['running'].get('startedAt'))}")
    elif isinstance(s.get("terminated"), dict):
        t = s["terminated"]
        page.write(2, f"{title}:\tTerminated")
        if t.get("reason"):
            page.write(3, f"Reason:\t{t['reason']}")
        if t.get("message"):
            page.write(3, f"Message:\t{t['message']}")
        page.write(3, f"Exit Code:\t{_int(t.get('exitCode'))}")
        if _int(t.get("signal")):
            page.write(3, f"Signal:\t{_int(t.get('signal'))}")
        page.write(3, f"Started:\t{rfc1123z(t.get('startedAt'))}")
        page.write(3, f"Finished:\t{rfc1123z(t.get('finishedAt'))}")
    else:
        w = _dict(s.get("waiting"))
        page.write(2, f"{title}:\tWaiting")
        if w.get("reason"):
            page.write(3, f"Reason:\t{w['reason']}")
        if w.get("message"):
            page.write(3, f"Message:\t{w['message']}")


def _ports(container: dict[str, Any], field: str) -> str:
    ports = [_dict(p) for p in _list(container.get("ports"))]
    # Every container port is listed; a host port only where one is set.
    text = [f"{_int(p.get(field))}/{p.get('protocol') or 'TCP'}" for p in ports
            if field in p or field == "containerPort"]
    return ", ".join(text) or NONE


def _describe_containers(page: _Page, title: str, containers: Any, statuses: Any, space: str = "") -> None:
    by_name = {str(_dict(s).get("name")): _dict(s) for s in _list(statuses)}
    page.write(0, f"{space}{title}:")
    name_indent = " " if space else ""
    for raw in _list(containers):
        c = _dict(raw)
        st = by_name.get(str(c.get("name")))
        page.write(1, f"{name_indent}{c.get('name', '')}:")
        if st is not None:
            page.write(2, f"Container ID:\t{st.get('containerID', '')}")
        page.write(2, f"Image:\t{c.get('image', '')}")
        if st is not None:
            page.write(2, f"Image ID:\t{st.get('imageID', '')}")
        ports = _ports(c, "containerPort")
        page.write(2, f"{'Ports' if ',' in ports else 'Port'}:\t{ports}")
        host_ports = _ports(c, "hostPort")
        page.write(2, f"{'Host Ports' if ',' in host_ports else 'Host Port'}:\t{host_ports}")
        for field, label in (("command", "Command"), ("args", "Args")):
            values = _list(c.get(field))
            if values:
                page.write(2, f"{label}:")
                for v in values:
                    for part in str(v).split("\n"):
                        page.write(3, part)
        if st is not None:
            _describe_state(page, "State", st.get("state"))
            if isinstance(_dict(st.get("lastState")).get("terminated"), dict):
                _describe_state(page, "Last State", st.get("lastState"))
            page.write(2, f"Ready:\t{_bool(st.get('ready'))}")
            page.write(2, f"Restart Count:\t{_int(st.get('restartCount'))}")
        resources = _dict(c.get("resources"))
        for field, label in (("limits", "Limits"), ("requests", "Requests")):
            amounts = _dict(resources.get(field))
            if amounts:
                page.write(2, f"{label}:")
                for k, v in sorted(amounts.items()):
                    page.write(3, f"{k}:\t{v}")
        for field, label in (("livenessProbe", "Liveness"), ("readinessProbe", "Readiness"),
                             ("startupProbe", "Startup")):
            if isinstance(c.get(field), dict):
                page.write(2, f"{label}:\t{_describe_probe(c[field])}")
        env = [_dict(e) for e in _list(c.get("env"))]
        page.write(2, "Environment:" + ("" if env else f"\t{NONE}"))
        for e in env:
            if "valueFrom" in e:
                page.write(3, f"{e.get('name', '')}:\t{_value_from(e['valueFrom'])}")
                continue
            for i, part in enumerate(str(e.get("value", "")).split("\n")):
                page.write(3, f"{e.get('name', '')}:\t{part}" if i == 0 else f"\t{part}")
        mounts = [_dict(m) for m in _list(c.get("volumeMounts"))]
        if not mounts:
            page.write(2, f"Mounts:\t{NONE}")
        else:
            page.write(2, "Mounts:")
            for m in mounts:
                mode = "ro" if m.get("readOnly") else "rw"
                page.write(3, f"{m.get('mountPath', '')} from {m.get('name', '')} ({mode})")


def _value_from(value_from: Any) -> str:
    vf = _dict(value_from)
    if isinstance(vf.get("fieldRef"), dict):
        ref = vf["fieldRef"]
        return f"({ref.get('apiVersion', 'v1')}:{ref.get('fieldPath', '')})"
    return json.dumps(vf, sort_keys=True)


def _describe_volumes(page: _Page, volumes: Any, space: str = "") -> None:
    vols = [_dict(v) for v in _list(volumes)]
    if not vols:
        page.write(0, f"{space}Volumes:\t{NONE}")
        return
    page.write(0, f"{space}Volumes:")
    for v in vols:
        page.write(1, f"{space}{v.get('name', '')}:")
        kinds = [k for k in v if k != "name"]
        page.write(2, f"{space}Type:\t{kinds[0] if kinds else NONE}")
        for k in kinds:
            for field, value in sorted(_dict(v[k]).items()):
                page.write(2, f"{space}{field[:1].upper()}{field[1:]}:\t{value}")


def _tolerations(page: _Page, title: str, tolerations: Any) -> None:
    items = [_dict(t) for t in _list(tolerations)]
    if not items:
        page.write(0, f"{title}:\t{NONE}")
        return
    for i, t in enumerate(items):
        text = str(t.get("key", ""))
        if t.get("value"):
            text += f"={t['value']}"
        if t.get("effect"):
            text += f":{t['effect']}"
        if t.get("operator") == "Exists" and not t.get("value"):
            text += " op=Exists" if t.get("key") else "op=Exists"
        if t.get("tolerationSeconds") is not None:
            text += f" for {_int(t['tolerationSeconds'])}s"
        page.write(0, f"{title}:\t{text}" if i == 0 else f"\t{text}")


def _qos_class(pod: Obj) -> str:
    """Guaranteed, Burstable or BestEffort, by Kubernetes' rules (requests default to limits)."""
    status = _dict(pod.get("status"))
    if status.get("qosClass"):
        return str(status["qosClass"])
    containers = [_dict(c) for c in _list(_dict(pod.get("spec")).get("containers"))]
    any_set = False
    guaranteed = bool(containers)
    for c in containers:
        res = _dict(c.get("resources"))
        limits, requests = _dict(res.get("limits")), _dict(res.get("requests"))
        if limits or requests:
            any_set = True
        for name in ("cpu", "memory"):
            limit = limits.get(name)
            request = requests.get(name, limit)
            if limit is None or not _same_quantity(name, request, limit):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _same_quantity(name: str, a: Any, b: Any) -> bool:
    q = _quantity_funcs()
    if q is not None:
        try:
            parse = q[0] if name == "cpu" else q[1]
            return bool(parse(str(a)) == parse(str(b)))
        except (ValueError, TypeError):
            pass
    return str(a) == str(b)


def _describe_events(page: _Page, events: Sequence[Obj] | None, now: datetime.datetime | None) -> None:
    """kubectl's DescribeEvents: the object's Events, oldest last-seen first."""
    if not events:
        page.write(0, f"Events:\t{NONE}")
        return
    page.write(0, "Events:")
    page.write(1, "Type\tReason\tAge\tFrom\tMessage")
    page.write(1, "----\t------\t----\t----\t-------")
    for ev in sorted(events, key=event_sort_key):
        page.write(1, f"{ev.get('type', '')}\t{ev.get('reason', '')}\t{event_interval(ev, now)}\t"
                      f"{_event_source(_dict(ev.get('source')))}\t{str(ev.get('message', '')).strip()}")


def describe_pod(pod: Obj, events: Sequence[Obj] | None = None, now: datetime.datetime | None = None) -> str:
    md, spec, status = _md(pod), _dict(pod.get("spec")), _dict(pod.get("status"))
    page = _Page()
    page.write(0, f"Name:\t{md.get('name', '')}")
    page.write(0, f"Namespace:\t{md.get('namespace', '')}")
    if spec.get("priority") is not None:
        page.write(0, f"Priority:\t{spec['priority']}")
    if spec.get("serviceAccountName"):
        page.write(0, f"Service Account:\t{spec['serviceAccountName']}")
    node = spec.get("nodeName")
    host_ip = status.get("hostIP")
    page.write(0, f"Node:\t{node}/{host_ip}" if node and host_ip else f"Node:\t{node or NONE}")
    if status.get("startTime"):
        page.write(0, f"Start Time:\t{rfc1123z(status['startTime'])}")
    page.labels("Labels", md.get("labels"))
    page.annotations("Annotations", md.get("annotations"))
    if md.get("deletionTimestamp"):
        page.write(0, f"Status:\tTerminating (since {rfc1123z(md['deletionTimestamp'])})")
        if md.get("deletionGracePeriodSeconds") is not None:
            page.write(0, f"Termination Grace Period:\t{_int(md['deletionGracePeriodSeconds'])}s")
    else:
        page.write(0, f"Status:\t{status.get('phase') or 'Unknown'}")
    reason, message = status.get("reason"), status.get("message")
    scheduled = _condition(pod, "PodScheduled")
    if not reason and not message and scheduled is not None and scheduled.get("status") != "True":
        # kubectl shows why a pod is Pending through its FailedScheduling event only;
        # the condition keeps the text after the event has expired, so show it too.
        reason, message = scheduled.get("reason"), scheduled.get("message")
    if reason:
        page.write(0, f"Reason:\t{reason}")
    if message:
        page.write(0, f"Message:\t{message}")
    ip = pod_ip(pod)
    page.write(0, f"IP:\t{ip}")
    ips = [str(_dict(i).get("ip")) for i in _list(status.get("podIPs")) if _dict(i).get("ip")] or ([ip] if ip else [])
    if ips:
        page.write(0, "IPs:")
        for i in ips:
            page.write(1, f"IP:\t{i}")
    else:
        page.write(0, f"IPs:\t{NONE}")
    controller = next((_dict(r) for r in _list(md.get("ownerReferences")) if _dict(r).get("controller")),
                      None) or next((_dict(r) for r in _list(md.get("ownerReferences"))), None)
    if controller:
        page.write(0, f"Controlled By:\t{controller.get('kind', '')}/{controller.get('name', '')}")
    if spec.get("initContainers"):
        _describe_containers(page, "Init Containers", spec.get("initContainers"), status.get("initContainerStatuses"))
    _describe_containers(page, "Containers", spec.get("containers"), status.get("containerStatuses"))
    conditions = [_dict(c) for c in _list(status.get("conditions"))]
    if conditions:
        page.write(0, "Conditions:")
        page.write(1, "Type\tStatus")
        for c in conditions:
            page.write(1, f"{c.get('type', '')} \t{c.get('status', '')} ")
    _describe_volumes(page, spec.get("volumes"))
    page.write(0, f"QoS Class:\t{_qos_class(pod)}")
    page.labels("Node-Selectors", spec.get("nodeSelector"))
    _tolerations(page, "Tolerations", spec.get("tolerations"))
    _describe_events(page, events, now)
    return page.render()


def describe_deployment(dep: Obj) -> str:
    md, spec, status = _md(dep), _dict(dep.get("spec")), _dict(dep.get("status"))
    page = _Page()
    page.write(0, f"Name:\t{md.get('name', '')}")
    page.write(0, f"Namespace:\t{md.get('namespace', '')}")
    page.write(0, f"CreationTimestamp:\t{rfc1123z(md.get('creationTimestamp'))}")
    page.labels("Labels", md.get("labels"))
    page.annotations("Annotations", md.get("annotations"))
    page.write(0, f"Selector:\t{selector_string(spec.get('selector')) or NONE}")
    page.write(0, f"Replicas:\t{_int(spec.get('replicas'), 1)} desired | {_int(status.get('updatedReplicas'))} updated"
                  f" | {_int(status.get('replicas'))} total | {_int(status.get('availableReplicas'))} available"
                  f" | {_int(status.get('unavailableReplicas'))} unavailable")
    strategy = _dict(spec.get("strategy"))
    strategy_type = str(strategy.get("type") or "RollingUpdate")
    page.write(0, f"StrategyType:\t{strategy_type}")
    page.write(0, f"MinReadySeconds:\t{_int(spec.get('minReadySeconds'))}")
    if strategy_type == "RollingUpdate":
        ru = _dict(strategy.get("rollingUpdate"))
        page.write(0, f"RollingUpdateStrategy:\t{ru.get('maxUnavailable', '25%')} max unavailable, "
                      f"{ru.get('maxSurge', '25%')} max surge")
    template = _dict(spec.get("template"))
    tspec = _dict(template.get("spec"))
    page.write(0, "Pod Template:")
    page.labels("  Labels", _md(template).get("labels"))
    if _md(template).get("annotations"):
        page.annotations("  Annotations", _md(template).get("annotations"))
    if tspec.get("initContainers"):
        _describe_containers(page, "Init Containers", tspec.get("initContainers"), None, "  ")
    _describe_containers(page, "Containers", tspec.get("containers"), None, "  ")
    _describe_volumes(page, tspec.get("volumes"), "  ")
    if tspec.get("nodeSelector"):
        page.labels("  Node-Selectors", tspec.get("nodeSelector"))
    if tspec.get("tolerations"):
        _tolerations(page, "  Tolerations", tspec.get("tolerations"))
    conditions = [_dict(c) for c in _list(status.get("conditions"))]
    if conditions:
        page.write(0, "Conditions:")
        page.write(1, "Type\tStatus\tReason")
        page.write(1, "----\t------\t------")
        for c in conditions:
            page.write(1, f"{c.get('type', '')} \t{c.get('status', '')}\t{c.get('reason', '')}")
    page.write(0, f"Events:\t{NONE}")
    return page.render()


_NODE_INFO = (
    ("machineID", "Machine ID"), ("systemUUID", "System UUID"), ("bootID", "Boot ID"),
    ("kernelVersion", "Kernel Version"), ("osImage", "OS Image"), ("operatingSystem", "Operating System"),
    ("architecture", "Architecture"), ("containerRuntimeVersion", "Container Runtime Version"),
    ("kubeletVersion", "Kubelet Version"), ("kubeProxyVersion", "Kube-Proxy Version"),
)


def _title_words(key: str) -> str:
    """``cgroupDriver`` → ``Cgroup Driver``, for nodeInfo fields kubectl has no label for."""
    out = ""
    for ch in key:
        out += f" {ch}" if ch.isupper() and out else ch
    return out[:1].upper() + out[1:]


QuantityFuncs = tuple[Callable[[str], Any], Callable[[str], Any], Callable[[Any], str], Callable[[Any], str]]


def _quantity_funcs() -> QuantityFuncs | None:
    """``(parse_cpu, parse_memory, format_cpu, format_memory)``, or None before that module exists."""
    try:
        from apimachinery.quantity import (
            format_cpu,
            format_memory,
            parse_cpu,
            parse_memory,
        )
    except ImportError:
        return None
    return parse_cpu, parse_memory, format_cpu, format_memory


def _pod_resources(pod: Obj, parse: Callable[[str], Any], name: str) -> tuple[Any, Any]:
    """Summed (requests, limits) of one resource over a pod's containers; requests default to limits."""
    req: Any = 0
    lim: Any = 0
    for c in _list(_dict(pod.get("spec")).get("containers")):
        res = _dict(_dict(c).get("resources"))
        limit = _dict(res.get("limits")).get(name)
        request = _dict(res.get("requests")).get(name, limit)
        if request is not None:
            req += parse(str(request))
        if limit is not None:
            lim += parse(str(limit))
    return req, lim


def _pct(value: Any, total: Any) -> int:
    return int(value / total * 100) if total else 0


def describe_node(node: Obj, pods: Sequence[Obj] | None = None, now: datetime.datetime | None = None) -> str:
    """The node page; with ``pods`` (every pod bound to it) also its pods and allocated resources."""
    md, spec, status = _md(node), _dict(node.get("spec")), _dict(node.get("status"))
    page = _Page()
    page.write(0, f"Name:\t{md.get('name', '')}")
    page.write(0, f"Roles:\t{node_roles(node)}")
    page.labels("Labels", md.get("labels"))
    page.annotations("Annotations", md.get("annotations"))
    page.write(0, f"CreationTimestamp:\t{rfc1123z(md.get('creationTimestamp'))}")
    taints = [_dict(t) for t in _list(spec.get("taints"))]
    if not taints:
        page.write(0, f"Taints:\t{NONE}")
    for i, t in enumerate(taints):
        text = f"{t.get('key', '')}" + (f"={t['value']}" if t.get("value") else "") + f":{t.get('effect', '')}"
        page.write(0, f"Taints:\t{text}" if i == 0 else f"\t{text}")
    page.write(0, f"Unschedulable:\t{'true' if spec.get('unschedulable') else 'false'}")
    conditions = [_dict(c) for c in _list(status.get("conditions"))]
    if conditions:
        page.write(0, "Conditions:")
        page.write(1, "Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage")
        page.write(1, "----\t------\t-----------------\t------------------\t------\t-------")
        for c in conditions:
            page.write(1, f"{c.get('type', '')} \t{c.get('status', '')} \t{rfc1123z(c.get('lastHeartbeatTime'))} \t"
                          f"{rfc1123z(c.get('lastTransitionTime'))} \t{c.get('reason', '')} \t{c.get('message', '')}")
    addresses = [_dict(a) for a in _list(status.get("addresses"))]
    if addresses:
        page.write(0, "Addresses:")
        for a in addresses:
            page.write(1, f"{a.get('type', '')}:\t{a.get('address', '')}")
    for field, label in (("capacity", "Capacity"), ("allocatable", "Allocatable")):
        values = _dict(status.get(field))
        if values:
            page.write(0, f"{label}:")
            for k, v in sorted(values.items()):
                page.write(1, f"{k}:\t{v}")
    info = _dict(status.get("nodeInfo"))
    if info:
        page.write(0, "System Info:")
        known = {k for k, _ in _NODE_INFO}
        for key, label in _NODE_INFO:
            if key in info:
                page.write(1, f"{label}:\t{info[key]}")
        for key in sorted(set(info) - known):
            page.write(1, f"{_title_words(key)}:\t{info[key]}")
    cidrs = [str(c) for c in _list(spec.get("podCIDRs"))] or ([str(spec["podCIDR"])] if spec.get("podCIDR") else [])
    if cidrs:
        page.write(0, f"PodCIDR:\t{cidrs[0]}")
        page.write(0, f"PodCIDRs:\t{','.join(cidrs)}")
    if pods is not None:
        _describe_node_pods(page, node, pods, now)
    page.write(0, f"Events:\t{NONE}")
    return page.render()


def _describe_node_pods(page: _Page, node: Obj, pods: Sequence[Obj], now: datetime.datetime | None) -> None:
    running = [p for p in pods if _dict(p.get("status")).get("phase") not in ("Succeeded", "Failed")]
    page.write(0, f"Non-terminated Pods:\t({len(running)} in total)")
    q = _quantity_funcs()
    allocatable = _dict(_dict(node.get("status")).get("allocatable"))
    if q is None:
        page.write(1, "Namespace\tName\tAge")
        page.write(1, "---------\t----\t---")
        for p in running:
            page.write(1, f"{_md(p).get('namespace', '')}\t{_md(p).get('name', '')}\t"
                          f"{age(_md(p).get('creationTimestamp'), now)}")
        return
    parse_cpu, parse_memory, format_cpu, format_memory = q
    try:
        alloc_cpu = parse_cpu(str(allocatable.get("cpu", "0")))
        alloc_mem = parse_memory(str(allocatable.get("memory", "0")))
        rows = []
        totals: list[Any] = [0, 0, 0, 0]
        for p in running:
            cpu_req, cpu_lim = _pod_resources(p, parse_cpu, "cpu")
            mem_req, mem_lim = _pod_resources(p, parse_memory, "memory")
            for i, v in enumerate((cpu_req, cpu_lim, mem_req, mem_lim)):
                totals[i] += v
            rows.append(f"{_md(p).get('namespace', '')}\t{_md(p).get('name', '')}\t\t"
                        f"{format_cpu(cpu_req)} ({_pct(cpu_req, alloc_cpu)}%)\t"
                        f"{format_cpu(cpu_lim)} ({_pct(cpu_lim, alloc_cpu)}%)\t"
                        f"{format_memory(mem_req)} ({_pct(mem_req, alloc_mem)}%)\t"
                        f"{format_memory(mem_lim)} ({_pct(mem_lim, alloc_mem)}%)\t"
                        f"{age(_md(p).get('creationTimestamp'), now)}")
    except (ValueError, TypeError):
        return  # a quantity we cannot read: leave the section out rather than print nonsense
    page.write(1, "Namespace\tName\t\tCPU Requests\tCPU Limits\tMemory Requests\tMemory Limits\tAge")
    page.write(1, "---------\t----\t\t------------\t----------\t---------------\t-------------\t---")
    for r in rows:
        page.write(1, r)
    page.write(0, "Allocated resources:")
    page.write(0, "  (Total limits may be over 100 percent, i.e., overcommitted.)")
    page.write(1, "Resource\tRequests\tLimits")
    page.write(1, "--------\t--------\t------")
    page.write(1, f"cpu\t{format_cpu(totals[0])} ({_pct(totals[0], alloc_cpu)}%)\t"
                  f"{format_cpu(totals[1])} ({_pct(totals[1], alloc_cpu)}%)")
    page.write(1, f"memory\t{format_memory(totals[2])} ({_pct(totals[2], alloc_mem)}%)\t"
                  f"{format_memory(totals[3])} ({_pct(totals[3], alloc_mem)}%)")


def describe(obj: Obj, *, node_pods: Sequence[Obj] | None = None, now: datetime.datetime | None = None,
             events: Sequence[Obj] | None = None) -> str:
    """The describe page for any object; a generic one for kinds without a describer.
    ``events``: the Events about the object, shown at the end of a Pod's page."""
    kind = obj.get("kind")
    if kind == "Pod":
        return describe_pod(obj, events, now)
    if kind == "Deployment":
        return describe_deployment(obj)
    if kind == "Node":
        return describe_node(obj, node_pods, now)
    page = _Page()
    page.write(0, f"Name:\t{_md(obj).get('name', '')}")
    if _md(obj).get("namespace"):
        page.write(0, f"Namespace:\t{_md(obj)['namespace']}")
    page.labels("Labels", _md(obj).get("labels"))
    return page.render() + to_yaml(obj) + "\n"


# --- lab status ----------------------------------------------------------------


def lab_status(status: Mapping[str, Any], *, config: str | None = None) -> str:
    """``orchctl lab status``: where the lab is, then one line per process and where its log is."""
    def state(proc: Mapping[str, Any]) -> str:
        if not proc or proc.get("pid") in (None, 0, ""):
            return "stopped"
        return "running" if proc.get("alive") else "dead"

    rows: list[Row] = [["COMPONENT", "PID", "STATE", "ADDRESS", "METRICS", "LOG"]]
    etcd_proc = _dict(status.get("etcd_process"))
    rows.append(["etcd", str(etcd_proc.get("pid") or "-"), state(etcd_proc), str(status.get("etcd") or "-"), "-",
                 str(etcd_proc.get("log") or "-")])
    schedulers = _list(status.get("schedulers")) if "schedulers" in status else [
        {"name": "scheduler", **_dict(status.get("scheduler"))}]
    for s in schedulers:
        sched = _dict(s)
        # The leader's state says so: only it schedules and runs the controllers.
        running = state(sched) + (",leader" if sched.get("leader") and state(sched) == "running" else "")
        rows.append([str(sched.get("name") or "scheduler"), str(sched.get("pid") or "-"), running,
                     str(sched.get("address") or "-"), str(sched.get("metrics") or "-"), str(sched.get("log") or "-")])
    for a in _list(status.get("agents")):
        agent = _dict(a)
        rows.append([f"agent/{agent.get('node', '?')}", str(agent.get("pid") or "-"), state(agent),
                     str(agent.get("address") or "-"), str(agent.get("metrics") or "-"), str(agent.get("log") or "-")])
    head = [f"server:   {status.get('server') or NONE}", f"lab dir:  {status.get('lab_dir', '')}"]
    if "leader" in status:
        leader = _dict(status.get("leader"))
        head.append(f"leader:   {leader.get('holder') or NONE}"
                    + (f" (since {leader['since']})" if leader.get("since") else ""))
    if config is not None:
        head.append(f"config:   {config}")
    sd = [str(u) for u in _list(status.get("sd_urls"))]
    if sd:
        # One http_sd_configs entry with any of these finds every agent and scheduler.
        head.append(f"metrics:  Prometheus HTTP SD at {sd[0]}" + (f" (or {', '.join(sd[1:])})" if sd[1:] else ""))
    return "\n".join(head) + "\n\n" + TableWriter().render(rows)


# --- orchctl top ------------------------------------------------------------------------------


def _top_memory(n: int) -> str:
    return f"{n // (1024 * 1024)}Mi"  # kubectl top prints whole mebibytes


def top_nodes_table(entries: Sequence[Any], nodes: Mapping[str, Obj]) -> str:
    """kubectl top node's table; the percentages are of the node's allocatable, as kubectl's."""
    rows: list[Row] = [["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]]
    for e in sorted(entries, key=lambda e: e.name):
        alloc = _dict(_dict(nodes.get(e.name, {}).get("status")).get("allocatable"))
        try:
            cpu_pct = f"{100 * e.cpu_millis // parse_cpu(alloc['cpu'])}%"
            mem_pct = f"{100 * e.memory_bytes // parse_memory(alloc['memory'])}%"
        except (KeyError, ZeroDivisionError, QuantityError):
            cpu_pct = mem_pct = UNKNOWN
        rows.append([e.name, f"{e.cpu_millis}m", cpu_pct, _top_memory(e.memory_bytes), mem_pct])
    return TableWriter().render(rows)


def top_pods_table(entries: Sequence[Any], *, all_namespaces: bool, containers: bool) -> str:
    """kubectl top pod's table: one row per pod (its containers summed), or per container."""
    sums: dict[tuple[str, str, str], list[int]] = {}
    for e in entries:
        key = (e.namespace, e.name, e.container if containers else "")
        total = sums.setdefault(key, [0, 0])
        total[0] += e.cpu_millis
        total[1] += e.memory_bytes
    head = (["NAMESPACE"] if all_namespaces else []) + (["POD", "NAME"] if containers else ["NAME"])
    rows: list[Row] = [head + ["CPU(cores)", "MEMORY(bytes)"]]
    for (ns, pod, container), (cpu, mem) in sorted(sums.items()):
        rows.append(([ns] if all_namespaces else []) + ([pod, container] if containers else [pod])
                    + [f"{cpu}m", _top_memory(mem)])
    return TableWriter().render(rows)
