"""A bounded soak: the real sidecar under mixed legitimate traffic, short
credentials, token rotations, STS faults, slow clients and hostile ones at
once. Nothing legitimate may fail, and memory and open files must stay
flat. SOAK_SECONDS (default 120) sets the length; run it longer by hand."""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
import urllib.parse

import openai
import pytest
import requests

from conftest import make_jwt, shipped_env, wait_for
from test_sdk_clients import bedrock_client

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def peak_rss_mib(pid: int) -> float:
    """The most the process has held (VmHWM), however briefly."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, sidecar, fake_aws, token_dir):
        self.sidecar, self.fake, self.token_dir = sidecar, fake_aws, token_dir
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.done = {"legit": 0, "hostile": 0, "slow": 0}
        self.lock = threading.Lock()

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def count(self, kind: str) -> None:
        with self.lock:
            self.done[kind] += 1

    # --- legitimate clients -------------------------------------------------

    def traffic(self, worker: int) -> None:
        oai = openai.OpenAI(base_url=self.sidecar.url("/openai/v1"), api_key="sk-placeholder", max_retries=0, timeout=30)
        brt = bedrock_client(self.sidecar)
        big = json.dumps({"messages": [{"role": "user", "content": [{"text": "x" * 200_000}]}]})
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                match (worker + i) % 4:
                    case 0:
                        r = oai.chat.completions.create(model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "hi"}])
                        assert r.choices[0].message.content
                    case 1:
                        chunks = list(oai.chat.completions.create(
                            model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "stream"}], stream=True,
                            stream_options={"include_usage": True}))
                        assert chunks
                    case 2:
                        r = brt.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
                        assert r["output"]["message"]["content"][0]["text"]
                    case 3:
                        r = requests.post(self.sidecar.url(f"/model/{MODEL}/converse"), data=big,
                                          headers={"content-type": "application/json"}, timeout=30)
                        assert r.status_code == 200, (r.status_code, r.text[:200])
                self.count("legit")
            except Exception as e:  # noqa: BLE001 - every failure is reported at the end
                self.fail(f"worker {worker} request {i}: {e!r}"[:400])

    # --- the environment ----------------------------------------------------

    def rotate_tokens(self) -> None:
        while not self.stop.wait(7):
            self.token_dir.write(make_jwt())

    def sts_faults(self) -> None:
        while not self.stop.wait(15):
            self.fake.configure_sts(fail_next=1, fail_code="Throttling", fail_status=400)

    # --- slow and hostile clients -------------------------------------------

    def slow_clients(self) -> None:
        u = urllib.parse.urlparse(self.sidecar.proxy)
        while not self.stop.is_set():
            held = []
            for _ in range(5):
                s = socket.create_connection((u.hostname, u.port), timeout=5)
                s.sendall(b"POST /model/m/converse HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"a\":")
                held.append(s)
            self.stop.wait(4)
            for s in held:
                s.close()
            self.count("slow")

    def hostile_clients(self) -> None:
        u = urllib.parse.urlparse(self.sidecar.admin)
        while not self.stop.is_set():
            held = []
            for _ in range(40):
                try:
                    s = socket.create_connection((u.hostname, u.port), timeout=5)
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 2000)
                    held.append(s)
                except OSError:
                    pass
            try:
                big = socket.create_connection((u.hostname, u.port), timeout=5)
                big.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 65536 + b"\r\n\r\n")
                held.append(big)
            except OSError:
                pass
            self.stop.wait(3)
            for s in held:
                s.close()
            self.count("hostile")


@pytest.mark.timeout(SOAK_SECONDS + 180)
def test_soak_nothing_fails_and_memory_and_files_stay_flat(start_sidecar, irsa_env, fake_aws, token_dir):
    fake_aws.configure_sts(lifetime_seconds=5)
    sidecar = start_sidecar({**irsa_env, **shipped_env()}, [
        "--header-read-timeout", "2s", "--idle-timeout", "5s",
        "--admin-header-read-timeout", "2s", "--admin-max-connections", "16",
    ])
    pid = sidecar.proc.pid
    soak = Soak(sidecar, fake_aws, token_dir)
    threads = [threading.Thread(target=soak.traffic, args=(w,), daemon=True) for w in range(4)]
    threads += [threading.Thread(target=f, daemon=True) for f in (soak.rotate_tokens, soak.sts_faults, soak.slow_clients, soak.hostile_clients)]
    for t in threads:
        t.start()
    samples: list[tuple[float, float, int]] = []
    started = time.monotonic()
    while time.monotonic() - started < SOAK_SECONDS:
        assert sidecar.proc.poll() is None, "the sidecar died"
        samples.append((time.monotonic() - started, rss_mib(pid), open_fds(pid)))
        time.sleep(1)
    soak.stop.set()
    for t in threads:
        t.join(timeout=40)

    assert soak.failures == [], "\n".join(soak.failures[:20])
    assert soak.done["legit"] > 100 and soak.done["hostile"] > 5 and soak.done["slow"] > 5, soak.done
    refreshes = sidecar.metric("bedrock_broker_credential_refreshes_total", {"result": "success"})
    assert refreshes and refreshes > SOAK_SECONDS / 5, refreshes

    # Memory: after a warm-up, the last fifth is no higher than the first.
    steady = [s for s in samples if s[0] >= 15]
    fifth = max(1, len(steady) // 5)
    early = statistics.median(r for _, r, _ in steady[:fifth])
    late = statistics.median(r for _, r, _ in steady[-fifth:])
    peak = max(r for _, r, _ in samples)
    print(f"\nsoak: {soak.done}, RSS early {early:.1f} MiB, late {late:.1f} MiB, peak {peak:.1f} MiB")
    assert late <= early * 1.25 + 4, (early, late)
    assert peak < 100, f"peak RSS {peak:.1f} MiB is near the injected 128Mi limit"

    # Files: once every client is gone, the descriptors come back down.
    baseline = min(f for _, _, f in samples[:5])
    wait_for(lambda: open_fds(pid) <= baseline + 8, timeout=15, what=f"open files back near {baseline}")
