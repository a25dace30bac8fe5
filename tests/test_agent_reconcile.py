"""The agent's pure core: ``plan`` (desired pods + containers on disk -> actions) and ``pod_status``.

Container states are the runtime's own frozen dataclasses (``ContainerState`` over a
``ContainerConfig``), built directly: no kernel, no shim, no mocks.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from agent.reconcile import (
    BACKOFF_MAX,
    Action,
    ContainerRecord,
    PodRecord,
    RemoveContainer,
    RemovePod,
    StartContainer,
    StopContainer,
    backoff,
    expand,
    plan,
    pod_status,
    same_status,
)
from agent.runtime.runtime import ContainerConfig, ContainerState, ContainerStatus
from agent.runtime.shim import rfc3339
from apimachinery.validation import validate

Obj = dict[str, Any]

T0 = 1_714_557_600.0  # 2024-05-01T10:00:00Z
_ids = itertools.count(1)


def make_pod(uid: str = "u1", containers: tuple[str, ...] = ("app",), *, restart_policy: str = "Always",
             deleting_grace: int | None = None, termination_grace: int | None = None) -> Obj:
    spec: Obj = {"containers": [{"name": n, "image": "host", "command": ["sleep", "1000"]} for n in containers],
                 "restartPolicy": restart_policy}
    if termination_grace is not None:
        spec["terminationGracePeriodSeconds"] = termination_grace
    pod = validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"pod-{uid}"}, "spec": spec})
    pod["metadata"].update(uid=uid, creationTimestamp=rfc3339(T0), resourceVersion="3")
    pod["spec"]["nodeName"] = "n1"
    if deleting_grace is not None:
        pod["metadata"].update(deletionTimestamp=rfc3339(T0 + 100), deletionGracePeriodSeconds=deleting_grace)
    return pod


def container(pod: Obj, name: str, status: ContainerStatus, *, cid: str | None = None,
              started: float | None = None, finished: float | None = None, exit_code: int | None = None,
              reason: str | None = None, message: str | None = None) -> ContainerState:
    md = pod["metadata"]
    cid = cid or f"{next(_ids):064x}"
    cfg = ContainerConfig(
        id=cid, pod_uid=md["uid"], pod_namespace=md["namespace"], pod_name=md["name"], name=name, image="host",
        argv=["sleep", "1000"], env={}, working_dir="", hostname=md["name"], memory_limit_bytes=None,
        cpu_limit_millis=None, cpu_request_millis=None, pids_limit=None,
    )
    if status is ContainerStatus.EXITED and exit_code is not None and reason is None:
        reason = "Completed" if exit_code == 0 else "Error"
    return ContainerState(
        config=cfg, status=status, pid=4242 if status is ContainerStatus.RUNNING else None,
        started_at=None if started is None else rfc3339(started),
        finished_at=None if finished is None else rfc3339(finished),
        exit_code=exit_code, reason=reason, message=message,
        log_path=f"/var/lib/orch/containers/{cid}/log", cgroup=f"pod{md['uid']}/{cid}",
    )


def running(pod: Obj, name: str = "app", started: float = T0, **kw: Any) -> ContainerState:
    return container(pod, name, ContainerStatus.RUNNING, started=started, **kw)


def exited(pod: Obj, name: str = "app", code: int = 1, started: float = T0, finished: float = T0 + 5,
           **kw: Any) -> ContainerState:
    return container(pod, name, ContainerStatus.EXITED, started=started, finished=finished, exit_code=code, **kw)


def record(pod: Obj, restarts: int = 0, name: str = "app", **kw: Any) -> PodRecord:
    return PodRecord(pod, {name: ContainerRecord(restart_count=restarts, **kw)}, start_time=rfc3339(T0))


def uid(pod: Obj) -> str:
    return str(pod["metadata"]["uid"])


def run_plan(pods: list[Obj], states: list[ContainerState], now: float = T0 + 1000, *,
             records: dict[str, PodRecord] | None = None, busy: set[str] | None = None,
             orphans_allowed: bool = True, sandboxes: set[str] | None = None) -> list[Action]:
    return plan({uid(p): p for p in pods}, records or {}, states, now, busy or set(), orphans_allowed,
                sandboxes=sandboxes or set())


# --- plan: starting and leaving alone -------------------------------------------------


def test_a_new_pod_starts_each_container() -> None:
    pod = make_pod(containers=("app", "sidecar"))
    assert run_plan([pod], []) == [StartContainer("u1", "app", restart=False),
                                   StartContainer("u1", "sidecar", restart=False)]


def test_running_and_starting_containers_are_left_alone() -> None:
    pod = make_pod(containers=("app", "sidecar"))
    states = [running(pod, "app"), container(pod, "sidecar", ContainerStatus.CREATED)]
    assert run_plan([pod], states, records={"u1": record(pod)}) == []


def test_only_the_missing_container_of_a_pod_is_started() -> None:
    pod = make_pod(containers=("app", "sidecar"))
    assert run_plan([pod], [running(pod, "app")]) == [StartContainer("u1", "sidecar", restart=False)]


def test_containers_of_other_pods_do_not_count() -> None:
    a, b = make_pod("a"), make_pod("b")
    assert run_plan([a, b], [running(a)]) == [StartContainer("b", "app", restart=False)]


# --- plan: restarts and back-off --------------------------------------------------------


def test_backoff_schedule() -> None:
    assert [backoff(n) for n in range(8)] == [0, 10, 20, 40, 80, 160, 300, 300]
    assert backoff(50) == BACKOFF_MAX == 300


def test_the_first_restart_is_immediate() -> None:
    pod = make_pod()
    dead = exited(pod, code=1, finished=T0 + 5)
    assert run_plan([pod], [dead], now=T0 + 5, records={"u1": record(pod, 0)}) == [
        StartContainer("u1", "app", restart=True)]


@pytest.mark.parametrize(("restarts", "delay"), [(1, 10), (2, 20), (3, 40), (4, 80), (5, 160), (6, 300), (12, 300)])
def test_later_restarts_wait_for_the_backoff(restarts: int, delay: float) -> None:
    pod = make_pod()
    finished = T0 + 30
    states = [exited(pod, code=1, started=T0 + 29, finished=finished)]
    records = {"u1": record(pod, restarts)}
    assert run_plan([pod], states, now=finished + delay - 0.5, records=records) == []
    assert run_plan([pod], states, now=finished + delay, records=records) == [
        StartContainer("u1", "app", restart=True)]


def test_backoff_resets_after_ten_minutes_of_running() -> None:
    pod = make_pod()
    records = {"u1": record(pod, 9)}
    long_run = [exited(pod, code=1, started=T0, finished=T0 + 600)]
    assert run_plan([pod], long_run, now=T0 + 600, records=records) == [StartContainer("u1", "app", restart=True)]
    short_run = [exited(pod, code=1, started=T0, finished=T0 + 599)]
    assert run_plan([pod], short_run, now=T0 + 600, records=records) == []
    assert run_plan([pod], short_run, now=T0 + 599 + 300, records=records) == [
        StartContainer("u1", "app", restart=True)]


def test_always_restarts_a_successful_exit() -> None:
    pod = make_pod(restart_policy="Always")
    assert run_plan([pod], [exited(pod, code=0)]) == [StartContainer("u1", "app", restart=True)]


def test_on_failure_restarts_only_non_zero_exits() -> None:
    pod = make_pod(restart_policy="OnFailure")
    assert run_plan([pod], [exited(pod, code=0)]) == []
    assert run_plan([pod], [exited(pod, code=137)]) == [StartContainer("u1", "app", restart=True)]


@pytest.mark.parametrize("code", [0, 1, 255])
def test_never_never_restarts(code: int) -> None:
    pod = make_pod(restart_policy="Never")
    assert run_plan([pod], [exited(pod, code=code)], now=T0 + 10_000) == []


def test_a_failed_start_backs_off_like_a_crash_but_is_no_restart() -> None:
    pod = make_pod()
    records = {"u1": record(pod, 0, last_error="image has no default command", last_error_at=T0, start_failures=1)}
    assert run_plan([pod], [], now=T0 + 9, records=records) == []
    # Retried after the back-off; not a restart (restartCount counts processes that ran, as in Kubernetes).
    assert run_plan([pod], [], now=T0 + 10, records=records) == [StartContainer("u1", "app", restart=False)]
    records = {"u1": record(pod, 0, last_error="still broken", last_error_at=T0, start_failures=3)}
    assert run_plan([pod], [], now=T0 + 39, records=records) == []
    assert run_plan([pod], [], now=T0 + 40, records=records) == [StartContainer("u1", "app", restart=False)]


def test_a_failed_pull_is_err_image_pull_then_image_pull_back_off() -> None:
    pod = make_pod()
    for failures, reason in ((1, "ErrImagePull"), (2, "ImagePullBackOff")):
        rec = record(pod, 0, last_error="pull failed", last_error_at=T0, last_error_reason="ErrImagePull",
                     start_failures=failures)
        status = pod_status(pod, rec, [], T0 + 1)
        waiting = status["containerStatuses"][0]["state"]["waiting"]
        assert waiting == {"reason": reason, "message": "pull failed"}
        assert status["containerStatuses"][0]["restartCount"] == 0 and status["phase"] == "Pending"


# --- plan: which instance is current -----------------------------------------------------


def test_older_exited_instances_are_removed_and_the_newest_kept() -> None:
    pod = make_pod(restart_policy="Never")
    old = exited(pod, code=1, started=T0, finished=T0 + 10)
    older = exited(pod, code=1, started=T0 - 100, finished=T0 - 90)
    newest = exited(pod, code=1, started=T0 + 20, finished=T0 + 30)
    actions = run_plan([pod], [newest, older, old])
    assert sorted(actions, key=repr) == sorted([RemoveContainer("u1", older.config.id),
                                                RemoveContainer("u1", old.config.id)], key=repr)


def test_exited_instances_before_a_running_one_are_removed_but_one() -> None:
    pod = make_pod()
    first = exited(pod, code=1, started=T0, finished=T0 + 10)
    second = exited(pod, code=1, started=T0 + 20, finished=T0 + 30)
    now_running = running(pod, started=T0 + 40)
    actions = run_plan([pod], [now_running, second, first], records={"u1": record(pod, 2)})
    # The newest exit stays for `lastState` and the logs; the running instance is current.
    assert actions == [RemoveContainer("u1", first.config.id)]


def test_a_running_restart_is_current_even_after_a_start_error() -> None:
    """An instance whose start failed has no startedAt; it is still older than the one that replaced it."""
    pod = make_pod()
    failed_start = container(pod, "app", ContainerStatus.EXITED, finished=T0, exit_code=128, reason="StartError")
    replacement = running(pod, started=T0 + 12)
    records = {"u1": record(pod, 1)}
    assert run_plan([pod], [failed_start, replacement], now=T0 + 60, records=records) == []
    status = pod_status(pod, records["u1"], [failed_start, replacement], T0 + 60)
    assert "running" in status["containerStatuses"][0]["state"]
    assert status["containerStatuses"][0]["lastState"]["terminated"]["reason"] == "StartError"


@pytest.mark.parametrize("running_id_sorts_first", [True, False])
def test_a_restart_in_the_same_second_is_current(running_id_sorts_first: bool) -> None:
    """Start times have whole-second resolution: a crash and its immediate restart share one."""
    pod = make_pod()
    low, high = "0" * 64, "f" * 64
    crashed = exited(pod, code=1, started=T0, finished=T0, cid=high if running_id_sorts_first else low)
    restarted = running(pod, started=T0, cid=low if running_id_sorts_first else high)
    records = {"u1": record(pod, 1)}
    for now in (T0, T0 + 10, T0 + 1000):
        assert run_plan([pod], [crashed, restarted], now=now, records=records) == []
    status = pod_status(pod, records["u1"], [crashed, restarted], T0 + 1)
    assert status["containerStatuses"][0]["containerID"] == f"orch://{restarted.config.id}"
    assert status["containerStatuses"][0]["ready"] is True


# --- plan: deletion ------------------------------------------------------------------------


def test_a_deleted_pod_stops_its_running_containers_with_its_grace() -> None:
    pod = make_pod(containers=("app", "sidecar", "done"), deleting_grace=7)
    app, sidecar = running(pod, "app"), container(pod, "sidecar", ContainerStatus.CREATED)
    done = exited(pod, "done", code=0)
    actions = run_plan([pod], [app, sidecar, done])
    assert sorted(actions, key=repr) == sorted([StopContainer("u1", app.config.id, 7.0),
                                                StopContainer("u1", sidecar.config.id, 7.0)], key=repr)


def test_a_deleted_pod_with_zero_grace() -> None:
    pod = make_pod(deleting_grace=0)
    app = running(pod)
    assert run_plan([pod], [app]) == [StopContainer("u1", app.config.id, 0.0)]


def test_a_deleted_pod_is_removed_once_every_container_exited() -> None:
    pod = make_pod(containers=("app", "sidecar"), deleting_grace=30)
    app, sidecar = exited(pod, "app", code=143), exited(pod, "sidecar", code=0)
    actions = run_plan([pod], [app, sidecar])
    assert actions[-1] == RemovePod("u1")
    assert sorted(actions[:-1], key=repr) == sorted([RemoveContainer("u1", app.config.id),
                                                     RemoveContainer("u1", sidecar.config.id)], key=repr)


def test_a_deleted_pod_that_never_started_is_removed() -> None:
    pod = make_pod(deleting_grace=30)
    assert run_plan([pod], []) == [RemovePod("u1")]


def test_a_deleted_pod_is_not_restarted() -> None:
    pod = make_pod(deleting_grace=30)
    dead = exited(pod, code=1)
    assert StartContainer("u1", "app", restart=True) not in run_plan([pod], [dead])


# --- plan: busy pods and orphans ---------------------------------------------------------


def test_busy_pods_are_skipped() -> None:
    new = make_pod("new")
    going = make_pod("going", deleting_grace=30)
    orphan_pod = make_pod("orphan")
    states = [running(going), running(orphan_pod)]
    assert run_plan([new, going], states, busy={"new", "going", "orphan"}) == []
    assert run_plan([new, going], states, busy={"going", "orphan"}) == [StartContainer("new", "app", restart=False)]


def test_orphans_are_left_alone_until_the_first_assignments_arrive() -> None:
    gone = make_pod("gone")
    states = [running(gone)]
    records = {"gone": record(gone), "forgotten": record(make_pod("forgotten"))}
    assert run_plan([], states, records=records, orphans_allowed=False) == []


def test_running_orphans_are_stopped_with_their_pods_grace() -> None:
    gone = make_pod("gone", termination_grace=5)
    unknown = make_pod("unknown")
    a, b = running(gone), running(unknown)
    actions = run_plan([], [a, b], records={"gone": record(gone)})
    assert sorted(actions, key=repr) == sorted([StopContainer("gone", a.config.id, 5.0),
                                                StopContainer("unknown", b.config.id, 30.0)], key=repr)


def test_exited_orphans_are_removed_with_their_pod() -> None:
    gone = make_pod("gone")
    dead = exited(gone, code=0)
    assert run_plan([], [dead], records={"gone": record(gone)}) == [RemoveContainer("gone", dead.config.id),
                                                                    RemovePod("gone")]


def test_a_record_without_containers_or_pod_is_dropped() -> None:
    records = {"forgotten": record(make_pod("forgotten"))}
    assert run_plan([], [], records=records) == [RemovePod("forgotten")]
    assert run_plan([], [], records=records, busy={"forgotten"}) == []


def test_a_sandbox_of_a_pod_nobody_knows_is_removed_once_assignments_arrived() -> None:
    # The agent died between making the sandbox and writing the pod's record.
    wanted = make_pod("wanted")
    assert run_plan([wanted], [running(wanted)], sandboxes={"wanted", "stray"}) == [RemovePod("stray")]
    assert run_plan([], [], sandboxes={"stray"}, orphans_allowed=False) == []
    assert run_plan([], [], sandboxes={"stray"}, busy={"stray"}) == []
    # With containers left, they go first (as any orphan's), the sandbox with the pod.
    gone = make_pod("gone")
    dead = exited(gone, code=0)
    assert run_plan([], [dead], sandboxes={"gone"}) == [RemoveContainer("gone", dead.config.id), RemovePod("gone")]


def test_a_busy_orphan_is_skipped() -> None:
    gone = make_pod("gone")
    assert run_plan([], [running(gone)], busy={"gone"}) == []


# --- pod_status -------------------------------------------------------------------------------


def cond(status: Obj, kind: str) -> Obj:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_status_pending_before_any_container_exists() -> None:
    pod = make_pod(containers=("app", "sidecar"))
    st = pod_status(pod, PodRecord(pod), [], T0)
    assert st["phase"] == "Pending"
    assert [cs["state"] for cs in st["containerStatuses"]] == [{"waiting": {"reason": "ContainerCreating"}}] * 2
    assert all(cs["ready"] is False and "containerID" not in cs for cs in st["containerStatuses"])
    assert cond(st, "Ready") == {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                                 "lastTransitionTime": rfc3339(T0)}
    assert cond(st, "Initialized")["status"] == "True"


def test_status_pending_while_created() -> None:
    pod = make_pod()
    created = container(pod, "app", ContainerStatus.CREATED)
    st = pod_status(pod, record(pod), [created], T0)
    assert st["phase"] == "Pending"
    cs = st["containerStatuses"][0]
    assert cs["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert cs["containerID"] == f"orch://{created.config.id}"


def test_status_running_and_ready() -> None:
    pod = make_pod(containers=("app", "sidecar"))
    app, sidecar = running(pod, "app", started=T0 + 1), running(pod, "sidecar", started=T0 + 2)
    rec = PodRecord(pod, {"app": ContainerRecord(0), "sidecar": ContainerRecord(2)}, start_time=rfc3339(T0))
    st = pod_status(pod, rec, [app, sidecar], T0 + 10, host_ip="10.0.0.7")
    assert st["phase"] == "Running"
    assert st["hostIP"] == "10.0.0.7"
    assert st["startTime"] == rfc3339(T0)
    app_st, sidecar_st = st["containerStatuses"]
    assert app_st == {"name": "app", "image": "host", "imageID": "", "restartCount": 0, "ready": True,
                      "started": True, "containerID": f"orch://{app.config.id}",
                      "state": {"running": {"startedAt": rfc3339(T0 + 1)}}}
    assert sidecar_st["restartCount"] == 2
    assert [(c["type"], c["status"]) for c in st["conditions"]] == [
        ("Initialized", "True"), ("ContainersReady", "True"), ("Ready", "True")]
    assert "reason" not in cond(st, "Ready")


def test_status_running_but_not_ready_while_one_container_starts() -> None:
    pod = make_pod(containers=("app", "sidecar"))
    st = pod_status(pod, record(pod), [running(pod, "app")], T0)
    assert st["phase"] == "Running"
    assert [cs["ready"] for cs in st["containerStatuses"]] == [True, False]
    assert cond(st, "Ready")["status"] == "False"
    assert cond(st, "ContainersReady")["status"] == "False"


@pytest.mark.parametrize("policy", ["Never", "OnFailure"])
def test_status_succeeded(policy: str) -> None:
    pod = make_pod(containers=("app", "sidecar"), restart_policy=policy)
    app = exited(pod, "app", code=0, started=T0, finished=T0 + 3)
    sidecar = exited(pod, "sidecar", code=0, started=T0, finished=T0 + 4)
    st = pod_status(pod, record(pod), [app, sidecar], T0 + 10)
    assert st["phase"] == "Succeeded"
    assert st["containerStatuses"][0]["state"] == {"terminated": {
        "exitCode": 0, "reason": "Completed", "containerID": f"orch://{app.config.id}",
        "startedAt": rfc3339(T0), "finishedAt": rfc3339(T0 + 3)}}
    assert cond(st, "Ready")["status"] == "False"


def test_status_failed_when_a_container_failed_and_none_will_restart() -> None:
    pod = make_pod(containers=("app", "sidecar"), restart_policy="Never")
    app = exited(pod, "app", code=0)
    sidecar = exited(pod, "sidecar", code=3, reason="OOMKilled", message="memory limit reached")
    st = pod_status(pod, record(pod), [app, sidecar], T0 + 10)
    assert st["phase"] == "Failed"
    term = st["containerStatuses"][1]["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["message"]) == (3, "OOMKilled", "memory limit reached")


def test_status_running_while_one_container_still_runs_after_another_failed() -> None:
    pod = make_pod(containers=("app", "sidecar"), restart_policy="Never")
    st = pod_status(pod, record(pod), [exited(pod, "app", code=1), running(pod, "sidecar")], T0 + 10)
    assert st["phase"] == "Running"
    assert st["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1


def test_status_of_a_lost_exit_code() -> None:
    pod = make_pod(restart_policy="Never")
    lost = container(pod, "app", ContainerStatus.EXITED, started=T0, finished=T0 + 1)
    term = pod_status(pod, record(pod), [lost], T0 + 10)["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == -1 and term["reason"] == "Error"


def test_status_crash_loop_back_off() -> None:
    pod = make_pod(restart_policy="Always")
    dead = exited(pod, code=2, started=T0, finished=T0 + 1)
    st = pod_status(pod, record(pod, 3), [dead], T0 + 5)
    assert st["phase"] == "Running"
    cs = st["containerStatuses"][0]
    assert cs["restartCount"] == 3
    assert cs["ready"] is False and cs["started"] is False
    assert cs["state"] == {"waiting": {"reason": "CrashLoopBackOff",
                                       "message": "back-off restarting failed container app"}}
    assert cs["lastState"]["terminated"]["exitCode"] == 2
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    assert cs["containerID"] == f"orch://{dead.config.id}"
    assert cond(st, "Ready")["status"] == "False"


def test_status_on_failure_crash_loops_only_on_failures() -> None:
    pod = make_pod(restart_policy="OnFailure")
    failed = pod_status(pod, record(pod, 1), [exited(pod, code=1)], T0 + 10)
    assert failed["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert failed["phase"] == "Running"
    ok = pod_status(pod, record(pod, 1), [exited(pod, code=0)], T0 + 10)
    assert "terminated" in ok["containerStatuses"][0]["state"]
    assert ok["phase"] == "Succeeded"


def test_status_last_state_is_the_previous_instance() -> None:
    pod = make_pod()
    before = exited(pod, code=137, started=T0, finished=T0 + 5)
    now_running = running(pod, started=T0 + 6)
    cs = pod_status(pod, record(pod, 1), [now_running, before], T0 + 10)["containerStatuses"][0]
    assert cs["state"] == {"running": {"startedAt": rfc3339(T0 + 6)}}
    assert cs["lastState"]["terminated"]["exitCode"] == 137
    assert cs["lastState"]["terminated"]["containerID"] == f"orch://{before.config.id}"
    assert cs["containerID"] == f"orch://{now_running.config.id}"
    assert cs["restartCount"] == 1


def test_status_of_a_container_that_could_not_start() -> None:
    pod = make_pod()
    rec = record(pod, 0, last_error="image has no default command", last_error_at=T0)
    st = pod_status(pod, rec, [], T0 + 1)
    assert st["phase"] == "Pending"
    assert st["containerStatuses"][0]["state"] == {"waiting": {
        "reason": "CreateContainerError", "message": "image has no default command"}}


def test_status_ignores_containers_of_other_pods() -> None:
    mine, other = make_pod("mine"), make_pod("other")
    st = pod_status(mine, record(mine), [running(other)], T0)
    assert st["phase"] == "Pending"


def test_same_status_ignores_condition_timestamps_only() -> None:
    pod = make_pod()
    states = [running(pod)]
    a = pod_status(pod, record(pod), states, T0)
    b = pod_status(pod, record(pod), states, T0 + 3600)
    assert a != b
    assert same_status(a, b)
    assert not same_status(None, b)
    restarted = pod_status(pod, record(pod, 1), states, T0)
    assert not same_status(a, restarted)
    ended = pod_status(pod, record(pod), [exited(pod, code=0)], T0)
    assert not same_status(a, ended)


def test_pod_record_round_trips_through_json() -> None:
    pod = make_pod()
    rec = PodRecord(pod, {"app": ContainerRecord(4, "boom", T0)}, start_time=rfc3339(T0))
    back = PodRecord.from_json(rec.to_json())
    assert back == rec


# --- expand ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("$(A)", "x"),
    ("$(A)-$(B)", "x-y y"),
    ("--port=$(PORT)", "--port=8080"),
    ("$(MISSING)", "$(MISSING)"),
    ("$$(A)", "$(A)"),
    ("$$", "$"),
    ("$$$(A)", "$x"),
    ("cost: $5", "cost: $5"),
    ("$(A", "$(A"),
    ("$A", "$A"),
    ("", ""),
])
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "x", "B": "y y", "PORT": "8080"}) == expected


def test_a_container_with_probes_is_not_ready_before_any_probe_ran() -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["readinessProbe"] = {"exec": {"command": ["true"]}}
    status = pod_status(pod, record(pod), [running(pod)], T0 + 1, probes={})
    cs = status["containerStatuses"][0]
    assert cs["started"] is True and cs["ready"] is False
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "False"
    pod["spec"]["containers"][0]["startupProbe"] = {"exec": {"command": ["true"]}}
    cs = pod_status(pod, record(pod), [running(pod)], T0 + 1, probes={})["containerStatuses"][0]
    assert cs["started"] is False and cs["ready"] is False
