"""The pure core of node lifecycle, eviction, admission and drain: plain dicts, no cluster."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cli.rollout import (
    RolloutError,
    choose_revision,
    drain_plan,
    history_table,
    owned_revisions,
    rollout_status,
)
from scheduler.controllers import (
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    desired_condition_taints,
    eviction_deadline,
    plan_evictions,
    plan_node,
    plan_pod_gc,
)
from scheduler.registry import default_tolerations, merge_patch

Obj = dict[str, Any]
NOW = "2024-05-01T10:00:00Z"
T0 = 1714557600.0  # NOW as epoch seconds


def node(ready: str | None = "True", taints: list[Obj] | None = None, name: str = "n1") -> Obj:
    n: Obj = {"kind": "Node", "metadata": {"name": name}, "spec": {}, "status": {"conditions": []}}
    if ready is not None:
        n["status"]["conditions"].append({"type": "Ready", "status": ready})
    if taints is not None:
        n["spec"]["taints"] = taints
    return n


def pod(name: str = "p", node_name: str = "n1", tolerations: list[Obj] | None = None, **md: Any) -> Obj:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "ns", **md},
            "spec": {"nodeName": node_name, "tolerations": tolerations or []}, "status": {"phase": "Running"}}


def keys(taints: list[Obj] | None) -> set[tuple[str, str]]:
    return {(t["key"], t["effect"]) for t in taints or ()}


# --- conditions and taints -----------------------------------------------------------


def test_a_lapsed_lease_marks_the_node_unknown_and_unreachable() -> None:
    plan = plan_node(node("True"), lease_age=41, grace=40, now=NOW)
    assert plan.mark_unknown
    assert keys(plan.taints) == {(TAINT_UNREACHABLE, "NoSchedule"), (TAINT_UNREACHABLE, "NoExecute")}
    no_execute = next(t for t in plan.taints or () if t["effect"] == "NoExecute")
    assert no_execute["timeAdded"] == NOW


def test_a_fresh_lease_changes_nothing_and_an_unseen_one_is_not_a_lapse() -> None:
    assert plan_node(node("True"), lease_age=39, grace=40, now=NOW).taints is None
    assert not plan_node(node("True"), lease_age=None, grace=40, now=NOW).mark_unknown


def test_not_ready_gets_not_ready_taints_and_ready_loses_them_keeping_others() -> None:
    plan = plan_node(node("False"), lease_age=1, grace=40, now=NOW)
    assert not plan.mark_unknown
    assert keys(plan.taints) == {(TAINT_NOT_READY, "NoSchedule"), (TAINT_NOT_READY, "NoExecute")}
    dedicated = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    back = node("True", taints=[dedicated, {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": NOW},
                                {"key": TAINT_UNREACHABLE, "effect": "NoSchedule"}])
    assert plan_node(back, lease_age=0, grace=40, now=NOW).taints == [dedicated]


def test_existing_taints_keep_their_time_added() -> None:
    earlier = "2024-05-01T09:00:00Z"
    n = node("Unknown", taints=[{"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": earlier},
                                {"key": TAINT_UNREACHABLE, "effect": "NoSchedule"}])
    assert plan_node(n, lease_age=100, grace=40, now=NOW).taints is None
    assert desired_condition_taints(n, NOW)[0]["timeAdded"] == earlier


# --- eviction ----------------------------------------------------------------------------


UNREACHABLE = {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": NOW}


def test_untolerated_no_execute_evicts_at_once_and_toleration_seconds_delay_it() -> None:
    tainted = {"n1": node("Unknown", taints=[UNREACHABLE])}
    bare = pod("bare")
    patient = pod("patient", tolerations=[{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                                           "tolerationSeconds": 300}])
    forever = pod("forever", tolerations=[{"operator": "Exists"}])
    assert eviction_deadline(bare, [UNREACHABLE]) == (0.0, UNREACHABLE)
    assert eviction_deadline(patient, [UNREACHABLE])[0] == T0 + 300
    assert eviction_deadline(forever, [UNREACHABLE]) == (None, None)
    evict, next_due = plan_evictions([bare, patient, forever], tainted, T0 + 10)
    assert [e.pod["metadata"]["name"] for e in evict] == ["bare"]
    assert next_due == T0 + 300
    evict, _ = plan_evictions([bare, patient, forever], tainted, T0 + 300)
    assert [e.pod["metadata"]["name"] for e in evict] == ["bare", "patient"]


def test_the_shortest_matching_toleration_wins_and_terminating_pods_are_left_alone() -> None:
    tainted = {"n1": node("Unknown", taints=[UNREACHABLE])}
    two = pod("two", tolerations=[{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                                   "tolerationSeconds": 60},
                                  {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}])
    assert eviction_deadline(two, [UNREACHABLE])[0] == T0 + 5
    going = pod("going", deletionTimestamp=NOW)
    assert plan_evictions([going], tainted, T0 + 1000) == ([], None)
    assert plan_evictions([pod("elsewhere", node_name="n2")], tainted, T0 + 1000) == ([], None)


def test_pods_of_an_unreachable_node_are_removed_once_their_grace_period_is_over() -> None:
    unreachable = {"n1": node("Unknown", taints=[UNREACHABLE])}
    not_ready = {"n1": node("False", taints=[{"key": TAINT_NOT_READY, "effect": "NoExecute", "timeAdded": NOW}])}
    marked = pod("marked", deletionTimestamp="2024-05-01T10:00:30Z")
    assert plan_pod_gc([marked, pod("running")], unreachable, T0 + 29) == []
    assert plan_pod_gc([marked], unreachable, T0 + 30) == [marked]
    assert plan_pod_gc([marked], not_ready, T0 + 3000) == []  # its agent still answers: it confirms


# --- admission -----------------------------------------------------------------------------


def test_default_toleration_seconds_added_unless_already_tolerated() -> None:
    spec: Obj = {}
    default_tolerations(spec, 300, 300)
    assert spec["tolerations"] == [
        {"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    ]
    again = copy.deepcopy(spec)
    default_tolerations(again, 300, 300)
    assert again == spec  # idempotent: a re-applied pod stays equal
    everything: Obj = {"tolerations": [{"operator": "Exists"}]}
    default_tolerations(everything, 300, 300)
    assert everything == {"tolerations": [{"operator": "Exists"}]}
    own: Obj = {"tolerations": [{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                                 "tolerationSeconds": 10}]}
    default_tolerations(own, 300, 60)
    assert [t["key"] for t in own["tolerations"]] == [TAINT_UNREACHABLE, TAINT_NOT_READY]
    assert own["tolerations"][0]["tolerationSeconds"] == 10


def test_merge_patch() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2}}, {"b": {"d": 3}, "a": None}) == {"b": {"c": 2, "d": 3}}
    assert merge_patch({"taints": [1, 2]}, {"taints": [3]}) == {"taints": [3]}
    assert merge_patch({}, {"unschedulable": True}) == {"unschedulable": True}


# --- drain and rollout (the CLI's pure part) --------------------------------------------------


def test_drain_refuses_unmanaged_pods_without_force() -> None:
    owned = pod("owned", ownerReferences=[{"kind": "Deployment", "name": "d", "uid": "u", "controller": True}])
    bare = pod("bare")
    done = pod("done")
    done["status"]["phase"] = "Succeeded"
    other = pod("other", node_name="n2")
    plan = drain_plan("n1", [owned, bare, done, other])
    assert [p["metadata"]["name"] for p in plan.delete] == ["owned", "done"]
    assert plan.names(plan.unmanaged) == "ns/bare"
    forced = drain_plan("n1", [owned, bare, done, other], force=True)
    assert [p["metadata"]["name"] for p in forced.delete] == ["owned", "bare", "done"] and not forced.unmanaged


def dep_with(status: Obj, generation: int = 2, replicas: int = 3) -> Obj:
    return {"metadata": {"name": "web", "generation": generation, "uid": "u1",
                         "annotations": {"deployment.kubernetes.io/revision": "3"}},
            "spec": {"replicas": replicas}, "status": status}


def test_rollout_status_says_what_it_waits_for_as_kubectl() -> None:
    assert rollout_status(dep_with({"observedGeneration": 1})) == (
        "Waiting for deployment spec update to be observed...", False)
    base = {"observedGeneration": 2}
    assert rollout_status(dep_with({**base, "updatedReplicas": 1, "replicas": 3}))[0] == (
        'Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have been updated...')
    assert rollout_status(dep_with({**base, "updatedReplicas": 3, "replicas": 4}))[0] == (
        'Waiting for deployment "web" rollout to finish: 1 old replicas are pending termination...')
    assert rollout_status(dep_with({**base, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 2}))[0] == (
        'Waiting for deployment "web" rollout to finish: 2 of 3 updated replicas are available...')
    assert rollout_status(dep_with({**base, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3})) == (
        'deployment "web" successfully rolled out', True)
    timed_out = {**base, "updatedReplicas": 1, "replicas": 3, "conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}
    with pytest.raises(RolloutError, match='deployment "web" exceeded its progress deadline'):
        rollout_status(dep_with(timed_out))


def test_undo_picks_the_previous_revision_or_the_one_asked_for() -> None:
    dep = dep_with({})

    def rev(n: int, owner: str = "u1") -> Obj:
        return {"metadata": {"name": f"web-{n}", "ownerReferences": [{"uid": owner, "controller": True}]},
                "revision": n}

    revisions = owned_revisions(dep, [rev(3), rev(1), rev(2), rev(7, owner="other")])
    assert [r["revision"] for r in revisions] == [1, 2, 3]
    assert choose_revision(dep, revisions)["revision"] == 2
    assert choose_revision(dep, revisions, 1)["revision"] == 1
    import pytest


    with pytest.raises(RolloutError, match="unable to find specified revision 9"):
        choose_revision(dep, revisions, 9)
    with pytest.raises(RolloutError, match="no rollout history"):
        choose_revision(dep, [])
    assert history_table(revisions).splitlines() == ["REVISION  CHANGE-CAUSE", "1         <none>",
                                                     "2         <none>", "3         <none>"]
