"""How the scheduler merges a node's pod status report: pure, no cluster."""

from __future__ import annotations

from scheduler.registry import keep_transition_times


def test_a_condition_keeps_its_transition_time_until_its_status_changes() -> None:
    current = [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-27T10:00:00Z"},
               {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-27T10:00:00Z"}]
    reported = [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-27T11:00:00Z"},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                 "lastTransitionTime": "2026-11-27T11:00:00Z"},
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-27T11:00:00Z"}]
    merged = keep_transition_times(current, reported)
    assert [(c["type"], c["lastTransitionTime"]) for c in merged] == [
        ("Ready", "2026-11-27T10:00:00Z"),  # unchanged: the old time stays
        ("ContainersReady", "2026-11-27T11:00:00Z"),  # changed: the report's time
        ("Initialized", "2026-11-27T11:00:00Z"),  # new
    ]
    assert merged[1]["reason"] == "ContainersNotReady"
    assert reported[0]["lastTransitionTime"] == "2026-11-27T11:00:00Z", "the report itself is left alone"
