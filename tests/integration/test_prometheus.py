"""Proof it all fits together: broker → daemon → a real Prometheus → dashboard and rules.

A real Prometheus scrapes the daemon (a subprocess reading a real Kafka-protocol broker)
and loads ``config/prometheus/driftmon-rules.yaml``. Once the silent upgrade of
``sql-assistant`` is detected, every PromQL query of ``config/grafana/driftmon.json``
(panel targets, repeated panels per feature, annotations), with its Grafana variables
resolved the way Grafana does, must parse and return data, every rule must parse and
evaluate without error, and DriftmonOutputDrift must fire for ``sql-assistant`` only.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftmon.demo.synthetic import Upgrade, generate
from driftmon.demo.tansu import EmbeddedBroker, free_port
from driftmon.replay import replay
from driftmon.settings import Settings
from tests.support import (
    DaemonProcess,
    daemon_settings,
    http_get,
    produce,
    running,
    wait_for,
)

PROMETHEUS = Path("/usr/bin/prometheus")
REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "config" / "prometheus" / "driftmon-rules.yaml"
DASHBOARD = REPO / "config" / "grafana" / "driftmon.json"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not PROMETHEUS.exists(),
        reason="/usr/bin/prometheus missing (Debian package `prometheus`; .ci/run installs it)",
    ),
]

TOPIC = "llm-outputs"
ENDPOINTS = {"sql-assistant": {"format": "json"}}
DRIFTING = "sql-assistant"
N_EVENTS = 8000
UPGRADE_AT = 4000
BAD_EVERY = 200  # 40 garbage lines, 0.5 % of the stream: rejections exist, no rejection spike
N_KEYS = 4
EVENTS_PER_SECOND = 500.0  # event timestamps span 16 s ending now (content does not change)

# Grafana's built-in interval variables, as Grafana would expand them for this scrape interval.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}

# The one feature still re-learning its reference when the stream ends: sql-assistant's
# `feedback` is detected late (event 7588; feedback values are sparse) and has not seen
# warmup_events new values since. Re-learning, it has no detectors, so driftmon exports
# their statistic and threshold as NaN (its baseline stays the one the drift was detected
# against). The test checks that this is the only re-learning feature, so the exceptions
# stay honest.
RELEARNING = "feedback"

# Dashboard queries that may legitimately return no data in this scenario, keyed by
# (panel title, refId, value of the panel's repeat variable or None); annotations by
# ("annotation", name, None). Each entry says why. Every other query must return at least
# one sample for every variable selection.
NO_DATA_OK: dict[tuple[str, str, str | None], str] = {
    ("Input drifts (explained by inputs, not paged)", "A", None): (
        "the upgrade here is a model change: no drift is explained by the inputs, so "
        "driftmon_input_drift_active is 0 for every drift and the table is empty (the query "
        "still evaluates; tests/integration/test_attribution.py makes the gauge 1)"
    ),
}

# Dashboard queries that return samples, all of which may be NaN here, and why.
NAN_OK: dict[tuple[str, str, str | None], str] = {
    ("Embedding batch latency", "A", None): (
        "embeddings are off: the histogram has only zero buckets, so histogram_quantile() of "
        "their zero rates is NaN (Grafana draws nothing)"
    ),
    ("Embedding batch latency", "B", None): "as refId A: no batch embedded",
    **{
        ("$feature: detector statistic vs threshold", ref, RELEARNING): (
            "re-learning after its detection, the feature has no detector (NaN); with only "
            "sql-assistant selected nothing else is in the panel"
        )
        for ref in ("A", "B")
    },
}


# -- Prometheus -----------------------------------------------------------------------------


class Prometheus:
    """A real Prometheus on 127.0.0.1 scraping one driftmon target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = target
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "driftmon", "static_configs": [{"targets": [self.target]}]}
            ],
        }
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            return http_get(f"{self.url}/-/ready")[0] == 200

        wait_for(ready, timeout=30, every=0.2)
        return self

    def api(self, path: str, **params: str | list[str]) -> dict[str, Any]:
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=10)
        assert body, f"no answer from Prometheus ({status}) for {path} {params}\n{self.tail()}"
        reply: dict[str, Any] = json.loads(body)
        return reply

    def query(self, expr: str) -> dict[str, Any]:
        """The whole reply of an instant query: status, and data or error."""
        return self.api("query", query=expr)

    def vector(self, expr: str) -> list[dict[str, Any]]:
        reply = self.query(expr)
        assert reply["status"] == "success", (expr, reply)
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of a query, or None if it has no sample."""
        result = self.vector(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def label_values(self, label: str, match: str) -> list[str]:
        reply = self.api(f"label/{label}/values", **{"match[]": match})
        assert reply["status"] == "success", reply
        return sorted(reply["data"])

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        prom = Prometheus(tmp_path / "prometheus", target)
        started.append(prom)
        return prom.start()

    try:
        yield start
    finally:
        for prom in started:
            prom.stop()


# -- the dashboard as Grafana would run it ------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def data_panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        for p in (panel, *panel.get("panels", [])):
            if p["type"] != "row":
                out.append(p)
    return out


def regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape, applied to multi/include-all variable values."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def format_variable(var: dict[str, Any], values: list[str] | None) -> str:
    """A query variable as Grafana's Prometheus data source inserts it; None means All."""
    if values is None:
        return str(var["allValue"])
    escaped = [regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in variables, f"unknown Grafana variable ${name} in {expr!r}"
        return variables[name]

    # $name, ${name} and ${name:format}; `$labels`/`$value` do not occur in dashboard queries.
    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)
    assert "$" not in out, out
    return out


def query_variables(
    prom: Prometheus, pick: Callable[[str, list[str]], list[str] | None]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Resolve the dashboard's variables in order, like Grafana: each label_values() query
    runs with the variables before it substituted. ``pick(name, options)`` selects values
    (None = All). Returns the substitutions and every variable's effective values."""
    subst: dict[str, str] = {"datasource": "prometheus", **BUILTINS}
    effective: dict[str, list[str]] = {}
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "datasource":
            continue
        assert var["type"] == "query", var
        definition = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition.strip())
        assert m, f"unsupported variable query {definition!r}"
        selector, label = substitute(m.group(1), subst), m.group(2)
        options = prom.label_values(label, selector)
        assert options, f"variable ${var['name']} has no values ({definition})"
        chosen = pick(var["name"], options)
        assert chosen is None or set(chosen) <= set(options), (var["name"], chosen, options)
        subst[var["name"]] = format_variable(var, chosen)
        effective[var["name"]] = options if chosen is None else chosen
    return subst, effective


def dashboard_queries(
    subst: dict[str, str], effective: dict[str, list[str]]
) -> Iterator[tuple[tuple[str, str, str | None], str]]:
    """((panel title, refId, repeat value), PromQL) for every query Grafana runs, and
    (("annotation", name, None), PromQL) for its Prometheus annotations.

    A repeated panel is run once per value of its variable, with that single value."""
    for panel in data_panels():
        repeat = panel.get("repeat")
        instances: list[tuple[str | None, dict[str, str]]] = [(None, subst)]
        if repeat:
            var = next(v for v in dashboard()["templating"]["list"] if v["name"] == repeat)
            instances = [
                (v, {**subst, repeat: format_variable(var, [v])}) for v in effective[repeat]
            ]
        for value, variables in instances:
            for target in panel["targets"]:
                key = (panel["title"], target["refId"], value)
                yield key, substitute(target["expr"], variables)
    for ann in dashboard()["annotations"]["list"]:
        if "expr" in ann:
            yield ("annotation", ann["name"], None), substitute(ann["expr"], subst)


# -- the scenario --------------------------------------------------------------------------


def settings(broker: EmbeddedBroker, tmp_path: Path) -> dict[str, Any]:
    # No Alertmanager. Drifts stay latched for the whole test: with the default 500 quiet
    # events most of them would resolve again within the ~1 s the daemon needs for the
    # stream, and which ones Prometheus saw active would depend on scrape timing.
    return daemon_settings(
        broker.bootstrap,
        TOPIC,
        tmp_path / "state",
        "driftmon-prometheus-test",
        ENDPOINTS,
        alertmanager={"urls": [], "resolve_after_quiet_events": 1_000_000},
    )


# A deliberate upgrade as well: the drifting endpoint's last answers again, under a new
# model label. A new key (it warms up, no detection) and a model transition on that
# endpoint, which the dashboard's transitions table shows under every selection.
N_RELABELLED = 100
RELABEL = "-next"


def stream() -> list[str]:
    # Timestamps end now, so "recent detection" queries (time() - timestamp) see the drift.
    start = time.time() - N_EVENTS / EVENTS_PER_SECOND
    lines = list(
        generate(
            N_EVENTS,
            n_keys=N_KEYS,
            seed=3,
            upgrade=Upgrade(DRIFTING, UPGRADE_AT),
            bad_line_every=BAD_EVERY,
            start_time=start,
            events_per_second=EVENTS_PER_SECOND,
        )
    )
    relabelled: list[str] = []
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(event, dict)
            and event.get("endpoint") == DRIFTING
            and event.get("kind", "completion") == "completion"
        ):
            relabelled.append(json.dumps({**event, "model": event["model"] + RELABEL}))
        if len(relabelled) == N_RELABELLED:
            break
    return lines + relabelled[::-1]


def read_total(prom: Prometheus) -> float:
    """Accepted plus rejected events, as last scraped by Prometheus."""
    expr = "sum(driftmon_events_total) + sum(driftmon_events_rejected_total)"
    return prom.value(expr) or 0.0


def expected_drifts(lines: list[str], tmp_path: Path) -> set[tuple[str, str, str]]:
    """(endpoint, model, feature) the core detects on the same input, replayed offline."""
    path = tmp_path / "input.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = replay([str(path)], Settings(endpoints=ENDPOINTS, embeddings={"enabled": False}))
    return {(d.endpoint, d.model, d.feature) for d in result.detections}


def prometheus_drifts(prom: Prometheus) -> set[tuple[str, str, str]]:
    return {
        (s["metric"]["endpoint"], s["metric"]["model"], s["metric"]["feature"])
        for s in prom.vector("driftmon_drift_active == 1")
    }


def daemon_drifts(daemon: DaemonProcess) -> set[tuple[str, str, str]]:
    """(endpoint, model, feature) with driftmon_drift_active 1 on the daemon's /metrics."""
    out = set()
    for line in daemon.metrics().decode().splitlines():
        if line.startswith("driftmon_drift_active{") and float(line.rsplit(" ", 1)[1]) == 1:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out.add((labels["endpoint"], labels["model"], labels["feature"]))
    return out


def test_dashboard_and_rules_work_on_a_real_prometheus(
    broker: EmbeddedBroker, start_prometheus: Callable[[str], Prometheus], tmp_path: Path
) -> None:
    t0 = time.monotonic()
    lines = stream()
    # First half (before the upgrade) now, second half once Prometheus has scraped the first:
    # every counter then has a sample before the second half, so rate() panels show traffic.
    produce(broker.bootstrap, TOPIC, lines[:UPGRADE_AT])
    with running(DaemonProcess(tmp_path, settings(broker, tmp_path))) as daemon:
        prom = start_prometheus(f"127.0.0.1:{daemon.metrics_port}")
        daemon.wait_ready()
        wait_for(lambda: read_total(prom) >= UPGRADE_AT, timeout=60, every=0.5)
        produce(broker.bootstrap, TOPIC, lines[UPGRADE_AT:])

        # -- 3. everything consumed, every detection scraped, gauges refreshed ------------
        expected = expected_drifts(lines, tmp_path)
        assert expected and {ep for ep, _, _ in expected} == {DRIFTING}, expected

        def settled() -> bool:
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
            return (
                read_total(prom) >= len(lines)
                and prometheus_drifts(prom) == expected
                and prom.value(f'max(driftmon_consumer_lag{{topic="{TOPIC}"}})') == 0
            )

        wait_for(settled, timeout=60, every=0.5)
        assert daemon.events_seen() == len(lines)
        assert daemon_drifts(daemon) == expected

        def relearning() -> set[tuple[str, str]]:
            return {
                (s["metric"]["endpoint"], s["metric"]["feature"])
                for s in prom.vector(  # NaN: no detector while re-learning
                    'driftmon_detector_threshold{detector="page_hinkley"}'
                    ' != driftmon_detector_threshold{detector="page_hinkley"}'
                )
                # The relabelled key is still learning its first reference: every feature.
                if not s["metric"]["model"].endswith(RELABEL)
            }

        # Detector gauges come from the 5 s refresh, not from the event that changed them:
        # a scrape may still show a stream that has since finished its warm-up (the other
        # keys' sparse `feedback`, late in the stream). Wait for a refresh after the end.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: relearning() == {(DRIFTING, RELEARNING)}, timeout=30, every=1)
        assert relearning() == {(DRIFTING, RELEARNING)}, "update RELEARNING and its exceptions"
        targets = prom.api("targets")["data"]["activeTargets"]
        assert [(t["labels"]["job"], t["health"]) for t in targets] == [("driftmon", "up")]

        # -- 4a. the dashboard, under three variable selections ------------------------------
        def all_selected(name: str, options: list[str]) -> list[str] | None:
            return None

        def drifting_only(name: str, options: list[str]) -> list[str] | None:
            return [DRIFTING] if name == "endpoint" else None

        def every_value(name: str, options: list[str]) -> list[str] | None:
            return options  # multi-select of all values: "(a|b|…)", regex-escaped

        selections = {
            "All": all_selected,
            DRIFTING: drifting_only,
            "each value": every_value,
        }
        failures: list[str] = []
        no_data: dict[tuple[str, str, str | None], set[str]] = {}
        all_nan: dict[tuple[str, str, str | None], set[str]] = {}
        n_queries = 0
        for selection, pick in selections.items():
            subst, effective = query_variables(prom, pick)
            if selection == "All":
                assert len(effective["endpoint"]) == N_KEYS, effective
                assert DRIFTING in effective["endpoint"]
                assert effective["feature"], effective
            for key, expr in dashboard_queries(subst, effective):
                n_queries += 1
                reply = prom.query(expr)
                if reply["status"] != "success":
                    failures.append(f"{key} [{selection}] does not parse/evaluate: {reply}")
                    continue
                result = reply["data"]["result"]
                if reply["data"]["resultType"] == "scalar":
                    result = [{"value": result}]
                if not result:
                    no_data.setdefault(key, set()).add(selection)
                    if key not in NO_DATA_OK:
                        failures.append(f"{key} [{selection}] returned no data: {expr}")
                elif all(math.isnan(float(s["value"][1])) for s in result):
                    all_nan.setdefault(key, set()).add(selection)
                    if key not in NAN_OK:
                        failures.append(f"{key} [{selection}] returned only NaN: {expr}")
        print(f"\n{n_queries} dashboard queries; no data: {no_data or 'none'}; NaN: {all_nan}")
        assert not failures, "\n".join(failures) + "\n" + daemon.tail(10)

        # -- 4b. what the main panels show -------------------------------------------------
        drifts = expected
        assert prom.value("sum(driftmon_keys)") == N_KEYS + 1  # the relabelled endpoint's
        transitions = prom.vector("driftmon_transition_verdict == 1")
        assert [s["metric"]["to_model"].endswith(RELABEL) for s in transitions] == [True]
        assert (prom.value("sum(rate(driftmon_events_total[1m]))") or 0) > 0
        assert (prom.value("sum(rate(driftmon_events_rejected_total[1m]))") or 0) > 0
        assert prom.value("sum(driftmon_events_rejected_total)") == N_EVENTS // BAD_EVERY
        assert prom.value("sum(driftmon_events_total)") == len(lines) - N_EVENTS // BAD_EVERY

        # -- 4c. every rule: parses, evaluates without error, only the drift rule matches -----
        rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
        for rule in rules:
            reply = prom.query(rule["expr"])
            assert reply["status"] == "success", (rule["alert"], reply)
            matched = reply["data"]["result"]
            if rule["alert"] == "DriftmonOutputDrift":
                assert {
                    (s["metric"]["endpoint"], s["metric"]["model"], s["metric"]["feature"])
                    for s in matched
                } == drifts
            else:  # healthy pipeline: the health rules' conditions are false
                assert matched == [], (rule["alert"], matched)
        loaded = {
            r["name"]: r
            for g in prom.api("rules")["data"]["groups"]
            for r in g["rules"]
            if r["type"] == "alerting"
        }
        assert set(loaded) == {r["alert"] for r in rules}
        for name, r in loaded.items():
            assert r["health"] == "ok", (name, r.get("lastError"))

        # -- 5. DriftmonOutputDrift fires for the drifting endpoint, nothing else is raised --
        def firing() -> list[dict[str, Any]]:
            alerts = prom.api("alerts")["data"]["alerts"]
            drift = [a for a in alerts if a["labels"]["alertname"] == "DriftmonOutputDrift"]
            live = [a for a in drift if a["state"] == "firing"]
            return alerts if len(live) == len(drifts) else []

        alerts = wait_for(firing, timeout=20, every=0.5)
        assert {a["labels"]["alertname"] for a in alerts} == {"DriftmonOutputDrift"}, alerts
        assert {
            (a["labels"]["endpoint"], a["labels"]["model"], a["labels"]["feature"]) for a in alerts
        } == drifts
        for a in alerts:
            assert a["labels"]["endpoint"] == DRIFTING
            assert a["labels"]["severity"] == "page"
            description = a["annotations"]["description"]
            assert "unknown" not in description, description  # the query templates resolved
            assert re.search(r"Recent mean \S+, baseline \S+\.", description), description
        print(f"{len(alerts)} firing: {sorted(a['labels']['feature'] for a in alerts)}")
        print("e.g.", alerts[0]["annotations"]["description"])
    print(f"test body took {time.monotonic() - t0:.1f} s")
