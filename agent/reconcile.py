"""The agent's pure core: desired pods + containers on disk → actions, and pod status.

``plan`` compares what the scheduler wants on this node with what the runtime
reports, and returns the actions that converge them. ``pod_status`` derives the
status a pod reports from its containers. Neither does I/O, so both are tested
without a kernel, and the agent loop that executes them stays thin.

Container restarts follow Kubernetes: ``restartPolicy`` Always / OnFailure / Never,
with a back-off of 10 s doubling to 5 min (CrashLoopBackOff), reset after a
container ran for 10 minutes.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any

from agent.runtime.runtime import ContainerState, ContainerStatus
from apimachinery.meta import Obj, parse_rfc3339

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0


@dataclass(slots=True)
class ContainerRecord:
    """What the agent remembers of one container of a pod beyond the runtime's state."""

    restart_count: int = 0
    last_error: str | None = None  # why the last start failed before the process ran
    last_error_at: float | None = None
    last_error_reason: str | None = None  # the waiting reason it shows: ErrImagePull, CreateContainerError …
    start_failures: int = 0  # failed starts in a row (they back off, but are not restarts)


@dataclass(slots=True)
class PodRecord:
    """The agent's memory of a pod, persisted beside the runtime's state."""

    pod: Obj
    containers: dict[str, ContainerRecord] = field(default_factory=dict)
    start_time: str | None = None
    # The pod's address on the node's pod network (None: not attached yet, or no network).
    # Kept here so status needs no kernel call and survives an agent restart.
    pod_ip: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "startTime": self.start_time,
            "podIP": self.pod_ip,
            "containers": {n: {"restartCount": c.restart_count, "lastError": c.last_error,
                               "lastErrorAt": c.last_error_at, "lastErrorReason": c.last_error_reason,
                               "startFailures": c.start_failures}
                           for n, c in self.containers.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PodRecord:
        return cls(
            pod=data["pod"],
            start_time=data.get("startTime"),
            pod_ip=data.get("podIP"),
            containers={n: ContainerRecord(c.get("restartCount", 0), c.get("lastError"), c.get("lastErrorAt"),
                                           c.get("lastErrorReason"), c.get("startFailures", 0))
                        for n, c in data.get("containers", {}).items()},
        )


# --- actions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartContainer:
    pod_uid: str
    container: str
    restart: bool  # a restart of an exited instance (counts in restartCount)


@dataclass(frozen=True, slots=True)
class StopContainer:
    pod_uid: str
    container_id: str
    grace: float


@dataclass(frozen=True, slots=True)
class RemoveContainer:
    pod_uid: str
    container_id: str


@dataclass(frozen=True, slots=True)
class RemovePod:
    """Every container of the pod is removed: drop its cgroup and record, report it gone."""

    pod_uid: str


Action = StartContainer | StopContainer | RemoveContainer | RemovePod


def uid_of(pod: Obj) -> str:
    return str(pod["metadata"]["uid"])


def _ts(text: str | None) -> float | None:
    return parse_rfc3339(text).timestamp() if text else None


def instances(states: list[ContainerState], name: str) -> list[ContainerState]:
    """The runtime's instances of one container, oldest first.

    Only one instance of a container is ever live (the next starts after the last
    exited), so a live one is the newest and exited ones go by when they finished.
    Start times alone cannot order them: they have whole seconds (a crash and its
    immediate restart share one) and an instance that failed to start has none.
    """
    return sorted((s for s in states if s.config.name == name),
                  key=lambda s: (s.status is not ContainerStatus.EXITED, s.finished_at or "", s.started_at or "",
                                 s.config.id))


def backoff(restarts_done: int) -> float:
    """Delay before the next start: the first restart is immediate, then 10 s doubling to 5 min."""
    return 0.0 if restarts_done <= 0 else min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (restarts_done - 1))


def wants_restart(policy: str, exit_code: int | None) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def restart_due(state: ContainerState, record: ContainerRecord, now: float) -> float:
    """Seconds until an exited container may start again (0: now)."""
    started, finished = _ts(state.started_at), _ts(state.finished_at)
    if finished is None:
        return 0.0
    if started is not None and finished - started >= BACKOFF_RESET_AFTER:
        return 0.0
    return max(0.0, finished + backoff(record.restart_count) - now)


def plan(desired: dict[str, Obj], records: dict[str, PodRecord], states: list[ContainerState],
         now: float, busy: set[str], orphans_allowed: bool,
         unhealthy: frozenset[str] | set[str] = frozenset(),
         sandboxes: frozenset[str] | set[str] = frozenset()) -> list[Action]:
    """Actions that move the node toward ``desired`` (pods by uid).

    ``busy`` holds the uids of pods with an action still running; they are skipped.
    ``orphans_allowed`` is False until the first assignment list has arrived, so a
    restarted agent never stops containers it simply has not heard about yet.
    ``unhealthy`` holds the ids of running containers whose liveness or startup probe
    failed: they are stopped (with the pod's grace period) and restart by policy.
    ``sandboxes`` holds the uids of pods that have something on the node besides
    containers (a sandbox's namespaces, a network address): one of a pod that is
    neither desired nor known otherwise (an agent that died between making it and
    writing or after dropping the pod's record) is removed too.
    """
    by_pod: dict[str, list[ContainerState]] = {}
    for s in states:
        by_pod.setdefault(s.config.pod_uid, []).append(s)
    actions: list[Action] = []
    for uid, pod in desired.items():
        if uid in busy:
            continue
        mine = by_pod.get(uid, [])
        if pod["metadata"].get("deletionTimestamp"):
            actions.extend(_teardown(uid, mine, float(pod["metadata"].get("deletionGracePeriodSeconds", 30))))
            continue
        record = records.get(uid) or PodRecord(pod)
        policy = pod["spec"].get("restartPolicy", "Always")
        for c in pod["spec"]["containers"]:
            insts = instances(mine, c["name"])
            crec = record.containers.get(c["name"], ContainerRecord())
            # Keep the newest exited instance (for logs and lastState); drop older ones.
            exited = [s for s in insts if s.status is ContainerStatus.EXITED]
            for old in exited[:-1]:
                actions.append(RemoveContainer(uid, old.config.id))
            current = insts[-1] if insts else None
            if current is not None and current.status is ContainerStatus.RUNNING and current.config.id in unhealthy:
                grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
                actions.append(StopContainer(uid, current.config.id, grace))
                continue
            if current is None:
                # A start that failed before the process ran (an image pull, a bad config) backs
                # off like a crash, but is not a restart: restartCount counts processes that ran.
                if crec.last_error is None or now - (crec.last_error_at or 0) >= backoff(crec.start_failures):
                    actions.append(StartContainer(uid, c["name"], restart=False))
                continue
            if current.status is ContainerStatus.EXITED and wants_restart(policy, current.exit_code):
                if restart_due(current, crec, now) <= 0:
                    actions.append(StartContainer(uid, c["name"], restart=True))
    if orphans_allowed:
        for uid, mine in by_pod.items():
            if uid not in desired and uid not in busy:
                known = records.get(uid)
                grace = float(known.pod["spec"].get("terminationGracePeriodSeconds", 30) if known else 30)
                actions.extend(_teardown(uid, mine, grace))
        for uid in sorted(set(records) | set(sandboxes)):
            if uid not in desired and uid not in by_pod and uid not in busy:
                actions.append(RemovePod(uid))
    return actions


def _teardown(uid: str, mine: list[ContainerState], grace: float) -> list[Action]:
    running = [s for s in mine if s.status is not ContainerStatus.EXITED]
    if running:
        return [StopContainer(uid, s.config.id, grace) for s in running]
    return [*(RemoveContainer(uid, s.config.id) for s in mine), RemovePod(uid)]


# --- status --------------------------------------------------------------------


def _state_of(s: ContainerState) -> Obj:
    if s.status is ContainerStatus.EXITED:
        term: Obj = {"exitCode": s.exit_code if s.exit_code is not None else -1,
                     "reason": s.reason or "Error", "containerID": f"orch://{s.config.id}"}
        if s.started_at:
            term["startedAt"] = s.started_at
        if s.finished_at:
            term["finishedAt"] = s.finished_at
        if s.message:
            term["message"] = s.message
        return {"terminated": term}
    if s.status is ContainerStatus.RUNNING:
        return {"running": {"startedAt": s.started_at}}
    return {"waiting": {"reason": "ContainerCreating"}}


def pod_status(pod: Obj, record: PodRecord, states: list[ContainerState], now: float,
               host_ip: str | None = None, probes: dict[str, Any] | None = None) -> Obj:
    """The status this node reports for ``pod``, from its containers' states.

    ``host_ip`` is the node's address (``hostIP``/``hostIPs``); the pod's own address
    (``podIP``/``podIPs``) is the record's, once the pod's network is attached, and the
    node's for a hostNetwork pod.
    ``probes`` maps a container id to its ``agent.probes.ContainerProbes``. A running
    container without an entry has had no probe run yet: it is started and ready
    only if its spec declares no startup or readiness probe.
    """
    uid = uid_of(pod)
    mine = [s for s in states if s.config.pod_uid == uid]
    policy = pod["spec"].get("restartPolicy", "Always")
    statuses: list[Obj] = []
    running = terminal_ok = terminal_failed = 0
    for c in pod["spec"]["containers"]:
        insts = instances(mine, c["name"])
        crec = record.containers.get(c["name"], ContainerRecord())
        cur = insts[-1] if insts else None
        cs: Obj = {"name": c["name"], "image": c["image"], "imageID": "", "restartCount": crec.restart_count,
                   "ready": False, "started": False}
        if cur is None:
            reason = (crec.last_error_reason or "CreateContainerError") if crec.last_error else "ContainerCreating"
            if reason == "ErrImagePull" and crec.start_failures > 1:
                reason = "ImagePullBackOff"  # as the kubelet says once failed pulls are being retried
            cs["state"] = {"waiting": {"reason": reason, **({"message": crec.last_error} if crec.last_error else {})}}
        else:
            cs["containerID"] = f"orch://{cur.config.id}"
            state = _state_of(cur)
            if cur.status is ContainerStatus.EXITED and wants_restart(policy, cur.exit_code):
                # Exited and will start again: Kubernetes shows it waiting, the exit as lastState.
                cs["lastState"] = state
                cs["state"] = {"waiting": {"reason": "CrashLoopBackOff",
                                           "message": f"back-off restarting failed container {c['name']}"}}
            else:
                cs["state"] = state
                if len(insts) > 1:
                    cs["lastState"] = _state_of(insts[-2])
                if cur.status is ContainerStatus.RUNNING:
                    running += 1
                    checks = (probes or {}).get(cur.config.id)
                    if checks is not None:
                        cs["started"], cs["ready"] = checks.started, checks.ready
                    else:
                        # No probe has run yet: a container with a startup or readiness probe
                        # is not started/ready until one passes, as in the kubelet.
                        cs["started"] = "startupProbe" not in c
                        cs["ready"] = cs["started"] and "readinessProbe" not in c
                elif cur.status is ContainerStatus.EXITED:
                    if cur.exit_code == 0:
                        terminal_ok += 1
                    else:
                        terminal_failed += 1
        statuses.append(cs)
    total = len(statuses)
    if terminal_ok + terminal_failed == total:
        phase = "Succeeded" if terminal_failed == 0 else "Failed"
    elif any("running" in cs["state"] or "terminated" in cs["state"] or "lastState" in cs for cs in statuses):
        phase = "Running"
    else:
        phase = "Pending"
    all_ready = running == total and all(cs["ready"] for cs in statuses)
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def cond(kind: str, ok: bool, reason: str = "") -> Obj:
        c: Obj = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": stamp}
        if reason and not ok:
            c["reason"] = reason
        return c

    status: Obj = {
        "phase": phase,
        "conditions": [
            cond("Initialized", True),
            cond("ContainersReady", all_ready, "ContainersNotReady"),
            cond("Ready", all_ready, "ContainersNotReady"),
        ],
        "containerStatuses": statuses,
    }
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    # A hostNetwork pod is at the node's address, as the kubelet reports it.
    pod_ip = host_ip if pod["spec"].get("hostNetwork") is True else record.pod_ip
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if record.start_time:
        status["startTime"] = record.start_time
    return status


def same_status(a: Obj | None, b: Obj) -> bool:
    """Equal but for condition timestamps (which would otherwise differ on every pass)."""
    if a is None:
        return False

    def strip(s: Obj) -> Obj:
        return {**s, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                    for c in s.get("conditions", [])]}

    return strip(a) == strip(b)


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command and args; ``$$`` is a literal ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)
