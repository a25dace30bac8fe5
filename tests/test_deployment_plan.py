"""The Deployment controller's pure core: ``plan_deployment`` and ``pod_from_template``.

Deployments and pods are plain dicts shaped as the API server stores them
(``validate`` fills the defaults); no store, no informer, no mocks.
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

from apimachinery.labels import selector_from_label_selector
from apimachinery.validation import validate
from scheduler.controllers import (
    TEMPLATE_HASH_LABEL,
    deployment_conditions,
    plan_deployment,
    pod_from_template,
    template_hash,
)
from scheduler.plugins import controller_uid

Obj = dict[str, Any]


def make_deployment(replicas: int = 3, *, name: str = "web", image_arg: str = "1000", generation: int = 1) -> Obj:
    dep = validate({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "tier": "front"}, "annotations": {"team": "blue"}},
                "spec": {"containers": [{"name": "c", "image": "host", "command": ["sleep", image_arg]}]},
            },
        },
    })
    dep["metadata"].update(uid="dep-uid-1", generation=generation, resourceVersion="7",
                           creationTimestamp="2024-05-01T09:00:00Z")
    return dep


_n = 0


def owned_pod(dep: Obj, *, created: str = "2024-05-01T10:00:00Z", node: str | None = "n1", ready: bool = True,
              phase: str | None = None, stale: bool = False, deleting: bool = False, name: str | None = None) -> Obj:
    """A pod of ``dep`` as the controller created it, in the given state."""
    global _n
    _n += 1
    pod = validate(pod_from_template(dep))
    md = pod["metadata"]
    md.update(name=name or f"{md['name']}-{_n}", uid=f"pod-uid-{_n}", creationTimestamp=created,
              resourceVersion=str(_n))
    if stale:
        md["labels"][TEMPLATE_HASH_LABEL] = "0123456789"
    if deleting:
        md.update(deletionTimestamp="2024-05-01T11:00:00Z", deletionGracePeriodSeconds=30)
    if node:
        pod["spec"]["nodeName"] = node
    pod["status"] = {
        "phase": phase or ("Running" if node else "Pending"),
        "conditions": [{"type": "Ready", "status": "True" if ready and node else "False"}],
    }
    return pod


def names(pods: list[Obj]) -> list[str]:
    return [p["metadata"]["name"] for p in pods]


# --- create and scale -------------------------------------------------------------


def test_from_zero_creates_every_replica() -> None:
    dep = make_deployment(3)
    plan = plan_deployment(dep, [])
    assert plan.create == 3
    assert plan.delete == []


def test_zero_replicas_deletes_everything() -> None:
    dep = make_deployment(0)
    pods = [owned_pod(dep), owned_pod(dep)]
    plan = plan_deployment(dep, pods)
    assert plan.create == 0
    assert sorted(names(plan.delete)) == sorted(names(pods))


def test_at_the_desired_count_nothing_changes() -> None:
    dep = make_deployment(2)
    plan = plan_deployment(dep, [owned_pod(dep), owned_pod(dep)])
    assert plan.create == 0 and plan.delete == []


def test_scale_up_creates_the_difference() -> None:
    dep = make_deployment(5)
    plan = plan_deployment(dep, [owned_pod(dep), owned_pod(dep)])
    assert plan.create == 3 and plan.delete == []


def test_scale_down_removes_unscheduled_then_not_ready_then_newest() -> None:
    dep = make_deployment(4)
    oldest_ready = owned_pod(dep, name="ready-old", created="2024-05-01T10:00:00Z")
    newer_ready = owned_pod(dep, name="ready-new", created="2024-05-01T10:05:00Z")
    newest_ready = owned_pod(dep, name="ready-newest", created="2024-05-02T08:00:00Z")
    not_ready = owned_pod(dep, name="not-ready", created="2024-04-01T00:00:00Z", ready=False)
    unscheduled = owned_pod(dep, name="unscheduled", created="2024-03-01T00:00:00Z", node=None)
    pods = [newer_ready, unscheduled, oldest_ready, not_ready, newest_ready]
    expected_order = ["unscheduled", "not-ready", "ready-newest", "ready-new", "ready-old"]
    for replicas in range(4, -1, -1):
        dep["spec"]["replicas"] = replicas
        plan = plan_deployment(dep, pods)
        assert plan.create == 0
        assert names(plan.delete) == expected_order[: 5 - replicas], replicas


def test_newest_first_compares_whole_timestamps() -> None:
    dep = make_deployment(1)
    a = owned_pod(dep, name="a", created="2024-12-31T23:59:59Z")
    b = owned_pod(dep, name="b", created="2025-01-01T00:00:00Z")
    assert names(plan_deployment(dep, [b, a]).delete) == ["b"]
    assert names(plan_deployment(dep, [a, b]).delete) == ["b"]


# --- pods to replace --------------------------------------------------------------


def test_terminal_pods_are_deleted_and_replaced() -> None:
    dep = make_deployment(3)
    done = owned_pod(dep, name="done", phase="Succeeded")
    failed = owned_pod(dep, name="failed", phase="Failed")
    running = owned_pod(dep, name="running")
    plan = plan_deployment(dep, [done, failed, running])
    assert sorted(names(plan.delete)) == ["done", "failed"]
    assert plan.create == 2


def test_rolling_update_surges_first_and_keeps_every_ready_pod_until_new_ones_are_ready() -> None:
    dep = make_deployment(2)  # 25%/25% of 2: surge 1, unavailable 0
    old = owned_pod(dep, name="old", stale=True)
    current = owned_pod(dep, name="current")
    plan = plan_deployment(dep, [old, current])
    assert plan.create == 1 and plan.delete == []
    starting = owned_pod(dep, name="starting", ready=False)
    assert plan_deployment(dep, [old, current, starting]).delete == []
    ready = owned_pod(dep, name="ready")
    plan = plan_deployment(dep, [old, current, ready])
    assert names(plan.delete) == ["old"] and plan.create == 0


def test_min_ready_seconds_counts_a_pod_available_only_after_it_was_ready_that_long() -> None:
    dep = make_deployment(2)  # surge 1, unavailable 0
    dep["spec"]["minReadySeconds"] = 30
    now = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC).timestamp()

    def ready_since(pod: Obj, seconds_ago: int) -> Obj:
        stamp = datetime.datetime.fromtimestamp(now - seconds_ago, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        pod["status"]["conditions"][0]["lastTransitionTime"] = stamp
        return pod

    old = ready_since(owned_pod(dep, name="old", stale=True), 3600)
    current = ready_since(owned_pod(dep, name="current"), 3600)
    fresh = ready_since(owned_pod(dep, name="fresh"), 10)
    plan = plan_deployment(dep, [old, current, fresh], now=now)
    # Ready for 10 s of the 30 it must be: not available yet, so the old pod stays.
    assert plan.delete == [] and plan.recheck_in == 20
    assert plan.status["readyReplicas"] == 3 and plan.status["availableReplicas"] == 2
    plan = plan_deployment(dep, [old, current, fresh], now=now + 20)
    assert names(plan.delete) == ["old"] and plan.recheck_in is None
    # Without minReadySeconds, Ready is available at once.
    del dep["spec"]["minReadySeconds"]
    assert names(plan_deployment(dep, [old, current, fresh], now=now).delete) == ["old"]


def test_a_template_change_rolls_within_surge_and_unavailable() -> None:
    dep = make_deployment(4)  # surge 1, unavailable 1
    pods = [owned_pod(dep), owned_pod(dep), owned_pod(dep), owned_pod(dep)]
    changed = make_deployment(4, image_arg="2000", generation=2)
    assert template_hash(changed["spec"]["template"]) != template_hash(dep["spec"]["template"])
    plan = plan_deployment(changed, pods)
    assert plan.create == 1  # 4 + maxSurge 1 at most
    assert len(plan.delete) == 1  # 4 ready - 1 unavailable = 3 must stay ready


def test_recreate_removes_the_old_pods_then_creates_once_they_are_gone() -> None:
    dep = make_deployment(2)
    pods = [owned_pod(dep), owned_pod(dep)]
    changed = make_deployment(2, image_arg="2000", generation=2)
    changed["spec"]["strategy"] = {"type": "Recreate"}
    plan = plan_deployment(changed, pods)
    assert sorted(names(plan.delete)) == sorted(names(pods)) and plan.create == 0
    going = [owned_pod(dep, deleting=True, stale=True)]
    assert plan_deployment(changed, going).create == 0  # still terminating: wait
    assert plan_deployment(changed, []).create == 2


def test_a_pod_without_the_hash_label_is_replaced() -> None:
    dep = make_deployment(1)
    pod = owned_pod(dep, name="adopted")
    del pod["metadata"]["labels"][TEMPLATE_HASH_LABEL]
    plan = plan_deployment(dep, [pod])
    assert plan.delete == [] and plan.create == 1  # a replacement first (surge 1, unavailable 0)
    plan = plan_deployment(dep, [pod, owned_pod(dep, name="replacement")])
    assert names(plan.delete) == ["adopted"] and plan.create == 0


def test_terminating_pods_are_not_active_nor_deleted_again() -> None:
    dep = make_deployment(2)
    going = owned_pod(dep, name="going", deleting=True)
    going_failed = owned_pod(dep, name="going-failed", deleting=True, phase="Failed")
    staying = owned_pod(dep, name="staying")
    plan = plan_deployment(dep, [going, going_failed, staying])
    assert plan.delete == []
    assert plan.create == 1
    assert plan.status["replicas"] == 1


# --- status -----------------------------------------------------------------------


def test_status_counts() -> None:
    dep = make_deployment(4, generation=5)
    pods = [
        owned_pod(dep, name="ready-1"),
        owned_pod(dep, name="ready-2"),
        owned_pod(dep, name="starting", ready=False),
        owned_pod(dep, name="old", stale=True),
        owned_pod(dep, name="going", deleting=True),
    ]
    plan = plan_deployment(dep, pods)
    assert plan.create == 1
    assert plan.delete == []  # 3 ready, and 4 - 1 unavailable = 3 must stay ready
    assert {k: v for k, v in plan.status.items() if k != "conditions"} == {
        "observedGeneration": 5,
        "replicas": 4,  # every pod not being deleted, the outdated one included
        "updatedReplicas": 3,
        "readyReplicas": 3,
        "availableReplicas": 3,
        "unavailableReplicas": 1,
    }


def test_status_of_a_fresh_deployment() -> None:
    dep = make_deployment(3)
    assert {k: v for k, v in plan_deployment(dep, []).status.items() if k != "conditions"} == {
        "observedGeneration": 1, "replicas": 0, "updatedReplicas": 0,
        "readyReplicas": 0, "availableReplicas": 0, "unavailableReplicas": 3,
    }


def test_updated_replicas_exclude_the_surplus_being_removed() -> None:
    dep = make_deployment(1)
    plan = plan_deployment(dep, [owned_pod(dep), owned_pod(dep), owned_pod(dep)])
    assert len(plan.delete) == 2
    assert plan.status["updatedReplicas"] == 1
    assert plan.status["readyReplicas"] == 1
    assert plan.status["unavailableReplicas"] == 0


def test_plan_does_not_modify_its_inputs() -> None:
    dep = make_deployment(1)
    pods = [owned_pod(dep), owned_pod(dep, stale=True), owned_pod(dep, phase="Failed")]
    before = copy.deepcopy((dep, pods))
    plan_deployment(dep, pods)
    assert (dep, pods) == before


# --- pod_from_template --------------------------------------------------------------


def test_pod_from_template_is_a_valid_pod_owned_by_the_deployment() -> None:
    dep = make_deployment(3)
    pod = pod_from_template(dep)
    valid = validate(pod)  # raises ValidationError naming the field if not
    md = valid["metadata"]
    assert valid["kind"] == "Pod" and valid["apiVersion"] == "v1"
    assert md["namespace"] == "shop"
    assert md["name"].startswith("web-")
    assert md["labels"] == {"app": "web", "tier": "front", TEMPLATE_HASH_LABEL: template_hash(dep["spec"]["template"])}
    assert md["annotations"] == {"team": "blue"}
    assert selector_from_label_selector(dep["spec"]["selector"]).matches(md["labels"])
    assert md["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                      "uid": "dep-uid-1", "controller": True, "blockOwnerDeletion": True}]
    assert controller_uid(valid) == "dep-uid-1"
    assert valid["spec"] == dep["spec"]["template"]["spec"]


def test_pods_from_one_template_get_distinct_names_and_count_as_current() -> None:
    dep = make_deployment(3)
    pods = [pod_from_template(dep) for _ in range(10)]
    assert len(set(names(pods))) == 10
    plan = plan_deployment(dep, [{**validate(p), "status": {"phase": "Pending"}} for p in pods[:3]])
    assert plan.create == 0 and plan.delete == []


def test_pod_from_template_of_a_long_named_deployment_is_valid() -> None:
    """A Deployment name may be 253 characters; the generated pod name must stay within that limit."""
    for length in (63, 200, 240, 253):
        name = ("a" * (length - 1)) + "z"
        dep = make_deployment(1, name=name)
        pod = validate(pod_from_template(dep))
        assert len(pod["metadata"]["name"]) <= 253
        assert pod["metadata"]["ownerReferences"][0]["name"] == name


def test_long_names_stay_distinct() -> None:
    dep = make_deployment(1, name="d" * 253)
    assert len({pod_from_template(dep)["metadata"]["name"] for _ in range(10)}) == 10


# --- rolling updates: the arithmetic and a whole rollout ----------------------------


def test_fenceposts_round_surge_up_and_unavailable_down() -> None:
    from scheduler.controllers import resolve_fenceposts

    cases = [
        ({"maxSurge": "25%", "maxUnavailable": "25%"}, 10, (3, 2)),
        ({"maxSurge": "25%", "maxUnavailable": "25%"}, 1, (1, 0)),
        ({"maxSurge": "25%", "maxUnavailable": "25%"}, 4, (1, 1)),
        ({"maxSurge": 0, "maxUnavailable": "10%"}, 5, (0, 1)),  # both 0 after rounding: 1 may be down
        ({"maxSurge": 2, "maxUnavailable": 0}, 3, (2, 0)),
        ({"maxSurge": "100%", "maxUnavailable": "100%"}, 3, (3, 3)),
        (None, 8, (2, 2)),
    ]
    for ru, replicas, expected in cases:
        assert resolve_fenceposts(ru, replicas) == expected, (ru, replicas)


def simulate_rollout(dep: Obj, pods: list[Obj], steps: int = 50) -> list[tuple[int, int]]:
    """Run the plan to convergence, as the controller and the nodes would: new pods start
    unready and become ready one pass later. ``(ready, total)`` after every pass's deletions."""
    surge_cap = []
    for _ in range(steps):
        plan = plan_deployment(dep, pods)
        gone = {id(p) for p in plan.delete}
        pods = [p for p in pods if id(p) not in gone]
        surge_cap.append((sum(1 for p in pods if p["status"]["conditions"][0]["status"] == "True"), len(pods)))
        for p in pods:  # pods created last pass are ready now
            p["status"]["conditions"][0]["status"] = "True"
        pods += [owned_pod(dep, ready=False) for _ in range(plan.create)]
        if plan.create == 0 and not plan.delete and all(p["metadata"]["labels"][TEMPLATE_HASH_LABEL]
                                                        == template_hash(dep["spec"]["template"]) for p in pods):
            break
    assert all(TEMPLATE_HASH_LABEL in p["metadata"]["labels"] for p in pods)
    h = template_hash(dep["spec"]["template"])
    assert sorted(p["metadata"]["labels"][TEMPLATE_HASH_LABEL] for p in pods) == [h] * dep["spec"]["replicas"]
    return surge_cap


def test_a_whole_rollout_never_drops_below_min_available_nor_exceeds_the_surge() -> None:
    for replicas, surge, unavailable in [(3, 1, 1), (5, "25%", "25%"), (4, 0, 1), (3, 2, 0), (10, "50%", "20%")]:
        old_dep = make_deployment(replicas)
        pods = [owned_pod(old_dep) for _ in range(replicas)]
        dep = make_deployment(replicas, image_arg="2000", generation=2)
        dep["spec"]["strategy"] = {"type": "RollingUpdate",
                                   "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}
        from scheduler.controllers import resolve_fenceposts

        s, u = resolve_fenceposts(dep["spec"]["strategy"]["rollingUpdate"], replicas)
        for ready, total in simulate_rollout(dep, pods):
            assert ready >= replicas - u, (replicas, surge, unavailable, ready)
            assert total <= replicas + s


# --- revision history ------------------------------------------------------------------


def test_revisions_number_templates_and_renumber_one_that_comes_back() -> None:
    from scheduler.controllers import (
        REVISION_ANNOTATION,
        new_revision,
        plan_revisions,
        revision_number,
    )

    v1 = make_deployment(2)
    first = plan_revisions(v1, [], [])
    assert first.number == 1 and first.create is not None
    rev1 = first.create
    assert rev1["kind"] == "ControllerRevision" and rev1["revision"] == 1
    assert rev1["data"]["template"] == v1["spec"]["template"]
    assert rev1["metadata"]["labels"][TEMPLATE_HASH_LABEL] == template_hash(v1["spec"]["template"])
    assert rev1["metadata"]["annotations"][REVISION_ANNOTATION] == "1"
    assert controller_uid(rev1) == "dep-uid-1"
    # Unchanged: nothing to do.
    again = plan_revisions(v1, [rev1], [])
    assert again.number == 1 and again.create is None and again.renumber is None and again.delete == []
    v2 = make_deployment(2, image_arg="2000", generation=2)
    second = plan_revisions(v2, [rev1], [])
    assert second.number == 2 and second.create is not None and second.create["revision"] == 2
    rev2 = second.create
    # Back to v1 (rollout undo): revision 1 becomes revision 3.
    back = plan_revisions(v1, [{**rev1, "metadata": {**rev1["metadata"], "resourceVersion": "4"}}, rev2], [])
    assert back.number == 3 and back.create is None
    assert back.renumber is not None and revision_number(back.renumber) == 3
    assert back.renumber["metadata"]["annotations"][REVISION_ANNOTATION] == "3"
    assert new_revision(v2, 7)["metadata"]["name"] == f"web-{template_hash(v2['spec']['template'])}"


def test_revision_history_keeps_the_limit_and_any_revision_still_in_use() -> None:
    from scheduler.controllers import new_revision, plan_revisions

    deps = [make_deployment(1, image_arg=str(1000 + i)) for i in range(6)]
    revs = [new_revision(d, i + 1) for i, d in enumerate(deps)]
    current = deps[-1]
    current["spec"]["revisionHistoryLimit"] = 2
    plan = plan_revisions(current, revs, [])
    assert [r["revision"] for r in plan.delete] == [1, 2, 3]  # 5 old, keep the 2 newest
    in_use = owned_pod(deps[0])  # a pod of revision 1 still runs
    plan = plan_revisions(current, revs, [in_use])
    assert [r["revision"] for r in plan.delete] == [2, 3, 4]  # as Kubernetes: 3 over the limit, in-use skipped
    current["spec"]["revisionHistoryLimit"] = 0
    assert [r["revision"] for r in plan_revisions(current, revs, []).delete] == [1, 2, 3, 4, 5]


def test_pods_carry_their_revision() -> None:
    from scheduler.controllers import REVISION_ANNOTATION

    dep = make_deployment(1)
    assert validate(pod_from_template(dep, 4))["metadata"]["annotations"] == {"team": "blue", REVISION_ANNOTATION: "4"}


# --- conditions: Available and Progressing, as Kubernetes' Deployment controller sets them ---

T0 = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC).timestamp()


def conditions_by_type(status: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_complete_rollout_is_available_and_has_successfully_progressed() -> None:
    dep = make_deployment(3)
    plan = plan_deployment(dep, [owned_pod(dep) for _ in range(3)], now=T0)
    cond = conditions_by_type(plan.status)
    assert (cond["Available"]["status"], cond["Available"]["reason"]) == ("True", "MinimumReplicasAvailable")
    assert (cond["Progressing"]["status"], cond["Progressing"]["reason"]) == ("True", "NewReplicaSetAvailable")
    assert cond["Progressing"]["message"] == 'Deployment "web" has successfully progressed.'


def test_progress_moves_last_update_time_and_a_stalled_rollout_times_out_after_the_deadline() -> None:
    dep = make_deployment(2)
    dep["spec"]["progressDeadlineSeconds"] = 30
    stuck = [owned_pod(dep, ready=False) for _ in range(2)]
    first = plan_deployment(dep, stuck, now=T0)
    progressing = conditions_by_type(first.status)["Progressing"]
    assert (progressing["status"], progressing["reason"]) == ("True", "ReplicaSetUpdated")
    assert conditions_by_type(first.status)["Available"]["status"] == "False"  # 0 of 2, maxUnavailable 0
    assert first.recheck_in == 30  # the controller looks again when the deadline passes

    dep["status"] = first.status
    later = plan_deployment(dep, stuck, now=T0 + 20)  # no progress, within the deadline
    assert conditions_by_type(later.status)["Progressing"] == progressing
    assert later.recheck_in == 10

    dep["status"] = later.status
    late = plan_deployment(dep, stuck, now=T0 + 31)
    timed_out = conditions_by_type(late.status)["Progressing"]
    assert (timed_out["status"], timed_out["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert timed_out["message"] == 'Deployment "web" has timed out progressing.'
    assert timed_out["lastTransitionTime"] == "2024-05-01T12:00:31Z"

    # It stays timed out until progress resumes: a pod becoming ready is progress.
    dep["status"] = late.status
    assert conditions_by_type(plan_deployment(dep, stuck, now=T0 + 100).status)["Progressing"] == timed_out
    better = [owned_pod(dep), stuck[1]]
    resumed = conditions_by_type(plan_deployment(dep, better, now=T0 + 101).status)["Progressing"]
    assert (resumed["status"], resumed["reason"]) == ("True", "ReplicaSetUpdated")
    assert resumed["lastUpdateTime"] == "2024-05-01T12:01:41Z"


def test_a_completed_rollout_does_not_time_out_when_a_pod_is_lost_later() -> None:
    dep = make_deployment(2)
    dep["spec"]["progressDeadlineSeconds"] = 5
    done = plan_deployment(dep, [owned_pod(dep), owned_pod(dep)], now=T0)
    dep["status"] = done.status
    one_lost = plan_deployment(dep, [owned_pod(dep), owned_pod(dep, ready=False)], now=T0 + 60)
    cond = conditions_by_type(one_lost.status)
    assert cond["Progressing"]["reason"] == "NewReplicaSetAvailable"
    # maxUnavailable 25% of 2 rounds down to 0: with one pod lost the Deployment is not available.
    assert (cond["Available"]["status"], cond["Available"]["reason"]) == ("False", "MinimumReplicasUnavailable")


def test_conditions_do_not_change_when_nothing_does() -> None:
    dep = make_deployment(3)
    pods = [owned_pod(dep) for _ in range(3)]
    dep["status"] = plan_deployment(dep, pods, now=T0).status
    assert plan_deployment(dep, pods, now=T0 + 3600).status == dep["status"]  # no write, no churn


def test_deployment_conditions_directly() -> None:
    dep = make_deployment(4)
    status = {"observedGeneration": 1, "replicas": 4, "updatedReplicas": 4, "readyReplicas": 3,
              "availableReplicas": 3, "unavailableReplicas": 1}
    conditions, deadline_in = deployment_conditions(dep, status, T0)
    by_type = {c["type"]: c for c in conditions}
    assert by_type["Available"]["status"] == "True"  # 3 >= 4 - 1
    assert by_type["Progressing"]["reason"] == "ReplicaSetUpdated" and deadline_in == 600
