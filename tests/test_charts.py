"""The Prometheus rules and config and the Grafana dashboard under charts/: valid for
promtool (rules, their unit tests, the config), and every dashboard query valid PromQL
(each checked by promtool as a recording rule)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

CHARTS = Path(__file__).resolve().parent.parent / "charts"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian package prometheus; "
                                                              "dev.sh installs it for the tests)")


def promtool(*args: str, cwd: Path = CHARTS / "prometheus") -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", "alerts.yaml")
    promtool("test", "rules", "alerts_test.yaml")


@needs_promtool
def test_prometheus_config_with_http_sd_is_valid() -> None:
    promtool("check", "config", "prometheus.yml")
    config = yaml.safe_load((CHARTS / "prometheus" / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["http_sd_configs"][0]["url"].endswith("/sd")


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads((CHARTS / "grafana" / "orch-cluster.json").read_text())
    queries = [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]
    queries += [(v["name"], v["query"]["query"]) for v in board["templating"]["list"] if v["type"] == "query"]
    return queries


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = []
    for i, (title, expr) in enumerate(dashboard_queries()):
        if expr.startswith("label_values("):  # Grafana's own function: check its selector
            expr = re.fullmatch(r"label_values\((.*), \w+\)", expr).group(1)  # type: ignore[union-attr]
        expr = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$pod", ".*")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in out


def test_dashboard_shape() -> None:
    board = json.loads((CHARTS / "grafana" / "orch-cluster.json").read_text())
    assert board["uid"] == "orch-cluster" and board["panels"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
