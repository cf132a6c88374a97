"""Large legitimate requests at once stay within the injected memory limit:
bodies beyond --request-body-budget wait, or are told to retry, instead of
taking the sidecar over 128Mi (six 24 MiB requests once peaked at 160 MiB)."""

from __future__ import annotations

import threading
import time

import requests

from conftest import shipped_env
from test_soak import rss_mib

CONVERSE = "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
INJECTED_LIMIT_MIB = 128


def test_six_large_requests_at_once_stay_under_the_memory_limit(start_sidecar, irsa_env, fake_aws):
    # As the image runs it: its allocator settings return large buffers
    # to the system once freed (without them glibc keeps them around).
    sidecar = start_sidecar({**irsa_env, **shipped_env()})
    body = b'{"messages":[{"role":"user","content":[{"text":"' + b"x" * (24 * 1024 * 1024) + b'"}]}]}'
    assert len(body) < 25 * 1024 * 1024
    statuses: list[int] = []
    retried: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        # As an SDK does: a 503 with Retry-After is retried after that long.
        for attempt in range(20):
            r = requests.post(sidecar.url(CONVERSE), data=body, headers={"content-type": "application/json"}, timeout=120)
            if r.status_code == 503 and r.headers.get("x-bedrock-broker-error") == "overloaded":
                assert r.headers["retry-after"] == "1"
                with lock:
                    retried.append(attempt)
                time.sleep(float(r.headers["retry-after"]))
                continue
            with lock:
                statuses.append(r.status_code)
            return

    peak = 0.0
    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mib(sidecar.proc.pid))
        time.sleep(0.05)
    print(f"\npeak RSS {peak:.1f} MiB, {len(retried)} retries")
    assert statuses == [200] * 6
    assert peak < INJECTED_LIMIT_MIB * 0.9, f"peak RSS {peak:.1f} MiB"
