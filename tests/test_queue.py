"""The scheduling queue and preemption's choices: pure, on a fake clock, no I/O."""

from __future__ import annotations

from typing import Any

from scheduler.framework import NodeInfo
from scheduler.plugins import Candidate, pick_candidate
from scheduler.queue import SchedulingQueue
from tests.test_scheduling_framework import framework, infos, make_node, make_pod


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pod(name: str, priority: int = 0, **kw: Any) -> dict[str, Any]:
    p = make_pod(name, **kw)
    p["metadata"]["uid"] = f"uid-{name}"
    p["spec"]["priority"] = priority
    return p


def names(pods: list[dict[str, Any]]) -> list[str]:
    return [p["metadata"]["name"] for p in pods]


def test_active_pods_come_out_by_priority_then_arrival() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    for name, prio in (("a", 0), ("b", 10), ("c", 0), ("d", 10)):
        q.add(pod(name, prio))
        clock.now += 1
    assert q.pending_pods() == {"active": 4, "backoff": 0, "unschedulable": 0}
    assert names(q.pop_all()) == ["b", "d", "a", "c"]
    assert q.pending_pods() == {"active": 0, "backoff": 0, "unschedulable": 0}
    assert q.add(pod("a")) is False  # in flight: not queued twice


def test_backoff_doubles_from_one_second_to_ten() -> None:
    q = SchedulingQueue(Clock())
    assert [q.backoff_duration(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_a_failed_attempt_backs_off_then_is_active_again() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    q.add(pod("a"))
    (a,) = q.pop_all()
    q.failed(a, unschedulable=False)
    assert q.pending_pods()["backoff"] == 1 and q.next_wake() == 1.0
    clock.now += 0.5
    assert q.pop_all() == []
    clock.now += 0.5
    assert names(q.pop_all()) == ["a"]
    q.failed(a, unschedulable=False)
    clock.now += 1.5
    assert q.pop_all() == []  # second failure: 2 s
    clock.now += 0.5
    assert names(q.pop_all()) == ["a"]


def test_unschedulable_pods_wait_for_a_cluster_event() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    q.add(pod("a"))
    (a,) = q.pop_all()
    q.failed(a, unschedulable=True)
    clock.now += 30
    assert q.pop_all() == [] and q.pending_pods()["unschedulable"] == 1
    assert q.move_all("NodeAdd") == 1
    assert names(q.pop_all()) == ["a"]


def test_a_moved_pod_still_backing_off_waits_in_backoff() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    q.add(pod("a"))
    (a,) = q.pop_all()
    q.failed(a, unschedulable=True)
    q.move_all("NodeAdd")
    assert q.pending_pods() == {"active": 0, "backoff": 1, "unschedulable": 0}
    clock.now += 1
    assert names(q.pop_all()) == ["a"]


def test_unschedulable_pods_are_flushed_after_the_limit() -> None:
    clock = Clock()
    q = SchedulingQueue(clock, max_unschedulable_seconds=60)
    q.add(pod("a"))
    q.failed(q.pop_all()[0], unschedulable=True)
    clock.now += 59
    assert q.pop_all() == []
    clock.now += 1
    assert names(q.pop_all()) == ["a"]


def test_an_event_during_the_attempt_sends_the_pod_to_backoff_not_to_wait() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    q.add(pod("a"))
    (a,) = q.pop_all()
    q.move_all("AssignedPodDelete")  # arrives while "a" is being tried on an older snapshot
    q.failed(a, unschedulable=True)
    assert q.pending_pods() == {"active": 0, "backoff": 1, "unschedulable": 0}


def test_a_spec_change_retries_an_unschedulable_pod_but_its_own_status_write_does_not() -> None:
    clock = Clock()
    q = SchedulingQueue(clock)
    a = pod("a")
    q.add(a)
    q.failed(q.pop_all()[0], unschedulable=True)
    clock.now += 5
    q.update({**a, "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}})
    assert q.where("uid-a") == "unschedulable"
    q.update({**a, "metadata": {**a["metadata"], "labels": {"new": "label"}}})
    assert q.where("uid-a") == "active"


def test_a_deleted_pod_is_forgotten_even_in_flight() -> None:
    q = SchedulingQueue(Clock())
    q.add(pod("a"))
    q.add(pod("b"))
    q.delete("uid-b")
    (a,) = q.pop_all()
    q.delete("uid-a")
    q.failed(a, unschedulable=False)
    assert q.uids() == set()


# --- preemption ------------------------------------------------------------------------------


def bound(name: str, node: str, cpu: str, priority: int = 0) -> dict[str, Any]:
    p = pod(name, priority, cpu=cpu, node=node)
    return p


def test_candidates_rank_by_highest_victim_then_sum_then_count() -> None:
    def c(node: str, *prios: int) -> Candidate:
        return Candidate(node, tuple(pod(f"{node}-{i}", p) for i, p in enumerate(prios)))

    assert pick_candidate([c("n1", 5), c("n2", 1, 1, 1)]).node == "n2"  # type: ignore[union-attr]
    assert pick_candidate([c("n1", 5, 5), c("n2", 5, 1)]).node == "n2"  # type: ignore[union-attr]
    assert pick_candidate([c("n1", 1, 1), c("n2", 2)]).node == "n1"  # type: ignore[union-attr]
    assert pick_candidate([c("n1", -5, -5), c("n2", -5)]).node == "n2"  # type: ignore[union-attr]
    assert pick_candidate([c("n1", 3), c("n2", 3)]).node == "n1"  # type: ignore[union-attr]
    assert pick_candidate([]) is None


def test_preemption_evicts_as_few_and_as_unimportant_pods_as_it_can() -> None:
    nodes = [make_node("n1", cpu="4"), make_node("n2", cpu="4")]
    pods = [bound("n1-big", "n1", "3", priority=50), bound("n1-small", "n1", "1", priority=10),
            bound("n2-a", "n2", "2", priority=10), bound("n2-b", "n2", "2", priority=20)]
    d = framework(preemption=True).schedule(pod("high", 100, cpu="2"), infos(nodes, pods))
    assert d.node is None
    # n1: evicting n1-small frees only 1 cpu; n1-big must go (priority 50). n2: n2-a (10) suffices.
    assert d.nominated_node == "n2" and names(list(d.victims)) == ["n2-a"]
    assert d.message == "0/2 nodes are available: 2 Insufficient cpu."


def test_pods_of_equal_or_higher_priority_are_never_victims() -> None:
    nodes = [make_node("n1", cpu="2")]
    d = framework(preemption=True).schedule(pod("p", 10, cpu="2"), infos(nodes, [bound("same", "n1", "2", 10)]))
    assert d.nominated_node is None
    assert d.message.endswith("preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.")


def test_preemption_policy_never_and_unresolvable_nodes() -> None:
    nodes = [make_node("n1", cpu="2"), make_node("n2", cpu="2", labels={"disk": "hdd"})]
    pods = [bound("low", "n1", "2", 0), bound("low2", "n2", "2", 0)]
    never = pod("p", 10, cpu="2")
    never["spec"]["preemptionPolicy"] = "Never"
    d = framework(preemption=True).schedule(never, infos(nodes, pods))
    assert d.nominated_node is None and d.message.endswith("preemption: not eligible due to preemptionPolicy=Never.")
    picky = pod("q", 10, cpu="2")
    picky["spec"]["nodeSelector"] = {"disk": "ssd"}
    d = framework(preemption=True).schedule(picky, infos(nodes, pods))
    assert d.message.endswith("preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.")


def test_a_nominated_pod_waits_for_its_terminating_victims() -> None:
    nodes = [make_node("n1", cpu="2")]
    going = bound("victim", "n1", "2", 0)
    going["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    preemptor = pod("p", 10, cpu="2")
    preemptor["status"]["nominatedNodeName"] = "n1"
    d = framework(preemption=True).schedule(preemptor, infos(nodes, [going, bound("other", "n1", "0", 0)]))
    assert d.nominated_node is None and d.victims == ()
    assert "not eligible due to a terminating pod on the nominated node" in d.message


def test_node_info_without_takes_pods_away_and_adds_others() -> None:
    info = infos([make_node("n1", cpu="4")], [bound("a", "n1", "1"), bound("b", "n1", "2")])[0]
    trial = info.without({"uid-a"}, [pod("c", cpu="500m")])
    assert isinstance(trial, NodeInfo) and names(trial.pods) == ["b", "c"] and trial.requested_cpu == 2500
    assert info.requested_cpu == 3000
