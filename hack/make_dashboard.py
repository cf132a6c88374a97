"""Writes deploy/grafana-dashboard.json (run by hack/render.sh).

Every expression uses the metric names of the contract (src/metrics/,
src/metrics/webhook.rs); tests/packaging/test_packaging.py checks each name
against the source.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace"'


def panel(pid, title, exprs, x, y, w=12, h=8, unit="short", kind="timeseries", desc=""):
    targets = [{"datasource": DS, "expr": e, "legendFormat": leg, "refId": chr(65 + i)} for i, (e, leg) in enumerate(exprs)]
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": targets,
    }


def row(pid, title, y):
    return {"id": pid, "type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def dashboard() -> dict:
    p = []
    p.append(row(1, "Credentials", 0))
    p.append(panel(2, "Time until credentials expire (lowest per pod)",
                   [(f"min by (namespace, pod) ((bedrock_broker_credentials_expiry_timestamp_seconds{{{SEL}}} > 0) - time())", "{{namespace}}/{{pod}}")],
                   0, 1, unit="s", desc="Refreshes start at half the lifetime; a line falling towards 0 means refreshes fail. Pods without credentials yet (the gauge is 0) are left out: see the failures in a row."))
    p.append(panel(3, "Refresh failures in a row",
                   [(f"max by (namespace, pod) (bedrock_broker_credential_refresh_consecutive_failures{{{SEL}}})", "{{namespace}}/{{pod}}")],
                   12, 1))
    p.append(panel(4, "Refreshes by result",
                   [(f"sum by (result) (rate(bedrock_broker_credential_refreshes_total{{{SEL}}}[$__rate_interval]))", "{{result}}")],
                   0, 9, unit="ops"))
    p.append(panel(5, "Refresh errors by class",
                   [(f"sum by (class) (rate(bedrock_broker_credential_refresh_errors_total{{{SEL}}}[$__rate_interval]))", "{{class}}"),
                    (f"sum (rate(bedrock_broker_credential_refresh_throttled_total{{{SEL}}}[$__rate_interval]))", "throttled (of transient)")],
                   12, 9, unit="ops", desc="token: the projected token is unreadable or refused; transient: STS/network; fatal: role or trust policy; throttled: STS refused for the account's request rate, shared by every pod in it."))
    p.append(panel(6, "STS round trip (p50, p95)",
                   [(f"histogram_quantile(0.5, sum by (le) (rate(bedrock_broker_credential_refresh_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "p50"),
                    (f"histogram_quantile(0.95, sum by (le) (rate(bedrock_broker_credential_refresh_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "p95")],
                   0, 17, unit="s"))
    p.append(panel(7, "Age of the last refresh / service-account token lifetime left",
                   [(f"max by (namespace, pod) (time() - (bedrock_broker_credentials_last_refresh_timestamp_seconds{{{SEL}}} > 0))", "refresh age {{namespace}}/{{pod}}"),
                    (f"min by (namespace, pod) ((bedrock_broker_web_identity_token_expiry_timestamp_seconds{{{SEL}}} > 0) - time())", "token left {{namespace}}/{{pod}}")],
                   12, 17, unit="s"))
    p.append(row(8, "Requests", 25))
    p.append(panel(9, "Requests by status code",
                   [(f"sum by (code) (rate(bedrock_broker_requests_total{{{SEL}}}[$__rate_interval]))", "{{code}}")],
                   0, 26, unit="reqps"))
    p.append(panel(10, "Requests by operation and auth mode",
                   [(f"sum by (operation, auth) (rate(bedrock_broker_requests_total{{{SEL}}}[$__rate_interval]))", "{{operation}} ({{auth}})")],
                   12, 26, unit="reqps"))
    p.append(panel(11, "Request duration p95 by operation",
                   [(f"histogram_quantile(0.95, sum by (le, operation) (rate(bedrock_broker_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "{{operation}}")],
                   0, 34, unit="s"))
    p.append(panel(12, "Time to first streamed chunk p95 (streams)",
                   [(f"histogram_quantile(0.95, sum by (le, operation) (rate(bedrock_broker_time_to_first_token_seconds_bucket{{{SEL}}}[$__rate_interval])))", "{{operation}}")],
                   12, 34, unit="s"))
    p.append(panel(13, "In flight (incl. open streams)",
                   [(f"sum by (namespace, pod) (bedrock_broker_requests_in_flight{{{SEL}}})", "{{namespace}}/{{pod}}")],
                   0, 42))
    p.append(panel(14, "Tokens by model and direction",
                   [(f"sum by (model, direction) (rate(bedrock_broker_tokens_total{{{SEL}}}[$__rate_interval]))", "{{model}} {{direction}}")],
                   12, 42, desc="Needs --usage-metrics (on by default)."))
    p.append(panel(15, "Upstream auth retries",
                   [(f"sum by (result) (rate(bedrock_broker_upstream_auth_retries_total{{{SEL}}}[$__rate_interval]))", "{{result}}")],
                   0, 50, unit="ops"))
    p.append(panel(21, "Pods by version and revision",
                   [(f"count by (version, revision) (bedrock_broker_build_info{{{SEL}}})", "{{version}} ({{revision}})")],
                   12, 50, desc="bedrock_broker_build_info: after an upgrade, a line that does not fall to 0 is pods still running the old image (restart them to get the new sidecar)."))
    p.append(panel(23, "Answers that failed after their 200, by type",
                   [(f"sum by (operation, type) (rate(bedrock_broker_stream_errors_total{{{SEL}}}[$__rate_interval]))", "{{operation}} {{type}}")],
                   0, 58, unit="ops",
                   desc="Counted as 200 in the requests panels: Bedrock's in-stream throttling and model errors, streams the sidecar cut off (upstream_idle_timeout), answers whose connection broke. Needs usage metrics (on by default)."))
    p.append(panel(24, "Requests refused before they could be read",
                   [(f"sum by (listener, reason) (rate(bedrock_broker_unread_requests_total{{{SEL}}}[$__rate_interval]))", "{{listener}} {{reason}}")],
                   12, 58, unit="ops",
                   desc="Bare 400 (malformed) and 431 (too_large) answers from the HTTP layer: a client sending broken requests. In no other panel."))
    p.append(panel(25, "Answers whose tokens were not counted, by reason",
                   [(f"sum by (operation, reason) (rate(bedrock_broker_answers_without_usage_total{{{SEL}}}[$__rate_interval]))", "{{operation}} {{reason}}")],
                   0, 66, unit="ops",
                   desc="tokens_total misses these: not_reported is mostly OpenAI-style streams sent without stream_options.include_usage (the app can ask for it); cut_off answers that ended early; unreadable bodies in a coding the sidecar cannot decode. Needs usage metrics (on by default)."))
    p.append(panel(26, "Memory budgets in use (fullest pod)",
                   [(f"max by (budget) (bedrock_broker_memory_budget_used_bytes{{{SEL}}} / bedrock_broker_memory_budget_limit_bytes{{{SEL}}})", "{{budget}}")],
                   12, 66, unit="percentunit",
                   desc="Full, a budget refuses: request_bodies (--request-body-budget) answers new bodies 503 with Retry-After, usage_taps leaves answers uncounted (over_budget in the panel beside). Near 100 % for long: raise --request-body-budget with the sidecar's memory limit, or spread the load over more pods."))
    p.append(row(16, "Webhook", 74))
    p.append(panel(17, "Admissions by result",
                   [("sum by (result) (rate(bedrock_broker_webhook_admissions_total[$__rate_interval]))", "{{result}}")],
                   0, 75, unit="ops"))
    p.append(panel(18, "Admission duration p99",
                   [("histogram_quantile(0.99, sum by (le, result) (rate(bedrock_broker_webhook_admission_duration_seconds_bucket[$__rate_interval])))", "{{result}}")],
                   12, 75, unit="s"))
    p.append(panel(19, "Namespace / ServiceAccount / LimitRange lookups by source",
                   [("sum by (object, source) (rate(bedrock_broker_webhook_lookups_total[$__rate_interval]))", "{{object}} {{source}}")],
                   0, 83, unit="ops"))
    p.append(panel(20, "Certificate reloads",
                   [("sum by (result) (increase(bedrock_broker_webhook_tls_reloads_total[$__range]))", "{{result}}")],
                   12, 83))
    p.append(panel(22, "Webhook connections closed or refused",
                   [("sum by (listener) (rate(bedrock_broker_webhook_connections_refused_total[$__rate_interval]))", "refused at a limit ({{listener}})"),
                    ("sum(rate(bedrock_broker_webhook_reviews_closed_for_room_total[$__rate_interval]))", "closed to share the review budget")],
                   0, 91, unit="ops",
                   desc="Non-zero while the API server's reviews get 503 or time out: some pod is filling the webhook's connections or review budget (the chart's NetworkPolicy keeps pods off the port)."))
    p.append(panel(27, "Webhook review budgets in use (fullest replica)",
                   [("max by (budget) (bedrock_broker_webhook_memory_budget_used_bytes / bedrock_broker_webhook_memory_budget_limit_bytes)", "{{budget}}")],
                   12, 91, unit="percentunit",
                   desc="review_text (--review-budget) and parsed_reviews: full, reviews wait for room and, after a second, get 503 (the panel beside shows the connections closed to make room)."))
    return {
        "title": "bedrock-broker",
        "uid": "bedrock-broker",
        "description": "Credential health, Bedrock requests and the injection webhook (metric names from docs and src/metrics/).",
        "tags": ["bedrock-broker", "aws", "bedrock"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "timezone": "",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source", "current": {}, "hide": 0},
            {"name": "namespace", "type": "query", "datasource": DS, "label": "Namespace",
             "query": {"query": "label_values(bedrock_broker_credentials_expiry_timestamp_seconds, namespace)", "refId": "ns"},
             "definition": "label_values(bedrock_broker_credentials_expiry_timestamp_seconds, namespace)",
             "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "hide": 0},
        ]},
        "annotations": {"list": []},
        "panels": p,
    }


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "deploy" / "grafana-dashboard.json"
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
