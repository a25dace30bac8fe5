"""The scheduler's config file: profiles of plugins, shaped like KubeSchedulerConfiguration.

    apiVersion: kubescheduler.config.k8s.io/v1
    kind: KubeSchedulerConfiguration
    profiles:
    - schedulerName: default-scheduler
      plugins:
        score:
          enabled:  [{name: NodeResourcesFit, weight: 5}]
          disabled: [{name: NodeResourcesBalancedAllocation}]
      pluginConfig:
      - name: NodeResourcesFit
        args: {scoringStrategy: {type: MostAllocated}}

Each profile starts from ``DEFAULT_PLUGINS`` and changes it as kube-scheduler does:
``disabled`` removes plugins from an extension point (``*``: all the defaults),
``enabled`` appends plugins, or re-weights one already there in its place;
``multiPoint`` enables or disables a plugin at every point it implements. A pod
picks its profile by ``spec.schedulerName``. The file is checked whole before the
scheduler starts: every problem is a ``ConfigError`` naming the field
(``profiles[0].plugins.score.enabled[1].name: plugin "Foo" does not exist``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apimachinery.errors import FieldError, ValidationError
from apimachinery.labels import describe_value, did_you_mean
from apimachinery.validation import DEFAULT_SCHEDULER_NAME
from scheduler.framework import EXTENSION_POINTS, Framework, ScorePlugin
from scheduler.plugins import REGISTRY, PluginArgsError

API_VERSION = "kubescheduler.config.k8s.io/v1"
KIND = "KubeSchedulerConfiguration"

#: kube-scheduler's default profile (its v1 defaults, less the volume and image plugins
#: orch has no use for), plus orch's NodeReady filter and SelectorSpread score.
DEFAULT_PLUGINS: Mapping[str, tuple[str, ...]] = {
    "preFilter": ("NodeResourcesFit", "NodePorts", "PodTopologySpread", "InterPodAffinity", "NodeAffinity"),
    "filter": ("NodeReady", "NodeUnschedulable", "NodeName", "TaintToleration", "NodeAffinity", "NodePorts",
               "NodeResourcesFit", "PodTopologySpread", "InterPodAffinity"),
    "postFilter": ("DefaultPreemption",),
    "preScore": ("TaintToleration", "NodeAffinity", "PodTopologySpread", "InterPodAffinity", "NodeResourcesFit",
                 "NodeResourcesBalancedAllocation", "SelectorSpread"),
    "score": ("NodeResourcesBalancedAllocation", "NodeResourcesFit", "InterPodAffinity", "NodeAffinity",
              "PodTopologySpread", "TaintToleration", "SelectorSpread"),
    "reserve": (),
    "bind": ("DefaultBinder",),
}

#: Score weights of the default plugins, kube-scheduler's; any other plugin weighs 1.
DEFAULT_WEIGHTS: Mapping[str, int] = {
    "NodeResourcesBalancedAllocation": 1, "NodeResourcesFit": 1, "InterPodAffinity": 2, "NodeAffinity": 2,
    "PodTopologySpread": 2, "TaintToleration": 3, "SelectorSpread": 2,
}

MULTI_POINT = "multiPoint"
# Extension points kube-scheduler has and orch does not: named as unsupported, not as typos.
_KUBERNETES_ONLY_POINTS = ("queueSort", "preEnqueue", "permit", "preBind", "postBind")
MAX_WEIGHT = 100


class ConfigError(ValidationError):
    """The config file is wrong; every problem names its field."""


@dataclass(slots=True)
class _Errors:
    items: list[FieldError] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.items.append(FieldError(path, message))


def _mapping(errors: _Errors, value: Any, path: str, known: tuple[str, ...]) -> Mapping[str, Any]:
    """``value`` if it is a mapping of known fields; unknown fields are recorded."""
    if not isinstance(value, Mapping):
        errors.add(path, f"must be a mapping, got {describe_value(value)}")
        return {}
    for name in value:
        if name not in known:
            errors.add(f"{path}.{name}" if path else str(name), "unknown field" + did_you_mean(name, known))
    return value


def _list(errors: _Errors, value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        errors.add(path, f"must be a list, got {describe_value(value)}")
        return []
    return value


# --- one profile ---------------------------------------------------------------------------


@dataclass(slots=True)
class _PluginSet:
    """One extension point's ``enabled`` and ``disabled`` lists, checked."""

    enabled: list[tuple[str, int | None]] = field(default_factory=list)
    disabled: set[str] = field(default_factory=set)


def _plugin_name(errors: _Errors, value: Any, path: str, *, star: bool = False) -> str | None:
    name = value.get("name") if isinstance(value, Mapping) else None
    if name is None:
        errors.add(f"{path}.name", "is required")
    elif star and name == "*":
        return name
    elif not isinstance(name, str) or name not in REGISTRY:
        errors.add(f"{path}.name", f"plugin {describe_value(name).removeprefix('string ')} does not exist"
                   + did_you_mean(name, tuple(REGISTRY)))
    else:
        return name
    return None


def _weight(errors: _Errors, value: Any, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WEIGHT:
        errors.add(path, f"must be an integer from 1 to {MAX_WEIGHT}, got {describe_value(value)}")
        return None
    return value


def _plugin_set(errors: _Errors, value: Any, path: str) -> _PluginSet:
    out = _PluginSet()
    fields = _mapping(errors, value, path, ("enabled", "disabled"))
    for i, item in enumerate(_list(errors, fields.get("enabled"), f"{path}.enabled")):
        item_path = f"{path}.enabled[{i}]"
        _mapping(errors, item, item_path, ("name", "weight"))
        name = _plugin_name(errors, item, item_path)
        weight = _weight(errors, item.get("weight"), f"{item_path}.weight") if isinstance(item, Mapping) else None
        if name is not None:
            out.enabled.append((name, weight))
    for i, item in enumerate(_list(errors, fields.get("disabled"), f"{path}.disabled")):
        item_path = f"{path}.disabled[{i}]"
        _mapping(errors, item, item_path, ("name",))
        name = _plugin_name(errors, item, item_path, star=True)
        if name is not None:
            out.disabled.add(name)
    return out


def _plugin_sets(errors: _Errors, value: Any, path: str) -> dict[str, _PluginSet]:
    known = (MULTI_POINT, *EXTENSION_POINTS)
    if not isinstance(value, Mapping):
        errors.add(path, f"must be a mapping, got {describe_value(value)}")
        return {}
    sets: dict[str, _PluginSet] = {}
    for point, item in value.items():
        if point in _KUBERNETES_ONLY_POINTS:
            errors.add(f"{path}.{point}", f"orch does not support Kubernetes' {point} extension point")
        elif point not in known:
            errors.add(f"{path}.{point}", "unknown extension point" + did_you_mean(point, known))
        elif item is not None:
            sets[point] = _plugin_set(errors, item, f"{path}.{point}")
    return sets


def _plugin_args(errors: _Errors, value: Any, path: str) -> dict[str, tuple[int, Mapping[str, Any]]]:
    """Each plugin's args by name, with the index of its pluginConfig entry (for error paths)."""
    args: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for i, item in enumerate(_list(errors, value, path)):
        item_path = f"{path}[{i}]"
        fields = _mapping(errors, item, item_path, ("name", "args"))
        name = _plugin_name(errors, item, item_path)
        if name is None:
            continue
        if name in args:
            errors.add(f"{item_path}.name", f'duplicate pluginConfig for plugin "{name}"')
            continue
        given = fields.get("args") or {}
        if not isinstance(given, Mapping):
            errors.add(f"{item_path}.args", f"must be a mapping, got {describe_value(given)}")
            continue
        args[name] = (i, given)
    return args


def _points(sets: Mapping[str, _PluginSet], implements: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """The plugin names at every extension point: the defaults, changed as kube-scheduler
    changes them (multiPoint first, then each point's own lists, which win)."""
    multi = sets.get(MULTI_POINT, _PluginSet())
    points: dict[str, list[str]] = {}
    for point, defaults in DEFAULT_PLUGINS.items():
        own = sets.get(point, _PluginSet())
        disabled = multi.disabled | own.disabled
        names = [] if "*" in disabled else [n for n in defaults if n not in disabled]
        for name, _ in multi.enabled:
            if point in implements.get(name, ()) and name not in own.disabled and name not in names:
                names.append(name)
        for name, _ in own.enabled:
            if name not in names:
                names.append(name)
        points[point] = names
    return points


def _weights(sets: Mapping[str, _PluginSet]) -> dict[str, int]:
    weights = dict(DEFAULT_WEIGHTS)
    for point in (MULTI_POINT, "score"):
        for name, weight in sets.get(point, _PluginSet()).enabled:
            if weight is not None:
                weights[name] = weight
    return weights


def _instantiate(errors: _Errors, names: set[str], args: Mapping[str, tuple[int, Mapping[str, Any]]],
                 path: str) -> dict[str, Any]:
    """One instance of every plugin the profile uses, built with its pluginConfig args."""
    instances: dict[str, Any] = {}
    for name in sorted(names | set(args)):
        index, given = args.get(name, (-1, {}))
        try:
            instances[name] = REGISTRY[name](given)
        except PluginArgsError as e:
            args_path = f"{path}.pluginConfig[{index}].args"
            for fe in e.errors:
                errors.add(f"{args_path}.{fe.path}" if fe.path else args_path, fe.message)
    return instances


def _implemented_points(plugin: Any) -> set[str]:
    return {point for point, protocol in EXTENSION_POINTS.items() if isinstance(plugin, protocol)}


def _profile(errors: _Errors, value: Any, path: str) -> Framework | None:
    fields = _mapping(errors, value, path, ("schedulerName", "percentageOfNodesToScore", "plugins", "pluginConfig"))
    name = fields.get("schedulerName", DEFAULT_SCHEDULER_NAME)
    if not isinstance(name, str) or not name:
        errors.add(f"{path}.schedulerName", f"must be a non-empty string, got {describe_value(name)}")
    sets = _plugin_sets(errors, fields.get("plugins") or {}, f"{path}.plugins")
    args = _plugin_args(errors, fields.get("pluginConfig"), f"{path}.pluginConfig")
    named = {n for s in sets.values() for n, _ in s.enabled} | {n for names in DEFAULT_PLUGINS.values() for n in names}
    before = len(errors.items)
    instances = _instantiate(errors, named, args, path)
    if len(errors.items) > before:
        return None
    implements = {n: _implemented_points(p) for n, p in instances.items()}
    for point, plugin_set in sets.items():
        for i, (plugin, _) in enumerate(plugin_set.enabled):
            if point != MULTI_POINT and point not in implements[plugin]:
                errors.add(f"{path}.plugins.{point}.enabled[{i}].name",
                           f'plugin "{plugin}" does not extend {point} plugin')
            elif point == MULTI_POINT and not implements[plugin]:
                errors.add(f"{path}.plugins.{point}.enabled[{i}].name",
                           f'plugin "{plugin}" does not extend any extension point')
    points = _points(sets, implements)
    if not points["bind"]:
        errors.add(f"{path}.plugins.bind", "at least one bind plugin is needed")
    if len(errors.items) > before or not isinstance(name, str):
        return None
    return build_framework(name, points, _weights(sets), instances)


def build_framework(scheduler_name: str, points: Mapping[str, list[str]], weights: Mapping[str, int],
                    instances: Mapping[str, Any]) -> Framework:
    """A Framework from the plugin names at each point; one instance per plugin is shared
    by all its points, so what its PreFilter stores its Filter finds."""
    def at(point: str) -> list[Any]:
        return [instances[n] for n in points[point]]

    scores: list[tuple[ScorePlugin, int]] = [(instances[n], weights.get(n, 1)) for n in points["score"]]
    return Framework(scheduler_name, pre_filters=at("preFilter"), filters=at("filter"),
                     post_filters=at("postFilter"), pre_scores=at("preScore"), scores=scores,
                     reserves=at("reserve"), binds=at("bind"))


# --- the whole file -----------------------------------------------------------------------


def parse_config(doc: Any, *, source: str = "") -> dict[str, Framework]:
    """The profiles of a parsed config document, by schedulerName; raises ConfigError
    listing every problem. An absent or empty ``profiles`` is the default profile alone."""
    errors = _Errors()
    fields = _mapping(errors, {} if doc is None else doc, "",
                      ("apiVersion", "kind", "percentageOfNodesToScore", "profiles"))
    for name, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        if fields.get(name, expected) != expected:
            errors.add(name, f'must be "{expected}", got {describe_value(fields[name])}')
    default_percentage = _percentage(errors, fields.get("percentageOfNodesToScore", 0), "percentageOfNodesToScore")
    profiles: dict[str, Framework] = {}
    raw_profiles = _list(errors, fields.get("profiles"), "profiles") or [{}]
    for i, raw in enumerate(raw_profiles):
        fw = _profile(errors, raw, f"profiles[{i}]")
        if fw is None:
            continue
        own = raw.get("percentageOfNodesToScore") if isinstance(raw, Mapping) else None
        fw.percentage_of_nodes_to_score = (default_percentage if own is None else
                                           _percentage(errors, own, f"profiles[{i}].percentageOfNodesToScore"))
        if fw.scheduler_name in profiles:
            errors.add(f"profiles[{i}].schedulerName", f'duplicate profile "{fw.scheduler_name}"')
        profiles[fw.scheduler_name] = fw
    if errors.items:
        raise ConfigError(errors.items, context=source)
    return profiles


def _percentage(errors: _Errors, value: Any, path: str) -> int:
    """``percentageOfNodesToScore``: 0 (adaptive) to 100."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        errors.add(path, f"must be an integer from 0 (adaptive) to 100, got {describe_value(value)}")
        return 0
    return value


def load_config(path: str | Path) -> dict[str, Framework]:
    """The profiles of a config file; raises ConfigError naming the file and every problem."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(FieldError("", f"cannot read it: {e.strerror}"), context=str(path)) from e
    except yaml.YAMLError as e:
        raise ConfigError(FieldError("", f"not valid YAML: {e}"), context=str(path)) from e
    return parse_config(doc, source=str(path))


def default_profiles() -> dict[str, Framework]:
    """The one default profile, ``default-scheduler``, as when no config file is given."""
    return parse_config(None)


def config_file_argument(path: str) -> dict[str, Framework]:
    """``--config FILE`` for argparse: a bad file is a usage error, and the scheduler does not start."""
    try:
        return load_config(path)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
