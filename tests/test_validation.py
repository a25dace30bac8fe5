"""Validation and defaulting of Pods and Deployments: every problem, named by its path."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apimachinery.errors import FieldError, ValidationError
from apimachinery.validation import (
    SUPPORTED_KINDS,
    container_limits,
    container_requests,
    default_image_pull_policy,
    pod_requests,
    validate,
    validate_node_spec,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NGINX_DEPLOYMENT = yaml.safe_load("""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
    app.kubernetes.io/part-of: shop
  annotations:
    kubernetes.io/change-cause: "image updated to 1.25"
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
        tier: frontend
    spec:
      containers:
      - name: nginx
        image: nginx:1.25.3
        imagePullPolicy: IfNotPresent
        ports:
        - name: http
          containerPort: 80
          protocol: TCP
        env:
        - name: NGINX_PORT
          value: "80"
        - name: LOG_LEVEL
          value: info
        resources:
          requests:
            cpu: 100m
            memory: 64Mi
          limits:
            cpu: 500m
            memory: 128Mi
        readinessProbe:
          httpGet:
            path: /
            port: http
          initialDelaySeconds: 5
          periodSeconds: 10
        livenessProbe:
          tcpSocket:
            port: 80
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
""")

BATCH_POD = yaml.safe_load("""
apiVersion: v1
kind: Pod
metadata:
  name: pi
  namespace: batch
spec:
  restartPolicy: Never
  containers:
  - name: pi
    image: perl:5.34.0
    command: ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]
    resources:
      limits:
        cpu: "1"
        memory: 256Mi
    securityContext:
      runAsUser: 1000
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      capabilities:
        drop: ["ALL"]
""")


def minimal_pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}], **spec},
    }


def minimal_deployment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
            },
            **spec,
        },
    }


def errors_of(obj: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        validate(obj)
    return [str(e) for e in info.value.errors]


def assert_contains(result: Any, given: Any, path: str = "") -> None:
    """Everything in ``given`` is in ``result`` unchanged (defaults may be added around it)."""
    if isinstance(given, dict):
        assert isinstance(result, dict), path
        for k, v in given.items():
            assert k in result, f"{path}.{k} was dropped"
            assert_contains(result[k], v, f"{path}.{k}")
    elif isinstance(given, list):
        assert isinstance(result, list) and len(result) == len(given), path
        for i, (r, g) in enumerate(zip(result, given, strict=True)):
            assert_contains(r, g, f"{path}[{i}]")
    else:
        assert result == given and type(result) is type(given), path


def shares_containers(a: Any, b: Any) -> bool:
    """Whether any dict or list inside ``a`` is the very same object as one inside ``b``."""
    def ids(x: Any, out: set[int]) -> set[int]:
        if isinstance(x, (dict, list)):
            out.add(id(x))
            for v in x.values() if isinstance(x, dict) else x:
                ids(v, out)
        return out
    return bool(ids(a, set()) & ids(b, set()))


# --- real manifests ------------------------------------------------------------------------


def test_nginx_deployment_validates_unchanged() -> None:
    result = validate(NGINX_DEPLOYMENT)
    assert_contains(result, NGINX_DEPLOYMENT)
    spec = result["spec"]
    assert spec["revisionHistoryLimit"] == 10
    assert spec["progressDeadlineSeconds"] == 600
    assert spec["minReadySeconds"] == 0
    assert result["metadata"]["namespace"] == "default"
    pod_spec = spec["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Always"
    assert pod_spec["terminationGracePeriodSeconds"] == 30
    assert pod_spec["schedulerName"] == "default-scheduler"
    assert pod_spec["containers"][0]["readinessProbe"] == {
        "httpGet": {"path": "/", "port": "http", "scheme": "HTTP"},
        "initialDelaySeconds": 5, "periodSeconds": 10,
        "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3,
    }


def test_batch_pod_validates_unchanged() -> None:
    result = validate(BATCH_POD)
    assert_contains(result, BATCH_POD)
    container = result["spec"]["containers"][0]
    assert result["spec"]["restartPolicy"] == "Never"
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "256Mi"}
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_kubectl_generated_manifest_with_nulls_and_empty_status() -> None:
    # What `kubectl create deployment web --image=nginx --dry-run=client -o yaml` prints.
    manifest = yaml.safe_load("""
apiVersion: apps/v1
kind: Deployment
metadata:
  creationTimestamp: null
  labels:
    app: web
  name: web
spec:
  replicas: 1
  selector:
    matchLabels:
      app: web
  strategy: {}
  template:
    metadata:
      creationTimestamp: null
      labels:
        app: web
    spec:
      containers:
      - image: nginx
        name: nginx
        resources: {}
status: {}
""")
    result = validate(manifest)
    assert "status" not in result
    assert "creationTimestamp" not in result["metadata"]
    assert result["spec"]["strategy"] == {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    assert result["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Always"


def test_validated_objects_validate_to_themselves() -> None:
    for manifest in (NGINX_DEPLOYMENT, BATCH_POD, minimal_pod(), minimal_deployment()):
        once = validate(manifest)
        assert validate(once) == once


# --- the messages the brief promises --------------------------------------------------------


def test_memory_quantity_message() -> None:
    pod = minimal_pod()
    pod["spec"]["containers"][0]["resources"] = {"limits": {"memory": "64MB"}}
    assert errors_of(pod) == [
        'spec.containers[0].resources.limits.memory: "64MB" is not a quantity; use 64Mi or 67108864'
    ]


def test_every_problem_is_reported() -> None:
    pod = minimal_pod(restartPolicy="Sometimes")
    pod["metadata"]["name"] = "Web_1"
    pod["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "lots"}}
    with pytest.raises(ValidationError) as info:
        validate(pod)
    assert info.value.errors == [
        FieldError("metadata.name", '"Web_1" must consist of lower case alphanumeric characters, \'-\' or \'.\', '
                                    "and must start and end with an alphanumeric character (e.g. 'example.com')"),
        FieldError("spec.containers[0].resources.limits.cpu", '"lots" is not a CPU quantity; use 500m or 0.5'),
        FieldError("spec.restartPolicy", 'must be one of "Always", "OnFailure", "Never", got string "Sometimes"'),
    ]


def test_problems_in_several_containers_and_the_deployment_are_all_reported() -> None:
    dep = minimal_deployment(replicas=-1)
    dep["spec"]["template"]["spec"]["containers"] = [
        {"name": "a", "image": "x", "ports": [{"containerPort": 70000}]},
        {"name": "b", "image": "", "env": [{"name": "1BAD"}]},
    ]
    # In the order they appear in the document.
    assert errors_of(dep) == [
        "spec.template.spec.containers[0].ports[0].containerPort: must be between 1 and 65535, got 70000",
        "spec.template.spec.containers[1].image: must not be empty",
        "spec.template.spec.containers[1].env[0].name: \"1BAD\" is not a valid environment variable name: "
        "use letters, digits, '_', '-' or '.', not starting with a digit",
        "spec.replicas: must be between 0 and 2147483647, got -1",
    ]


def test_unknown_fields_at_every_depth() -> None:
    dep = minimal_deployment(replica=3)
    dep["extra"] = 1
    dep["metadata"]["lables"] = {"a": "b"}
    dep["spec"]["selector"]["matchExpression"] = []
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["imagee"] = "nginx"
    container["envFrom"] = [{"configMapRef": {"name": "data"}}]
    container["resources"] = {"limits": {"memroy": "1Gi"}, "request": {}}
    container["livenessProbe"] = {"exec": {"command": ["true"], "cmd": []}}
    dep["spec"]["template"]["spec"]["tolerations"] = [{"key": "k", "operator": "Exists", "efect": "NoSchedule"}]
    assert errors_of(dep) == [
        "extra: unknown field",
        'metadata.lables: unknown field; did you mean "labels"?',
        'spec.selector.matchExpression: unknown field; did you mean "matchExpressions"?',
        'spec.template.spec.containers[0].imagee: unknown field; did you mean "image"?',
        "spec.template.spec.containers[0].envFrom: unknown field; orch does not support Kubernetes' envFrom",
        'spec.template.spec.containers[0].resources.limits.memroy: '
        'unknown resource; supported: cpu, memory, ephemeral-storage; did you mean "memory"?',
        'spec.template.spec.containers[0].resources.request: unknown field; did you mean "requests"?',
        'spec.template.spec.containers[0].livenessProbe.exec.cmd: unknown field; did you mean "command"?',
        'spec.template.spec.tolerations[0].efect: unknown field; did you mean "effect"?',
        'spec.replica: unknown field; did you mean "replicas"?',
    ]


def test_type_errors_name_the_expected_type() -> None:
    assert errors_of(minimal_deployment(replicas="3")) == ['spec.replicas: must be an integer, got string "3"']
    assert errors_of(minimal_deployment(replicas=True)) == ["spec.replicas: must be an integer, got boolean true"]
    assert errors_of(minimal_deployment(replicas=3.0)) == ["spec.replicas: must be an integer, got number 3.0"]
    assert errors_of(minimal_deployment(paused="yes")) == ['spec.paused: must be a boolean, got string "yes"']
    assert errors_of(minimal_pod(containers={})) == ["spec.containers: must be a list, got mapping"]
    assert errors_of(minimal_pod(nodeName=5)) == ["spec.nodeName: must be a string, got integer 5"]
    pod = minimal_pod()
    pod["spec"]["containers"][0]["command"] = ["sh", 1]
    assert errors_of(pod) == ["spec.containers[0].command[1]: must be a string, got integer 1"]


def test_top_level_shape() -> None:
    assert errors_of([]) == ["an object must be a mapping with apiVersion, kind and metadata, got list"]
    assert errors_of({}) == [
        "kind: is required; supported kinds: Deployment, Namespace, Pod, PriorityClass",
        "apiVersion: is required",
        "metadata: is required",
    ]
    assert errors_of({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}}) == [
        'kind: "Service" is not supported; supported kinds: Deployment, Namespace, Pod, PriorityClass'
    ]
    assert errors_of({"apiVersion": "v1", "kind": "pod", "metadata": {"name": "s"}}) == [
        'kind: "pod" is not supported; supported kinds: Deployment, Namespace, Pod, PriorityClass; did you mean "Pod"?'
    ]
    dep = minimal_deployment()
    dep["apiVersion"] = "extensions/v1beta1"
    assert errors_of(dep) == ['apiVersion: must be "apps/v1" for kind Deployment, got string "extensions/v1beta1"']
    pod = minimal_pod()
    del pod["spec"]
    assert errors_of(pod) == ["spec: is required"]
    assert set(SUPPORTED_KINDS) == {"Pod", "Deployment", "Namespace", "PriorityClass"}


def test_required_fields() -> None:
    pod = minimal_pod(containers=[{"image": "x"}, {"name": "b"}])
    del pod["metadata"]["name"]
    assert errors_of(pod) == [
        "metadata.name: is required",
        "spec.containers[0].name: is required",
        "spec.containers[1].image: is required",
    ]
    assert errors_of(minimal_pod(containers=[])) == ["spec.containers: must have at least one container"]


def test_null_is_absent() -> None:
    pod = minimal_pod(nodeName=None, restartPolicy=None, tolerations=None)
    pod["metadata"]["labels"] = None
    pod["spec"]["containers"][0]["resources"] = {"limits": None, "requests": {"cpu": None}}
    result = validate(pod)
    assert "nodeName" not in result["spec"] and "labels" not in result["metadata"]
    assert result["spec"]["restartPolicy"] == "Always"
    assert result["spec"]["containers"][0]["resources"] == {"requests": {}}
    # A required field that is null is missing.
    pod["spec"]["containers"][0]["image"] = None
    assert errors_of(pod) == ["spec.containers[0].image: is required"]


# --- defaults ----------------------------------------------------------------------------------


def test_pod_defaults() -> None:
    pod = minimal_pod()
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 80}]
    result = validate(pod)
    assert result["metadata"]["namespace"] == "default"
    assert result["spec"]["restartPolicy"] == "Always"
    assert result["spec"]["terminationGracePeriodSeconds"] == 30
    assert result["spec"]["schedulerName"] == "default-scheduler"
    assert result["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert result["spec"]["containers"][0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]


def test_deployment_defaults() -> None:
    result = validate(minimal_deployment())
    spec = result["spec"]
    assert spec["replicas"] == 1
    assert spec["revisionHistoryLimit"] == 10
    assert spec["minReadySeconds"] == 0
    assert spec["progressDeadlineSeconds"] == 600
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    assert spec["template"]["spec"]["restartPolicy"] == "Always"
    partial = validate(minimal_deployment(strategy={"rollingUpdate": {"maxSurge": 2}}))
    assert partial["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": "25%"}}
    recreate = validate(minimal_deployment(strategy={"type": "Recreate"}))
    assert recreate["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize(
    ("image", "policy"),
    [("nginx", "Always"), ("nginx:latest", "Always"), ("nginx:1.25", "IfNotPresent"),
     ("registry.local:5000/team/app", "Always"), ("registry.local:5000/team/app:v2", "IfNotPresent"),
     ("nginx@sha256:" + "a" * 64, "IfNotPresent"), ("host", "IfNotPresent"), ("host:latest", "IfNotPresent")],
)
def test_image_pull_policy_default(image: str, policy: str) -> None:
    assert default_image_pull_policy(image) == policy
    pod = minimal_pod()
    pod["spec"]["containers"][0]["image"] = image
    assert validate(pod)["spec"]["containers"][0]["imagePullPolicy"] == policy


def test_requests_default_to_limits() -> None:
    pod = minimal_pod()
    pod["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "250m"}}
    result = validate(pod)
    assert result["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "250m", "memory": "1Gi"}
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "250m"}


def test_input_is_not_mutated_and_nothing_is_shared() -> None:
    for manifest in (NGINX_DEPLOYMENT, BATCH_POD, {**minimal_pod(), "status": {"phase": "Running"}}):
        before = copy.deepcopy(manifest)
        result = validate(manifest)
        assert manifest == before
        assert not shares_containers(result, manifest)


# --- rules across fields -------------------------------------------------------------------------


def test_request_above_limit() -> None:
    pod = minimal_pod()
    pod["spec"]["containers"][0]["resources"] = {
        "requests": {"memory": "128Mi", "cpu": 2},
        "limits": {"memory": "64Mi", "cpu": "1500m"},
    }
    assert errors_of(pod) == [
        "spec.containers[0].resources.requests.memory: must be less than or equal to memory limit 64Mi",
        "spec.containers[0].resources.requests.cpu: must be less than or equal to cpu limit 1500m",
    ]


def test_selector_must_match_template() -> None:
    dep = minimal_deployment(selector={"matchLabels": {"app": "api"}})
    assert errors_of(dep) == ["spec.template.metadata.labels: selector does not match template labels"]
    dep = minimal_deployment(selector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]})
    validate(dep)
    assert errors_of(minimal_deployment(selector={})) == [
        "spec.selector: must not be empty: a Deployment finds its pods by their labels"
    ]
    del dep["spec"]["selector"]
    assert errors_of(dep) == ["spec.selector: is required"]


def test_deployment_template_rules() -> None:
    dep = minimal_deployment()
    dep["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    dep["spec"]["template"]["metadata"]["name"] = "ignored"
    assert errors_of(dep) == ['spec.template.spec.restartPolicy: must be "Always" in a Deployment, got "Never"']
    dep["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert "name" not in validate(dep)["spec"]["template"]["metadata"]


def test_strategy_rules() -> None:
    assert errors_of(minimal_deployment(strategy={"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}})) == [
        "spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0"
    ]
    assert errors_of(minimal_deployment(strategy={"type": "Recreate", "rollingUpdate": {}})) == [
        'spec.strategy.rollingUpdate: may not be specified when strategy type is "Recreate"'
    ]
    assert errors_of(minimal_deployment(strategy={"rollingUpdate": {"maxSurge": "3"}})) == [
        'spec.strategy.rollingUpdate.maxSurge: must be an integer or a percentage like "25%", got string "3"'
    ]
    assert errors_of(minimal_deployment(minReadySeconds=700)) == [
        "spec.progressDeadlineSeconds: must be greater than minReadySeconds (700)"
    ]


def test_container_rules() -> None:
    pod = minimal_pod(containers=[
        {"name": "a", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080, "name": "http"},
                                             {"containerPort": 81, "name": "http"}]},
        {"name": "a", "image": "x y", "ports": [{"containerPort": 80, "hostPort": 8080}], "workingDir": "tmp"},
        {"name": "c", "image": "x", "securityContext": {"privileged": True, "allowPrivilegeEscalation": False,
                                                        "capabilities": {"add": ["NET_ADMN"]}},
         "readinessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}}},
    ])
    assert errors_of(pod) == [
        'spec.containers[0].ports[1].name: duplicate port name "http"',
        'spec.containers[1].image: must not contain whitespace, got string "x y"',
        'spec.containers[1].workingDir: must be an absolute path, got string "tmp"',
        'spec.containers[2].securityContext.capabilities.add[0]: unknown capability "NET_ADMN"; '
        'did you mean "NET_ADMIN"?',
        "spec.containers[2].securityContext.allowPrivilegeEscalation: cannot be false when privileged is true",
        "spec.containers[2].readinessProbe: may not specify more than one handler, found exec and tcpSocket",
        'spec.containers[1].name: duplicate container name "a"',
        "spec.containers[1].ports[0].hostPort: duplicate host port 8080/TCP",
    ]


def test_tolerations_and_affinity() -> None:
    pod = minimal_pod(
        tolerations=[
            {"operator": "Exists"},
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300},
        ],
        affinity={
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]},
                                      {"key": "cores", "operator": "Gt", "values": ["4"]}]}]}},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}},
                                                    "topologyKey": "kubernetes.io/hostname"}}]},
        },
    )
    result = validate(pod)
    assert result["spec"]["tolerations"][1]["operator"] == "Equal"
    bad = minimal_pod(
        tolerations=[{"value": "x"}, {"key": "k", "operator": "Exists", "value": "v"},
                     {"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}],
        affinity={"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}]}},
    )
    assert errors_of(bad) == [
        'spec.tolerations[0].operator: must be "Exists" when key is empty (to tolerate every taint)',
        'spec.tolerations[1].value: must be empty when operator is "Exists"',
        'spec.tolerations[2].tolerationSeconds: may only be set when effect is "NoExecute"',
        "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector"
        ".matchExpressions[0].values: must be non-empty when operator is In",
        "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: is required",
    ]


def test_metadata_rules() -> None:
    pod = minimal_pod()
    pod["metadata"].update({
        "namespace": "Prod",
        "resourceVersion": "abc",
        "creationTimestamp": "yesterday",
        "labels": {"ok": "fine", "bad key": "x", "k": "bad value"},
        "annotations": {"note": 5},
        "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "a", "uid": "1", "controller": True},
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "b", "uid": "2", "controller": True},
        ],
    })
    assert [e.split(":")[0] for e in errors_of(pod)] == [
        "metadata.namespace", "metadata.resourceVersion", "metadata.creationTimestamp", "metadata.labels",
        "metadata.labels[k]", "metadata.annotations[note]", "metadata.ownerReferences",
    ]
    server_owned = minimal_pod()
    server_owned["metadata"].update({
        "uid": "0b5e6f0e-1d2c-4c9e-9a3e-2f1f6f0e1d2c", "resourceVersion": "42", "generation": 3,
        "creationTimestamp": "2024-01-31T12:00:00Z", "deletionTimestamp": "2024-01-31T12:00:30.5+01:00",
        "deletionGracePeriodSeconds": 30, "generateName": "web-",
    })
    assert_contains(validate(server_owned), server_owned)


# --- helpers for the scheduler and the agent ------------------------------------------------------


def test_pod_requests_and_container_limits() -> None:
    spec: dict[str, list[dict[str, Any]]] = {"containers": [
        {"name": "a", "image": "x", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": 1}}},
        {"name": "b", "image": "x", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}},
        {"name": "c", "image": "x"},
    ]}
    assert pod_requests(spec) == (750, 64 * 2**20 + 2**30)
    assert container_requests(spec["containers"][2]) == (0, 0)
    assert container_limits(spec["containers"][0]) == (1000, None)
    assert container_limits(spec["containers"][1]) == (500, 2**30)
    assert container_limits(spec["containers"][2]) == (None, None)
    # On a validated pod the defaulted requests give the same answer.
    assert pod_requests(validate(minimal_pod(containers=spec["containers"][:2]))["spec"]) == pod_requests(spec)


# --- properties ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner, max_size=4),
    max_leaves=20,
)

# Values that a Kubernetes object would plausibly hold, to get past type checks more often.
plausible_values = st.one_of(
    json_values,
    st.sampled_from(["", "web", "nginx", "64Mi", "64MB", "500m", "-1", "Always", "Never", "TCP", "In", "Exists",
                     "25%", "0%", "http", "/", "NoExecute", "apps/v1", "v1", "Pod", "Deployment", "x y"]),
    st.sampled_from([0, 1, -1, 80, 65536, 2**31, 2**63]),
)


def assert_clean_outcome(obj: Any) -> dict[str, Any] | None:
    """validate gives a dict or a ValidationError whose every FieldError says something; nothing else."""
    try:
        result = validate(obj)
    except ValidationError as e:
        assert e.errors
        for fe in e.errors:
            assert isinstance(fe, FieldError)
            assert isinstance(fe.path, str) and isinstance(fe.message, str)
            assert fe.path or fe.message
            assert fe.message
        return None
    assert isinstance(result, dict)
    assert validate(result) == result  # what validates is a fixed point
    return result


@FAST
@given(json_values)
def test_any_json_gives_an_object_or_a_validation_error(obj: Any) -> None:
    assert_clean_outcome(obj)


@FAST
@given(st.fixed_dictionaries({
    "apiVersion": st.sampled_from(["v1", "apps/v1"]),
    "kind": st.sampled_from(["Pod", "Deployment"]),
    "metadata": st.one_of(json_values, st.fixed_dictionaries({"name": st.sampled_from(["web", "Web", ""])})),
    "spec": json_values,
}))
def test_any_spec_gives_an_object_or_a_validation_error(obj: Any) -> None:
    assert_clean_outcome(obj)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_paths(obj)))
        if not path:
            continue
        *parent_path, last = path
        parent: Any = obj
        for step in parent_path:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add", "null"]))
        if action == "replace":
            parent[last] = draw(plausible_values)
        elif action == "null":
            parent[last] = None
        elif action == "delete":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][draw(st.text(max_size=10))] = draw(plausible_values)
        elif isinstance(parent[last], list):
            parent[last].append(draw(plausible_values))
    return obj


@FAST
@given(st.data())
def test_mutated_manifests_give_an_object_or_a_validation_error(data: st.DataObject) -> None:
    for base in (NGINX_DEPLOYMENT, BATCH_POD):
        obj = data.draw(mutated(base))
        before = copy.deepcopy(obj)
        assert_clean_outcome(obj)
        assert obj == before


# --- scheduling fields -------------------------------------------------------------------------


def test_topology_spread_constraints() -> None:
    zone = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}, "minDomains": 3}
    host = {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
    assert validate(minimal_pod(topologySpreadConstraints=[zone, host]))["spec"]["topologySpreadConstraints"] == [
        zone, host]
    bad = minimal_deployment()
    bad["spec"]["template"]["spec"]["topologySpreadConstraints"] = [
        {"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedul"},
        {"topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2},
        {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "nodeTaintsPolicy": "Honor"},
        {"maxSkew": 1, "topologyKey": "bad key", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"app": "a b"}}},
    ]
    path = "spec.template.spec.topologySpreadConstraints"
    assert errors_of(bad) == [
        f"{path}[0].maxSkew: must be between 1 and 2147483647, got 0",
        f'{path}[0].whenUnsatisfiable: must be one of "DoNotSchedule", "ScheduleAnyway", '
        'got string "DoNotSchedul"; did you mean "DoNotSchedule"?',
        f"{path}[1].maxSkew: is required",
        f'{path}[1].minDomains: may only be set when whenUnsatisfiable is "DoNotSchedule"',
        f"{path}[2].nodeTaintsPolicy: unknown field; orch does not support Kubernetes' nodeTaintsPolicy",
        f'{path}[3].topologyKey: invalid label key "bad key": name part must consist of alphanumeric characters, '
        "'-', '_' or '.', and must start and end with an alphanumeric character",
        f'{path}[3].labelSelector.matchLabels[app]: invalid label value "a b": must be empty or consist of '
        "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        f'{path}[2].topologyKey: duplicate constraint on "zone" with whenUnsatisfiable "ScheduleAnyway"',
    ]


def test_scheduler_name_and_host_ports() -> None:
    assert validate(minimal_pod())["spec"]["schedulerName"] == "default-scheduler"
    assert validate(minimal_pod(schedulerName="bin-packer"))["spec"]["schedulerName"] == "bin-packer"
    pod = minimal_pod(schedulerName="Bin Packer")
    pod["spec"]["containers"][0]["ports"] = [
        {"containerPort": 80, "hostPort": 0, "hostIP": "10.0.0", "protocol": "HTTP"}]
    assert errors_of(pod) == [
        "spec.containers[0].ports[0].hostPort: must be between 1 and 65535, got 0",
        'spec.containers[0].ports[0].hostIP: must be an IP address, got string "10.0.0"',
        'spec.containers[0].ports[0].protocol: must be one of "TCP", "UDP", "SCTP", got string "HTTP"',
        'spec.schedulerName: "Bin Packer" must consist of lower case alphanumeric characters, \'-\' or \'.\', '
        "and must start and end with an alphanumeric character (e.g. 'example.com')",
    ]


def test_node_affinity_requirements() -> None:
    pod = minimal_pod(affinity={"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
            "matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["four"]},
                                 {"key": "disk", "operator": "Exists", "values": ["ssd"]}],
            "matchFields": [{"key": "metadata.labels", "operator": "In", "values": ["n1"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 0, "preference": {}}]}})
    path = "spec.affinity.nodeAffinity"
    assert errors_of(pod) == [
        f"{path}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values: "
        "must be a single integer when operator is Gt",
        f"{path}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[1].values: "
        "must be empty when operator is Exists",
        f"{path}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].key: "
        'must be one of "metadata.name", got string "metadata.labels"; did you mean "metadata.name"?',
        f"{path}.preferredDuringSchedulingIgnoredDuringExecution[0].weight: must be between 1 and 100, got 0",
    ]


def test_node_spec_taints_and_unschedulable() -> None:
    spec = {"unschedulable": True, "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                                              {"key": "dedicated", "effect": "NoExecute"}]}
    assert validate_node_spec(spec) == spec
    with pytest.raises(ValidationError) as info:
        validate_node_spec({"unschedulable": "yes", "taint": [], "taints": [
            {"key": "dedicated", "effect": "NoSchedul"},
            {"value": "gpu", "effect": "NoSchedule"},
            {"key": "dedicated", "value": "gpu", "effect": "NoExecute"},
            {"key": "dedicated", "effect": "NoExecute"},
        ]})
    assert [str(e) for e in info.value.errors] == [
        'spec.unschedulable: must be a boolean, got string "yes"',
        'spec.taint: unknown field; did you mean "taints"?',
        'spec.taints[0].effect: must be one of "NoSchedule", "PreferNoSchedule", "NoExecute", '
        'got string "NoSchedul"; did you mean "NoSchedule"?',
        "spec.taints[1].key: is required",
        'spec.taints[3]: duplicate taint with key "dedicated" and effect "NoExecute"',
    ]
