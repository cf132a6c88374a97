"""Values the schema lets through but that would break a release are
refused when the chart renders, naming the value. Most are settings the
webhook checks when it starts: it exits 2 and, with a failurePolicy Fail
configuration live, every opted-in pod is refused while it crash-loops;
each such case is also run through the binary, to show the chart refuses
what the webhook would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack"))
import chart  # noqa: E402

BINARY = ROOT / "target" / "debug" / "bedrock-broker"


def sidecar_resources(requests: dict, limits: dict) -> dict:
    base = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "none", "memory": "128Mi"}}
    return {"sidecar": {"resources": {"requests": {**base["requests"], **requests}, "limits": {**base["limits"], **limits}}}}


# values, what the chart's message names, the webhook's variable and value (None: not a webhook setting)
REFUSED = [
    ({"webhook": {"tlsReloadInterval": "500ms"}}, "webhook.tlsReloadInterval (500ms) must be at least 1s",
     ("BEDROCK_BROKER_WEBHOOK_TLS_RELOAD_INTERVAL", "500ms")),
    ({"webhook": {"lookupTimeout": "0s"}}, "webhook.lookupTimeout (0s) must be greater than zero",
     ("BEDROCK_BROKER_WEBHOOK_LOOKUP_TIMEOUT", "0s")),
    ({"webhook": {"shutdownGracePeriod": "0s"}}, "webhook.shutdownGracePeriod (0s) must be greater than zero",
     ("BEDROCK_BROKER_WEBHOOK_SHUTDOWN_GRACE_PERIOD", "0s")),
    (sidecar_resources({"memory": "16Mi"}, {"memory": "16Mi"}), "sidecar.resources.limits.memory (16Mi) is below the 32Mi",
     ("BEDROCK_BROKER_SIDECAR_MEMORY_REQUEST", "16Mi", "BEDROCK_BROKER_SIDECAR_MEMORY_LIMIT", "16Mi")),
    (sidecar_resources({"memory": "256Mi"}, {"memory": "128Mi"}), "the memory request 256Mi is above the limit 128Mi",
     ("BEDROCK_BROKER_SIDECAR_MEMORY_REQUEST", "256Mi")),
    (sidecar_resources({"cpu": "1"}, {"cpu": "500m"}), "the cpu request 1 is above the limit 500m",
     ("BEDROCK_BROKER_SIDECAR_CPU_LIMIT", "500m", "BEDROCK_BROKER_SIDECAR_CPU_REQUEST", "1")),
    (sidecar_resources({"memory": "0.5Gi"}, {"memory": "500M"}), "the memory request 0.5Gi is above the limit 500M",
     ("BEDROCK_BROKER_SIDECAR_MEMORY_REQUEST", "0.5Gi", "BEDROCK_BROKER_SIDECAR_MEMORY_LIMIT", "500M")),
    ({"sidecar": {"httpsProxy": "http://egress.corp:99999"}}, "sidecar.httpsProxy (http://egress.corp:99999) has a port that is not one",
     ("BEDROCK_BROKER_SIDECAR_HTTPS_PROXY", "http://egress.corp:99999")),
    ({"sidecar": {"httpsProxy": "egress.corp:0"}}, "has a port that is not one",
     ("BEDROCK_BROKER_SIDECAR_HTTPS_PROXY", "egress.corp:0")),
    # Broken in other ways: a scale to zero blocks every opted-in pod, a
    # Service listing one port twice is refused by the API server.
    ({"webhook": {"replicas": 0}}, "webhook.replicas is 0 with webhook.failurePolicy Fail", None),
    ({"webhook": {"service": {"port": 9789}}}, "webhook.service.port and webhook.adminPort are both 9789", None),
]

ACCEPTED = [
    {"webhook": {"tlsReloadInterval": "1s"}},
    {"webhook": {"timeoutSeconds": 4, "lookupTimeout": "3500ms"}},
    {"webhook": {"reviewBudget": 8388608, "resources": {"limits": {"memory": "104Mi"}}}},
    # No memory limit: nothing to hold the budget to (null removes a default).
    {"webhook": {"resources": {"limits": {"memory": None}}, "reviewBudget": 67108864}},
    {"webhook": {"replicas": 0, "failurePolicy": "Ignore"}},
    {"webhook": {"extraEnv": [{"name": "HTTPS_PROXY", "value": "http://egress:3128"}]}},
    sidecar_resources({"memory": "32Mi", "cpu": "100m"}, {"memory": "32Mi", "cpu": "0.1"}),
    sidecar_resources({"memory": "1e9"}, {"memory": "1Gi"}),
    # Exponents and ports with leading zeros are base 10 (they were read as
    # octal: 1e08 as 0, 1e010 as 1e8).
    sidecar_resources({"memory": "32Mi"}, {"memory": "1e08"}),
    sidecar_resources({"memory": "200Mi"}, {"memory": "1e010"}),
    {"webhook": {"resources": {"limits": {"memory": "0.3e09"}}}},
    {"sidecar": {"httpsProxy": "http://egress.corp:03128"}},
    sidecar_resources({"memory": "1Gi"}, {"memory": "none", "cpu": "none"}),
    {"sidecar": {"httpsProxy": "http://egress.corp:65535"}},
    {"sidecar": {"httpsProxy": "http://[fd00::1]:3128"}},
    {"sidecar": {"httpsProxy": "http://[fd00::1]"}},
    {"sidecar": {"httpsProxy": "egress.corp"}},
]


@pytest.mark.parametrize("values,message,_env", REFUSED, ids=[m for _, m, _e in REFUSED])
def test_the_chart_refuses_values_that_would_break_the_release(values, message, _env):
    with pytest.raises(helm.HelmError) as e:
        chart.render(values)
    assert message in str(e.value)


@pytest.mark.parametrize("values", ACCEPTED, ids=[str(v) for v in ACCEPTED])
def test_the_chart_renders_the_edges_of_what_works(values):
    chart.render(values)


def default_env() -> dict[str, str]:
    objs = chart.render({})
    dep = next(o for o in objs if o["kind"] == "Deployment")
    return {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("values,message,env", [r for r in REFUSED if r[2]], ids=[m for _, m, e in REFUSED if e])
def test_the_webhook_refuses_the_same_settings(values, message, env):
    """The reason for each webhook rule above: the binary, given the chart's
    environment with that one setting, exits 2 naming it."""
    if not BINARY.exists():
        pytest.skip("target/debug/bedrock-broker not built (make build)")
    overrides = dict(zip(env[::2], env[1::2]))
    run = subprocess.run([str(BINARY), "webhook"], env={"PATH": os.environ["PATH"], **default_env(), **overrides},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2, run.stderr
    named = [line for line in run.stderr.splitlines()
             if "invalid configuration" in line and (message in line or any(v in line for v in overrides))]
    assert named, run.stderr


def notes(values: dict) -> str:
    files = chart.render_files(values)
    return next(t for p, t in files.items() if p.endswith("NOTES.txt"))


@pytest.mark.parametrize("values,warning", [
    ({"webhook": {"timeoutSeconds": 2, "lookupTimeout": "5s"}},
     "webhook.timeoutSeconds (2) is not above webhook.lookupTimeout (5s)"),
    ({"webhook": {"reviewBudget": 67108864}},
     "webhook.resources.limits.memory (256Mi) is below 64Mi plus 5 times webhook.reviewBudget (384Mi)"),
])
def test_settings_against_the_advice_are_warned_about_not_refused(values, warning):
    # The webhook runs with them: an upgrade of a working release must not
    # start failing over advice.
    chart.render(values)
    text = notes(values)
    assert "WARNING, against the chart's advice:" in text and warning in text, text


def test_the_defaults_bring_no_warning():
    assert "WARNING" not in notes({})


def test_extra_env_overrides_the_charts_own_variables():
    # Written twice (the chart's, then extraEnv's), a name was refused by
    # server-side apply, and with client-side apply which one won was up
    # to the tool.
    values = {"webhook": {"extraEnv": [{"name": "RUST_LOG", "value": "debug"},
                                       {"name": "BEDROCK_BROKER_SIDECAR_REGION", "value": "eu-west-1"},
                                       {"name": "HTTPS_PROXY", "value": "http://egress:3128"}]},
              "sidecar": {"region": "us-east-1"}}
    env = next(o for o in chart.render(values) if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), names
    values_of = {e["name"]: e.get("value") for e in env}
    assert values_of["RUST_LOG"] == "debug"
    assert values_of["BEDROCK_BROKER_SIDECAR_REGION"] == "eu-west-1"
    assert values_of["HTTPS_PROXY"] == "http://egress:3128"
