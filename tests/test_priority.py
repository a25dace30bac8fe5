"""PriorityClass validation and the Priority admission of pods, on a real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aetcd
import pytest

from apimachinery.errors import ValidationError
from apimachinery.meta import POD
from apimachinery.validation import validate
from scheduler.registry import Registry
from scheduler.store import Store
from tests.etcd_fixture import EtcdServer, running_etcd


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


def pc(name: str, value: int, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
            "value": value, **fields}


def pod(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "prio"},
            "spec": {"containers": [{"name": "c", "image": "host"}], **spec}}


def errors(e: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return [f"{fe.path}: {fe.message}" for fe in e.value.errors]


def test_a_priority_class_is_validated_whole() -> None:
    assert validate(pc("high", 1000)) == {**pc("high", 1000), "globalDefault": False,
                                          "preemptionPolicy": "PreemptLowerPriority"}
    with pytest.raises(ValidationError) as e:
        validate(pc("x", 2_000_000_000, preemptionPolicy="Sometimes", spec={}))
    assert errors(e) == ["value: must be between -2147483648 and 1000000000, got 2000000000",
                         'preemptionPolicy: must be one of "PreemptLowerPriority", "Never", got string "Sometimes"',
                         "spec: unknown field"]
    with pytest.raises(ValidationError) as e:
        validate(pc("system-mine", 1))
    assert errors(e) == ['metadata.name: the prefix "system-" is reserved for the system priority classes']


def test_pods_get_their_priority_from_their_class_or_the_default(etcd: EtcdServer) -> None:
    async def body() -> None:
        store = Store(aetcd.Client(host=etcd.host, port=etcd.port, timeout=5), prefix=etcd.prefix())
        try:
            reg = Registry(store)
            await reg.apply([pc("high", 1000, preemptionPolicy="Never"), pc("usual", 10, globalDefault=True)])
            await reg.apply([pod("a", priorityClassName="high"), pod("b")])
            a, b = await store.get(POD, "prio", "a"), await store.get(POD, "prio", "b")
            assert (a["spec"]["priority"], a["spec"]["preemptionPolicy"]) == (1000, "Never")
            assert (b["spec"]["priorityClassName"], b["spec"]["priority"]) == ("usual", 10)
            # Applied again unchanged: the resolved fields match, nothing is "immutable".
            assert [r.action for r in await reg.apply([pod("a", priorityClassName="high")])] == ["unchanged"]

            with pytest.raises(ValidationError) as e:
                await reg.apply([pod("c", priorityClassName="nope")])
            assert errors(e) == [("document 0 (Pod/c): spec.priorityClassName: no PriorityClass with name nope "
                                  "was found")]
            with pytest.raises(ValidationError) as e:
                await reg.apply([pod("d", priorityClassName="high", priority=5)])
            assert "spec.priority: the integer value of priority (5) must not be provided" in str(e.value)
            with pytest.raises(ValidationError) as e:
                await reg.apply([pc("other", 1, globalDefault=True)])
            assert errors(e) == [("document 0 (PriorityClass/other): globalDefault: PriorityClass usual is already "
                                  "marked as default. Only one default can exist")]
            with pytest.raises(ValidationError) as e:
                await reg.apply([pc("high", 2000)])
            assert errors(e) == ["value: may not be changed in an update"]
            assert [r.action for r in await reg.apply([pc("high", 1000, description="d")])] == ["configured"]
        finally:
            await store.client.delete_prefix(f"{store.prefix}/".encode())
            await store.close()

    asyncio.run(asyncio.wait_for(body(), 30))
