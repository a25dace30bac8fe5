from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Resources(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes", "pods")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    pods: int
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., pods: _Optional[int] = ...) -> None: ...

class NodeAddress(_message.Message):
    __slots__ = ("type", "address")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    type: str
    address: str
    def __init__(self, type: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node_name", "labels", "capacity", "allocatable", "addresses", "agent_version", "kernel_version", "cgroup_driver", "agent_endpoint", "metrics_endpoint")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ALLOCATABLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CGROUP_DRIVER_FIELD_NUMBER: _ClassVar[int]
    AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    METRICS_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    labels: _containers.ScalarMap[str, str]
    capacity: Resources
    allocatable: Resources
    addresses: _containers.RepeatedCompositeFieldContainer[NodeAddress]
    agent_version: str
    kernel_version: str
    cgroup_driver: str
    agent_endpoint: str
    metrics_endpoint: str
    def __init__(self, node_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capacity: _Optional[_Union[Resources, _Mapping]] = ..., allocatable: _Optional[_Union[Resources, _Mapping]] = ..., addresses: _Optional[_Iterable[_Union[NodeAddress, _Mapping]]] = ..., agent_version: _Optional[str] = ..., kernel_version: _Optional[str] = ..., cgroup_driver: _Optional[str] = ..., agent_endpoint: _Optional[str] = ..., metrics_endpoint: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("heartbeat_interval_seconds", "pod_cidr")
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_seconds: int
    pod_cidr: str
    def __init__(self, heartbeat_interval_seconds: _Optional[int] = ..., pod_cidr: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_name",)
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    def __init__(self, node_name: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class WatchAssignmentsRequest(_message.Message):
    __slots__ = ("node_name",)
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    def __init__(self, node_name: _Optional[str] = ...) -> None: ...

class NodeRoute(_message.Message):
    __slots__ = ("node_name", "pod_cidr", "address")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    pod_cidr: str
    address: str
    def __init__(self, node_name: _Optional[str] = ..., pod_cidr: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("pods_json", "resource_version", "routes", "pod_cidr")
    PODS_JSON_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    pods_json: _containers.RepeatedScalarFieldContainer[str]
    resource_version: int
    routes: _containers.RepeatedCompositeFieldContainer[NodeRoute]
    pod_cidr: str
    def __init__(self, pods_json: _Optional[_Iterable[str]] = ..., resource_version: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[NodeRoute, _Mapping]]] = ..., pod_cidr: _Optional[str] = ...) -> None: ...

class PodStatusReport(_message.Message):
    __slots__ = ("node_name", "namespace", "name", "uid", "status_json", "removed")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    namespace: str
    name: str
    uid: str
    status_json: str
    removed: bool
    def __init__(self, node_name: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ..., status_json: _Optional[str] = ..., removed: _Optional[bool] = ...) -> None: ...

class PodStatusAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
