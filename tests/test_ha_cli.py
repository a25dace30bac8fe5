"""The pure parts of high availability in the command lines: several scheduler addresses,
the lab's scheduler rows and leader line, the scheduler's election flags."""

from __future__ import annotations

import argparse

import pytest

from agent.main import parse_addresses
from cli import printers
from cli.client import split_servers
from cli.main import build_parser
from scheduler.main import parse_args


def test_addresses_are_comma_separated() -> None:
    assert split_servers("127.0.0.1:1, 127.0.0.1:2,") == ["127.0.0.1:1", "127.0.0.1:2"]
    assert parse_addresses("a:1,b:2") == ("a:1", "b:2")
    for bad in ("", "a", "a:x", ":1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_addresses(bad)


def test_lab_status_shows_every_scheduler_and_marks_the_leader() -> None:
    status = {"lab_dir": "/l", "server": "127.0.0.1:1,127.0.0.1:2", "etcd": "127.0.0.1:3",
              "etcd_process": {"pid": 10, "alive": True, "log": "/l/etcd.log"},
              "schedulers": [
                  {"name": "scheduler-1", "pid": 11, "alive": False, "leader": False, "address": "127.0.0.1:1",
                   "log": "/l/s1.log"},
                  {"name": "scheduler-2", "pid": 12, "alive": True, "leader": True, "address": "127.0.0.1:2",
                   "log": "/l/s2.log"}],
              "leader": {"holder": "vm_12_ab", "pid": 12, "since": "2024-05-01T10:00:00Z"},
              "agents": []}
    lines = printers.lab_status(status).splitlines()
    assert lines[:3] == ["server:   127.0.0.1:1,127.0.0.1:2", "lab dir:  /l",
                         "leader:   vm_12_ab (since 2024-05-01T10:00:00Z)"]
    assert lines[6].split() == ["scheduler-1", "11", "dead", "127.0.0.1:1", "-", "/l/s1.log"]
    assert lines[7].split() == ["scheduler-2", "12", "running,leader", "127.0.0.1:2", "-", "/l/s2.log"]
    assert "leader:   <none>" in printers.lab_status({**status, "leader": None})


def test_lease_table_shows_the_holder() -> None:
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "orch-scheduler", "namespace": "kube-system",
                          "creationTimestamp": "2024-05-01T10:00:00Z"},
             "spec": {"holderIdentity": "vm_12_ab"}}
    assert printers.table_header("Lease") == ["NAME", "HOLDER", "AGE"]
    assert printers.table_row("Lease", lease)[:2] == ["orch-scheduler", "vm_12_ab"]


def test_lab_up_takes_a_number_of_schedulers() -> None:
    assert build_parser().parse_args(["lab", "up", "--schedulers", "3"]).schedulers == 3
    assert build_parser().parse_args(["lab", "up"]).schedulers == 1


def test_scheduler_election_flags_like_kube_scheduler() -> None:
    args = parse_args([])
    assert args.leader_elect is True and args.leader_elect_lease_duration == 15.0
    assert parse_args(["--leader-elect=false"]).leader_elect is False
    with pytest.raises(SystemExit):
        parse_args(["--leader-elect-lease-duration", "3", "--leader-elect-renew-deadline", "4"])
