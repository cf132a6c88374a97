#!/usr/bin/env python3
"""End-to-end benchmark of `bedrock-broker sidecar` against calling the
upstream directly.

One command (`make bench`, or `python3 bench/run.py`):

* builds the release binary as the image does (the release profile as it
  is, the hot-code list applied) unless --binary is given;
* starts a TLS mock upstream on loopback: Debian's nginx with a throwaway CA
  and an ECDSA leaf for 127.0.0.1, serving a converse-like JSON answer, an
  OpenAI chat completion, plain and streamed (SSE, all at once), a
  ConverseStream answer (event-stream messages, all at once), a fast SSE
  stream and a slow SSE stream (5 events 200 ms apart, via the echo
  module);
* starts the sidecar with static credentials (SigV4 on), trusting the mock
  through AWS_CA_BUNDLE;
* drives both with wrk (keep-alive, ~1 KB JSON POST bodies, concurrency 1,
  16, 64, fixed duration, several rounds, medians): every target runs once
  a round, in an order shuffled per round from a seed the report prints,
  so drift hits all alike and the verdicts pair each round's figures;
* unless --no-floor, also drives the 1 KB converse rows and the slow stream
  through a "floor": a separate plain nginx reverse proxy (no signing,
  upstream keepalive to the mock), pinned like the sidecar, to show what any
  second hop costs on this setup;
* unless --no-stack-floor, also drives the 1 KB converse rows through
  bench/stack_floor.rs (built as the `stack_floor` example): the leanest
  proxy on the sidecar's own stack, to split the sidecar's distance to
  nginx into what the stack costs and what the sidecar's code adds;
* CPU pinning: the sidecar (and the floor nginx) run on --proxy-cpu, one at a
  time; wrk, the mock nginx and this script share --load-cpu (the same as
  `taskset -c`);
* measures RSS (/proc/PID/status VmRSS, VmHWM reset per row through
  /proc/PID/clear_refs), CPU time (/proc/PID/stat utime+stime), new upstream
  connections (nginx stub_status `accepts`), time to first byte of the slow
  stream, and cold start to /readyz 200;
* prints a markdown table and writes it to bench/results/latest.md, and
  every measured run's own figures to bench/results/latest.json; a
  verdict that read a row with errors (non-2xx answers, socket errors)
  is void, and verdicts are judged on the rounds paired;
* then (unless --no-profile) runs the sidecar under valgrind callgrind for a
  fixed number of requests and adds the top entries to the report.
* with --cache-sim 8,64, also runs the sidecar and the floor under
  callgrind's cache simulator (last level = the proxy core's L2) at those
  concurrencies (and the stack floor, unless --no-stack-floor): L2 misses
  per request, and where the sidecar's are.

Only 127.0.0.1 is ever contacted. Needs wrk, nginx (+ echo module), openssl
and, for the profile, valgrind; as root on Debian it apt-get installs the
missing ones.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import http.client
import math
import importlib.util
import json
import mmap
import os
import platform
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONVERSE_PATH = "/model/bench.model-v1:0/converse"
CHAT_PATH = "/openai/v1/chat/completions"
BIG_CONVERSE_PATH = "/model/bench-big.model-v1:0/converse"
CONVERSE_STREAM_PATH = "/model/bench.model-v1:0/converse-stream"
# The same route as a client's streamed chat; the query picks the mock's
# streamed answer (nginx cannot route on the body's "stream": true).
CHAT_STREAM_PATH = CHAT_PATH + "?stream=1"
FAST_STREAM_PATH = "/openai/v1/bench/stream"
SLOW_STREAM_PATH = "/openai/v1/bench/slow-stream"

# --------------------------------------------------------------------------
# Fixed payloads (~1 KB each way)


def chat_request_bodies(converse_body: bytes, size: int) -> tuple[bytes, bytes]:
    """An OpenAI chat request of about `size` bytes, the converse request's
    text as its message: plain, and streamed with usage asked for."""
    request = {"model": "openai.gpt-oss-20b-1:0", "messages": [
        {"role": "user", "content": converse_body.decode()[: size - 90]}]}
    streamed = {**request, "stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(request).encode(), json.dumps(streamed).encode()


def converse_request_body(size: int) -> bytes:
    """A Bedrock Converse request of about `size` bytes."""
    base = {
        "messages": [{"role": "user", "content": [{"text": ""}]}],
        "inferenceConfig": {"maxTokens": 256, "temperature": 0.2},
        "system": [{"text": "You are a terse assistant."}],
    }
    overhead = len(json.dumps(base, separators=(",", ":")))
    filler = "lorem ipsum dolor sit amet " * (size // 27 + 1)
    base["messages"][0]["content"][0]["text"] = filler[: max(0, size - overhead)]
    return json.dumps(base, separators=(",", ":")).encode()


def answer_text(sentences: int) -> str:
    return ("The quick brown fox jumps over the lazy dog. " * sentences).strip()


def three_word_deltas(text: str) -> list[str]:
    """`text` as a model streams it: a few tokens an event."""
    words = text.split(" ")
    return [" ".join(words[i:i + 3]) + " " for i in range(0, len(words), 3)]


def converse_response_body() -> str:
    text = answer_text(18)
    return json.dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 212, "outputTokens": 196, "totalTokens": 408},
            "metrics": {"latencyMs": 412},
        },
        separators=(",", ":"),
    )


def _eventstream_encoder():
    """The test fakes' event-stream encoder (tests/fakes/eventstream.py,
    checked there against botocore's decoder), loaded by path: the
    benchmark needs none of the fakes' own dependencies."""
    spec = importlib.util.spec_from_file_location(
        "bench_eventstream", ROOT / "tests" / "fakes" / "eventstream.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def converse_stream_messages() -> list[bytes]:
    """A ConverseStream answer framed as Bedrock frames it: messageStart, the
    converse answer's text in deltas of three words (a model streams a few
    tokens an event), contentBlockStop, messageStop and the metadata event
    with the usage the sidecar reads."""
    es = _eventstream_encoder()
    pieces = three_word_deltas(answer_text(18))

    def event(kind: str, payload: dict) -> bytes:
        return es.event(kind, json.dumps(payload, separators=(",", ":")).encode())

    return (
        [event("messageStart", {"role": "assistant"})]
        + [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}) for p in pieces]
        + [event("contentBlockStop", {"contentBlockIndex": 0}),
           event("messageStop", {"stopReason": "end_turn"}),
           event("metadata", {"usage": {"inputTokens": 212, "outputTokens": 196, "totalTokens": 408},
                              "metrics": {"latencyMs": 412}})])


def converse_stream_response_body() -> bytes:
    return b"".join(converse_stream_messages())


def chat_response_body() -> str:
    text = answer_text(17)
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1760000000,
            "model": "openai.gpt-oss-20b-1:0",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 212, "completion_tokens": 196, "total_tokens": 408},
        },
        separators=(",", ":"),
    )


def chat_stream_response_body() -> str:
    """A streamed chat completion as OpenAI's API writes one when a client
    sets `stream_options.include_usage`: the chat answer's text in deltas
    of three words, `"usage":null` in every chunk, then a chunk with no
    choices and the usage, then `[DONE]`."""
    pieces = three_word_deltas(answer_text(17))
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1760000000,
            "model": "openai.gpt-oss-20b-1:0"}

    def chunk(choices: list, usage: dict | None) -> str:
        return "data: " + json.dumps({**base, "choices": choices, "usage": usage}, separators=(",", ":")) + "\n\n"

    deltas = [{"role": "assistant", "content": p} if i == 0 else {"content": p} for i, p in enumerate(pieces)]
    return ("".join(chunk([{"index": 0, "delta": d, "finish_reason": None}], None) for d in deltas)
            + chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], None)
            + chunk([], {"prompt_tokens": 212, "completion_tokens": 196, "total_tokens": 408})
            + "data: [DONE]\n\n")


def sse_event(i: int) -> str:
    return (
        'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk",'
        f'"choices":[{{"index":0,"delta":{{"content":"token {i} "}}}}]}}\n\n'
    )


# --------------------------------------------------------------------------
# Process helpers


def pinned(cpu: int | None):
    """preexec_fn pinning the child to one CPU (what `taskset -c CPU` does)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Waits until something accepts on `port`; gives up early if `proc`
    (the process meant to listen) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process meant to listen on {port} exited ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return out


def cpu_times(cpu: int | None) -> tuple[float, float]:
    """Seconds one CPU spent busy inside this VM (any process, interrupts)
    and stolen by the hypervisor (the host ran something else on it), from
    /proc/stat. Steal is kept apart: it is not load on this machine but
    time this VM did not get, and it leaves the caches cold."""
    if cpu is None:
        return 0.0, 0.0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                # user nice system idle iowait irq softirq steal
                v = [int(x) for x in line.split()[1:9]]
                return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, v[7] / CLK_TCK
    return 0.0, 0.0


def machine_busy(window: float = 2.0) -> float:
    """Fraction of all CPUs busy over `window` seconds."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v[:8]), v[3] + v[4]
    t0, i0 = snap()
    time.sleep(window)
    t1, i1 = snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit_s: float, threshold: float = 0.15) -> float:
    """Waits up to `limit_s` for the machine to be quiet; returns the last busy fraction."""
    deadline = time.monotonic() + limit_s
    busy = machine_busy()
    while busy > threshold and time.monotonic() < deadline:
        print(f"bench: machine {100 * busy:.0f} % busy; waiting for it to settle ...", flush=True)
        busy = machine_busy(5.0)
    return busy


def reset_peak_rss(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


# --------------------------------------------------------------------------
# The hot-code list


# The hot-code list (bench/hot_code.py writes it, build.rs applies it) and
# how much of it a binary holds. Under this share found, the list is stale.
HOT_CODE_LIST = ROOT / "link" / "hot-code.txt"
HOT_CODE_FRESH = 0.9


def text_symbols(binary: Path) -> dict[str, tuple[int, int]]:
    """Function symbols of `binary`: name -> (address, size)."""
    out = subprocess.run(["nm", "--defined-only", "-S", str(binary)], capture_output=True,
                         text=True, check=True).stdout
    return parse_nm(out)


def parse_nm(out: str) -> dict[str, tuple[int, int]]:
    syms: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            syms.setdefault(parts[3], (int(parts[0], 16), int(parts[1], 16)))
    return syms


class Coverage:
    """How much of the hot-code list a binary holds: names `listed`, of
    them `found` (`found_bytes` of code), and the `span` from the first to
    the end of the last found, about `found_bytes` when the linker placed
    them together."""

    def __init__(self, listed: int, found: int, found_bytes: int, span: int,
                 unknown: str | None = None):
        self.listed, self.found, self.found_bytes, self.span = listed, found, found_bytes, span
        # Why the binary cannot tell (no symbols, no `nm`), if it cannot.
        self.unknown = unknown

    @property
    def fresh(self) -> bool:
        return self.listed > 0 and self.found >= HOT_CODE_FRESH * self.listed

    @property
    def together(self) -> bool:
        return self.found > 0 and self.span <= 1.1 * self.found_bytes + 64 * 1024

    def describe(self) -> str:
        if not self.listed:
            return "no hot-code list (link/hot-code.txt)"
        if self.unknown:
            return f"cannot tell whether link/hot-code.txt applies: {self.unknown}"
        text = (f"{self.found:,} of the {self.listed:,} functions in link/hot-code.txt "
                f"({self.found_bytes / MIB:.1f} MiB)")
        if not self.fresh:
            return text + "; the list is stale (`make hot-code` writes it again)"
        if not self.together:
            return (text + f", but spread over {self.span / MIB:.1f} MiB: "
                    "not linked in the list's order")
        return text + ", placed together"


def listed_names(path: Path = HOT_CODE_LIST) -> list[str]:
    """The list's names (lines starting with `#` are comments, as for lld)."""
    if not path.exists():
        return []
    return [n.strip() for n in path.read_text().splitlines()
            if n.strip() and not n.lstrip().startswith("#")]


def coverage(symbols: dict[str, tuple[int, int]], names: list[str]) -> Coverage:
    found = [symbols[n] for n in names if n in symbols]
    if not found:
        return Coverage(len(names), 0, 0, 0)
    lo = min(a for a, _ in found)
    hi = max(a + s for a, s in found)
    return Coverage(len(names), len(found), sum(s for _, s in found), hi - lo)


def binary_coverage(binary: Path, path: Path = HOT_CODE_LIST) -> Coverage:
    names = listed_names(path)
    try:
        symbols = text_symbols(binary)
    except FileNotFoundError:
        return Coverage(len(names), 0, 0, 0, "no `nm` here (binutils)")
    except subprocess.CalledProcessError as e:
        return Coverage(len(names), 0, 0, 0, f"`nm` failed: {e.stderr.strip()[:200]}")
    if not symbols:
        # The image's binary, say: stripped after the build.
        return Coverage(len(names), 0, 0, 0, "the binary has no symbols (stripped?)")
    return coverage(symbols, names)


# --------------------------------------------------------------------------
# Tools


def ensure_tools(need_valgrind: bool) -> None:
    want = {"wrk": "wrk", "nginx": "nginx-light", "openssl": "openssl", "nm": "binutils"}
    if need_valgrind:
        want["valgrind"] = "valgrind"
        want["callgrind_annotate"] = "valgrind"
    missing = sorted({pkg for tool, pkg in want.items() if not shutil.which(tool)})
    if not os.path.exists(ECHO_MODULE):
        missing.append("libnginx-mod-http-echo")
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"bench: missing {', '.join(missing)}; install them (Debian: apt-get install {' '.join(missing)})")
    print(f"bench: installing {' '.join(missing)} with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def cargo_release(target_dir: Path, *extra: str) -> None:
    """Release build as the image's: the release profile as it is and the
    hot-code list applied (`BEDROCK_BROKER_HOT_CODE=1`; the image strips
    the symbols after the build). Overriding the profile (debug info, say)
    would change every symbol's hash, so the list would no longer match,
    and the code measured would be laid out otherwise than the code
    shipped."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir), BEDROCK_BROKER_HOT_CODE="1")
    cmd = ["cargo", "build", "--release", "--locked", *extra]
    print(f"bench: {' '.join(cmd)} (CARGO_TARGET_DIR={target_dir}) ...", flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def drop_cached_pages(path: Path) -> None:
    """Evicts `path` from the page cache before anything maps it. A binary
    just written (a build, a `cp`, an image layer just unpacked) sits in
    the cache in the large pieces it was written in, and a process mapping
    it maps those whole: about 1 MiB more file-backed RSS idle than the
    same binary read back from disk (a node whose image was pulled a while
    ago), less under load. Evicted, every run starts from the second
    state, whatever happened to the file before, so runs compare. Pages a
    running process still maps, and files on a tmpfs, stay."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not evicted
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def built_with_test_clock(binary: Path) -> bool:
    """Whether tokio's test-util clock is linked into `binary`. Building the
    sidecar in one cargo invocation with an example or a test (`cargo build
    --bin bedrock-broker --example stack_floor`) switches on the
    dev-dependencies' features for the whole build, tokio's `test-util`
    among them, whose clock costs about 600 instructions a request: not the
    binary that ships. Seen by its symbol, so only in binaries that keep
    their symbols, as this script's builds do."""
    with open(binary, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(b"DID_PAUSE_CLOCK") != -1


def build_binary(target_dir: Path) -> Path:
    cargo_release(target_dir)
    return target_dir / "release" / "bedrock-broker"


def build_stack_floor(target_dir: Path) -> Path:
    """The stack-floor proxy (`bench/stack_floor.rs`)."""
    cargo_release(target_dir, "--example", "stack_floor")
    return target_dir / "release" / "examples" / "stack_floor"


# --------------------------------------------------------------------------
# Mock upstream: nginx with TLS


def make_certs(d: Path) -> Path:
    """A throwaway CA and an ECDSA P-256 leaf for IP 127.0.0.1. Returns the CA PEM."""
    (d / "leaf.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    o = ["openssl"]
    run(o + ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(d / "ca.key")])
    run(o + ["req", "-x509", "-new", "-key", str(d / "ca.key"), "-sha256", "-days", "2",
             "-subj", "/CN=bedrock-broker bench CA", "-out", str(d / "ca.pem"),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(o + ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(d / "leaf.key")])
    run(o + ["req", "-new", "-key", str(d / "leaf.key"), "-subj", "/CN=127.0.0.1",
             "-out", str(d / "leaf.csr")])
    run(o + ["x509", "-req", "-in", str(d / "leaf.csr"), "-CA", str(d / "ca.pem"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-sha256",
             "-extfile", str(d / "leaf.ext"), "-out", str(d / "leaf.pem")])
    return d / "ca.pem"


def nginx_quote(s: str) -> str:
    assert "'" not in s and "\\" not in s and "$" not in s
    return "'" + s + "'"


def nginx_main_and_http_start(d: Path) -> str:
    """The part of an nginx.conf both bench nginx instances share: one
    worker in the foreground, everything under `d`, and the `http {` block
    opened with keep-alive settings that never close a benchmark connection."""
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 1m;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
"""


def start_nginx(d: Path, conf: str, cpu: int | None, wrapper: list[str] | None = None):
    """Writes `conf` to d/nginx.conf and starts nginx on it, pinned to `cpu`
    (under `wrapper`, e.g. valgrind, if given)."""
    (d / "nginx.conf").write_text(conf)
    log = open(d / "stderr.log", "w")
    proc = subprocess.Popen(
        [*(wrapper or []), "nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=pinned(cpu),
    )
    return proc, log


def stop_process(proc: subprocess.Popen, log, grace: float) -> None:
    """SIGTERM, SIGKILL after `grace` seconds; then closes its log."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


class Mock:
    """nginx on loopback: HTTPS API port (HTTP/1.1 only, like the direct
    path), optional HTTPS port with h2 by ALPN, and a plain status port."""

    def __init__(self, workdir: Path, cpu: int | None, events: int, gap_s: float):
        self.dir = workdir / "nginx"
        self.dir.mkdir()
        self.ca = make_certs(self.dir)
        self.port = free_port()
        self.h2_port = free_port()
        self.status_port = free_port()
        self.status_requests = 0  # see accepts()
        slow = []
        for i in range(events):
            slow.append(f"echo -n {nginx_quote(sse_event(i))};")
            slow.append("echo_flush;")
            if i < events - 1:
                slow.append(f"echo_sleep {gap_s};")
        slow.append("echo -n 'data: [DONE]\n\n';")
        fast_stream = "".join(sse_event(i) for i in range(events)) + "data: [DONE]\n\n"
        d = self.dir

        def served_file(name: str, body: bytes, content_type: str) -> str:
            """Writes `body` to a file and gives the internal location that
            serves it. Binary (or, for the chat stream, longer than an nginx
            parameter may be), so not a `return` string but a file, and
            nginx's static handler serves files to GET only: the route
            answers 405 and its error page's internal redirect (which makes
            the request a GET) serves the file with status 200, on the same
            connection."""
            (d / name).write_bytes(body)
            return f"""        location = /{name} {{
            internal;
            root {d};
            open_file_cache max=4;
            types {{ }}
            default_type {content_type};
        }}"""
        tls = f"""
        ssl_certificate {d}/leaf.pem;
        ssl_certificate_key {d}/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:1m;
        # Large bodies: read the whole body before answering (a bare
        # `return` would answer early and close the connection mid-upload).
        location ~ ^/model/bench-big[^/]*/converse$ {{
            default_type application/json;
            client_body_buffer_size 16m;
            echo_read_request_body;
            echo -n {nginx_quote(converse_response_body())};
        }}
        location ~ ^/model/[^/]+/converse$ {{
            default_type application/json;
            return 200 {nginx_quote(converse_response_body())};
        }}
        location ~ ^/model/[^/]+/converse-stream$ {{
            error_page 405 =200 /converse-stream.bin;
            return 405;
        }}
{served_file("converse-stream.bin", converse_stream_response_body(), "application/vnd.amazon.eventstream")}
        location = {CHAT_PATH} {{
            error_page 405 =200 /chat-stream.sse;
            if ($arg_stream) {{
                return 405;
            }}
            default_type application/json;
            return 200 {nginx_quote(chat_response_body())};
        }}
{served_file("chat-stream.sse", chat_stream_response_body().encode(), "text/event-stream")}
        location = {FAST_STREAM_PATH} {{
            default_type text/event-stream;
            return 200 {nginx_quote(fast_stream)};
        }}
        location = {SLOW_STREAM_PATH} {{
            default_type text/event-stream;
            echo_read_request_body;
            {' '.join(slow)}
        }}
        location / {{
            default_type application/json;
            return 404 '{{"message":"no such bench route"}}';
        }}
"""
        conf = f"""
load_module {ECHO_MODULE};
{nginx_main_and_http_start(d)}    server {{
        listen 127.0.0.1:{self.port} ssl;
{tls}
    }}
    server {{
        listen 127.0.0.1:{self.h2_port} ssl http2;
{tls}
    }}
    server {{
        listen 127.0.0.1:{self.status_port};
        location = /status {{ stub_status; }}
    }}
}}
"""
        self.proc, self.log = start_nginx(d, conf, cpu)
        for p in (self.port, self.h2_port, self.status_port):
            wait_port(p, 10)

    def accepts(self) -> int:
        """Connections nginx has accepted so far (all ports)."""
        c = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=5)
        c.request("GET", "/status")
        text = c.getresponse().read().decode()
        c.close()
        # "Active connections: 1 \nserver accepts handled requests\n 5 5 9 \n..."
        # Each status request is a connection of its own: count none of them,
        # or every measured delta is one too high.
        self.status_requests += 1
        return int(text.splitlines()[2].split()[0]) - self.status_requests

    def stop(self) -> None:
        stop_process(self.proc, self.log, 5)


# --------------------------------------------------------------------------
# Floors: reverse proxies that do no signing (nginx, and our stack without our code)


FLOOR = "floor: nginx reverse proxy, no signing"
STACK_FLOOR = "stack floor: hyper + rustls, none of the sidecar's code"
BASELINE = "sidecar, --baseline-binary"


class Floor:
    """A second nginx instance (own config, temp dir and pid file; not the
    mock): a plain-HTTP listener on loopback that proxy_passes everything to
    the TLS mock over kept-alive upstream connections, with no signing and
    no body handling beyond what nginx does anyway. It is pinned to the
    proxy's CPU exactly like the sidecar and shows what any second hop costs
    on this setup. `master_process off` with one worker: the process we
    start is the one worker that serves, so its /proc/PID/stat and VmHWM
    are the proxy's CPU time and peak RSS."""

    def __init__(self, workdir: Path, upstream_port: int, ca: Path, cpu: int | None,
                 wrapper: list[str] | None = None, name: str = "floor-nginx",
                 start_timeout: float = 10):
        self.dir = workdir / name
        self.dir.mkdir()
        self.port = free_port()
        d = self.dir
        conf = f"""
{nginx_main_and_http_start(d)}    upstream bench_mock {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 10000000;  # default 1000 would reconnect every 1k requests
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass https://bench_mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;  # streams pass through as they arrive
            proxy_ssl_session_reuse on;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            # Verify the mock like the sidecar does (costs only on new connections).
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_name localhost;
        }}
    }}
}}
"""
        self.proc, self.log = start_nginx(d, conf, cpu, wrapper)
        self.pid = self.proc.pid
        try:
            wait_port(self.port, start_timeout, self.proc)
        except BaseException as e:
            # Also on Ctrl-C: nobody else holds this process yet.
            self.stop()
            logs = [f.read_text()[-2000:] for f in (d / "error.log", d / "stderr.log") if f.exists()]
            if isinstance(e, RuntimeError):
                raise RuntimeError(f"floor nginx did not start ({e}): {' '.join(logs)}") from None
            raise

    def stop(self) -> None:
        stop_process(self.proc, self.log, 5)


class StackFloor:
    """`bench/stack_floor.rs`: the leanest proxy on the sidecar's own stack
    (tokio current-thread, hyper HTTP/1.1, tokio-rustls with aws-lc-rs), none of
    the sidecar's code. Pinned like the sidecar. Between nginx's floor and
    the sidecar it splits the distance: what the stack costs, and what the
    sidecar adds to it."""

    def __init__(self, binary: Path, upstream_port: int, ca: Path, cpu: int | None,
                 workdir: Path, wrapper: list[str] | None = None, name: str = "stack-floor",
                 start_timeout: float = 10):
        self.port = free_port()
        self.log = open(workdir / f"{name}-{self.port}.log", "w")
        cmd = [*(wrapper or []), str(binary), f"127.0.0.1:{self.port}",
               f"127.0.0.1:{upstream_port}", str(ca), "localhost"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=pinned(cpu))
        self.pid = self.proc.pid
        try:
            wait_port(self.port, start_timeout, self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc, self.log, 60)  # 60: slow under valgrind


# --------------------------------------------------------------------------
# The sidecar


def image_env() -> dict[str, str]:
    """The `ENV` of the Dockerfile's final stage: the sidecar is benchmarked
    with the environment the shipped image gives it (the malloc setting)."""
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM "):]
    env = {}
    for m in re.finditer(r"^ENV (\S+?)=(\S+)$", final, re.M):
        env[m.group(1)] = m.group(2)
    return env


IMAGE_ENV = image_env()
# --sidecar-env: experiments (an allocator's tunables, LD_PRELOAD) apply to
# every sidecar the run starts, so load rows, profile and burst agree.
EXPERIMENT_ENV: dict[str, str] = {}
# The 'usage metrics off' rows and profile: the data-path feature switched off.
USAGE_OFF = {"BEDROCK_BROKER_USAGE_METRICS": "false"}


# Variables whose values are credentials: the report names them and their
# length, never the value (a report gets pasted into issues and docs).
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK",
              "BEDROCK_BROKER_PROXY_TOKEN")


def experiment_line() -> str:
    def shown(k: str, v: str) -> str:
        return f"`{k}=<{len(v)} bytes, redacted>`" if k in SECRET_ENV else f"`{k}={v}`"
    return ("Experiment environment (`--sidecar-env`, every sidecar of this run, over the image's): "
            + ", ".join(shown(k, v) for k, v in EXPERIMENT_ENV.items()))


class Sidecar:
    def __init__(self, binary: Path, upstream_port: int, ca: Path, cpu: int | None,
                 workdir: Path, wrapper: list[str] | None = None, name: str = "sidecar",
                 extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.admin_port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "AWS_ACCESS_KEY_ID": "AKIDBENCHEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "benchSecretKeyExampleNotRealAtAll000000",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": f"https://127.0.0.1:{upstream_port}",
            "AWS_CA_BUNDLE": str(ca),
            "AWS_EC2_METADATA_DISABLED": "true",
            "BEDROCK_BROKER_LISTEN": f"127.0.0.1:{self.port}",
            "BEDROCK_BROKER_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "RUST_LOG": "warn",
            **IMAGE_ENV,
            **EXPERIMENT_ENV,
            **(extra_env or {}),
        }
        self.log_path = workdir / f"{name}-{self.port}.log"
        self.log = open(self.log_path, "w")
        cmd = [*(wrapper or []), str(binary), "sidecar"]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=pinned(cpu))
        self.pid = self.proc.pid

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.admin_port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> float:
        """Seconds from process start to the first /readyz 200."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.ready():
                return time.perf_counter() - self.started
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.0005)
        raise RuntimeError(f"sidecar not ready after {timeout}s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        # Long enough for a graceful drain, also under valgrind.
        stop_process(self.proc, self.log, 60)


# --------------------------------------------------------------------------
# Load generation


def run_wrk(url: str, path: str, body_file: Path, conns: int, duration: float,
            cpu: int | None) -> dict:
    env = dict(os.environ, BENCH_PATH=path, BENCH_BODY_FILE=str(body_file))
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
           "-s", str(BENCH / "wrk.lua"), url]
    p = subprocess.run(cmd, env=env, text=True, capture_output=True, preexec_fn=pinned(cpu))
    m = re.search(r"BENCH_JSON (\{.*\})", p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stdout}\n{p.stderr}")
    return parse_wrk(p.stdout)


def parse_wrk(stdout: str) -> dict:
    """A wrk run's figures from its output with bench/wrk.lua: the script's
    BENCH_JSON line, and the errors by kind. Answers with a status of 400
    or more (wrk's "Non-2xx or 3xx responses") and socket errors (connect,
    read, write, timeout) are counted from both the script's line and
    wrk's own summary lines, the larger taken: a run with any is not a
    measurement of the row (an error answer is cheap and fast)."""
    m = re.search(r"BENCH_JSON (\{.*\})", stdout)
    if not m:
        raise RuntimeError(f"wrk gave no BENCH_JSON line: {stdout}")
    r = json.loads(m.group(1))
    non2xx = r.get("errors_status", 0)
    socket_errors = sum(r.get(f"errors_{k}", 0) for k in ("connect", "read", "write", "timeout"))
    if n := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", stdout):
        non2xx = max(non2xx, int(n.group(1)))
    if n := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", stdout):
        socket_errors = max(socket_errors, sum(int(x) for x in n.groups()))
    r["errors_non2xx"] = non2xx
    r["errors_socket"] = socket_errors
    r["errors"] = non2xx + socket_errors
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


class Target:
    """Where wrk sends requests, and what to sample around each run: `proxy`
    is the process in between (a Sidecar, the Floor nginx or the
    StackFloor; None for the direct path)."""

    def __init__(self, name: str, url: str, proxy: Sidecar | Floor | StackFloor | None,
                 rows: str = "all"):
        self.name = name
        self.url = url
        self.proxy = proxy
        self.rows = rows  # "all", or "1 KB converse" for rows measured only there


def answer_bytes(endpoint: str) -> int:
    """The body of the mock's answer to a row's requests."""
    return len({"converse": converse_response_body(), "openai chat": chat_response_body(),
                "converse stream": converse_stream_response_body(),
                "chat stream": chat_stream_response_body()}[endpoint])


def check_answers(target: str, endpoint: str, r: dict) -> None:
    """A row whose requests reach another of the mock's routes (a route or
    query lost on the way) still gets 200s from it, and would measure that
    answer under the row's name: wrk's bytes a request (headers and body)
    fall short of the row's answer then."""
    want = answer_bytes(endpoint)
    got = r["bytes"] / max(r["requests"], 1)
    if r["requests"] == 0 or got < want:
        raise RuntimeError(f"{target} ({endpoint}): {got:,.0f} bytes a response, less than the "
                           f"{want:,}-byte answer the row is for: the mock served another route")


def round_orders(targets: list, repeats: int, seed, row: str) -> list[list]:
    """The order of the targets in each round: shuffled afresh every
    round, from `seed` and the row's name, so the same seed gives the same
    orders again. In a fixed order the A/B twins ('usage metrics off',
    --baseline-binary) always ran right after the sidecar, in whatever
    state it left the machine (caches, frequency, the mock's buffers)."""
    rng = random.Random(f"{seed}/{row}")
    orders = []
    for _ in range(repeats):
        order = list(targets)
        rng.shuffle(order)
        orders.append(order)
    return orders


def measure(targets: list[Target], mock: Mock, path: str, body_file: Path, conns: int,
            args, endpoint: str) -> dict[str, dict]:
    """Warm-up (every target, in the order given), then `repeats` rounds
    of one run per target, in an order shuffled per round (see
    round_orders()); medians, and every round's figures."""
    for t in targets:
        check_answers(t.name, endpoint, run_wrk(t.url, path, body_file, conns, args.warmup, args.load_cpu))
    runs: dict[str, list] = {t.name: [] for t in targets}
    peaks: dict[str, float] = {}
    for t in targets:
        if t.proxy:
            reset_peak_rss(t.proxy.pid)
    redone: dict[str, int] = {t.name: 0 for t in targets}

    def one_run(t: Target) -> dict:
        a0 = mock.accepts()
        c0 = proc_cpu_seconds(t.proxy.pid) if t.proxy else 0.0
        b0, s0 = cpu_times(args.proxy_cpu)
        l0 = cpu_times(args.load_cpu)[1]
        r = run_wrk(t.url, path, body_file, conns, args.duration, args.load_cpu)
        b1, s1 = cpu_times(args.proxy_cpu)
        l1 = cpu_times(args.load_cpu)[1]
        r["cpu_s"] = (proc_cpu_seconds(t.proxy.pid) - c0) if t.proxy else None
        r["cpu_us"] = (r["cpu_s"] * 1e6 / r["requests"]) if t.proxy and r["requests"] else None
        # How busy the proxy's CPU was with anything else (other jobs on a
        # shared machine): the noise indicator of the row.
        r["others_s"] = b1 - b0 - (r["cpu_s"] or 0.0)
        r["steal_proxy_s"] = s1 - s0
        r["steal_load_s"] = l1 - l0
        r["accepts"] = mock.accepts() - a0
        return r

    orders = round_orders(targets, args.repeats, args.seed, f"{endpoint} {path} {conns}")
    for order in orders:
        for t in order:
            # A run during which the hypervisor took a share of either pinned
            # CPU measures the host's other tenants, not this code: do it
            # again (a bounded number of times; the report counts them).
            for attempt in range(args.steal_retries + 1):
                r = one_run(t)
                wall = r["duration_us"] / 1e6
                steal = max(r["steal_proxy_s"], r["steal_load_s"]) / wall
                if steal <= args.max_steal / 100 or attempt == args.steal_retries:
                    break
                redone[t.name] += 1
                print(f"bench: {t.name}, {conns} conns: the hypervisor took {100 * steal:.0f} % "
                      f"of a pinned CPU during the run; running it again", flush=True)
            runs[t.name].append(r)
    out = {}
    for t in targets:
        rs = runs[t.name]
        total = sum(r["requests"] for r in rs)
        wall_s = sum(r["duration_us"] / 1e6 for r in rs)
        out[t.name] = {
            "rps": statistics.median(r["rps"] for r in rs),
            "p50_ms": statistics.median(r["p50_us"] for r in rs) / 1000,
            "p99_ms": statistics.median(r["p99_us"] for r in rs) / 1000,
            "requests": total,
            "errors": sum(r["errors"] for r in rs),
            "errors_non2xx": sum(r["errors_non2xx"] for r in rs),
            "errors_socket": sum(r["errors_socket"] for r in rs),
            "all_errors": [r["errors"] for r in rs],
            "cpu_per_10k": (sum(r["cpu_s"] for r in rs) / total * 10_000) if t.proxy else None,
            "proxy_util": (sum(r["cpu_s"] for r in rs) / wall_s) if t.proxy else None,
            "others_util": max(0.0, sum(r["others_s"] for r in rs) / wall_s),
            "steal_proxy": sum(r["steal_proxy_s"] for r in rs) / wall_s,
            "steal_load": sum(r["steal_load_s"] for r in rs) / wall_s,
            "redone": redone[t.name],
            "conns_per_1k": sum(r["accepts"] for r in rs) / total * 1000,
            "peak_rss": proc_mem(t.proxy.pid)["VmHWM"] if t.proxy else None,
            "rss_after": proc_mem(t.proxy.pid)["VmRSS"] if t.proxy else None,
            "all_rps": [round(r["rps"]) for r in rs],
            "all_p50_ms": [r["p50_us"] / 1000 for r in rs],
            "all_p99_ms": [r["p99_us"] / 1000 for r in rs],
            "all_order": [order.index(t) for order in orders],
            "all_cpu_us": [r["cpu_us"] for r in rs],
            "runs": rs,  # every measured run's own figures, for latest.json
        }
    return out


def burst_memory(binary: Path, mock: Mock, body: bytes, conns: int, args, workdir: Path,
                 watch_s: float = 30.0) -> dict:
    """RSS of a fresh sidecar before, during and after bursts of `conns`
    concurrent POSTs of `body` (all started together), then every 0.5 s for
    `watch_s` seconds of idleness after the last: does it give the memory
    back? `args.bursts` bursts, 2 s apart: after the first, glibc's malloc
    has raised its mmap threshold, so later bursts are the harder case."""
    sc = Sidecar(binary, mock.port, mock.ca, args.proxy_cpu, workdir, name="burst")
    try:
        sc.wait_ready(10)
        time.sleep(1.0)
        idle = proc_mem(sc.pid)
        barrier = threading.Barrier(conns)
        statuses: list[int | str] = []

        def one() -> None:
            c = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=60)
            try:
                barrier.wait()
                c.request("POST", BIG_CONVERSE_PATH, body=body,
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                statuses.append(r.status)
            except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as e:
                statuses.append(type(e).__name__)  # counted, not lost with the thread
            finally:
                c.close()

        for i in range(args.bursts):
            if i:
                time.sleep(2.0)
            threads = [threading.Thread(target=one) for _ in range(conns)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        ended = time.monotonic()
        end = proc_mem(sc.pid)
        samples = []  # (s since the burst ended, VmRSS MiB, RssAnon MiB)
        while (elapsed := time.monotonic() - ended) < watch_s:
            m = proc_mem(sc.pid)
            samples.append((round(elapsed, 1), m["VmRSS"], m["RssAnon"]))
            time.sleep(0.5)
        after = proc_mem(sc.pid)
        counts: dict = {}
        for st in statuses:
            counts[st] = counts.get(st, 0) + 1
        return {"idle": idle["VmRSS"], "idle_anon": idle["RssAnon"], "peak": end["VmHWM"],
                "at_end": end["VmRSS"], "at_end_anon": end["RssAnon"],
                "after": after["VmRSS"], "after_anon": after["RssAnon"],
                "back_after_s": settled_after(samples, 2 * idle["VmRSS"]), "watch_s": watch_s,
                "ok": counts.get(200, 0), "statuses": counts, "conns": conns, "bursts": args.bursts,
                "mb": len(body) / 1e6, "samples": samples}
    finally:
        sc.stop()


def settled_after(samples: list[tuple], limit: float) -> float | None:
    """When VmRSS went under `limit` for good: the time of the first
    sample from which every later one (to the end of the window) is under
    it; None if the last is not. A dip under the line that climbs back is
    not memory given back."""
    settled = None
    for t, rss, *_ in samples:
        if rss >= limit:
            settled = None
        elif settled is None:
            settled = t
    return settled


def burst_judgement(b: dict) -> tuple[str, bool, str | None]:
    """The burst verdict: (measured, met?, note). Met when VmRSS is under
    2× its idle RSS at start in every sample from the crossing to the end
    of the window (the target as the issue states it); anonymous memory
    (RssAnon, the pod's own, without the ~9 MiB of file-backed code) is
    given beside, not judged. Void unless every burst request answered
    200: a refused request allocates nothing."""
    total = b["conns"] * b["bursts"]
    limit = 2 * b["idle"]
    settled = settled_after(b["samples"], limit) if b.get("samples") else None
    measured = f"{b['idle']:.1f} → {b['after']:.1f} MiB"
    measured += (f" (under {limit:.1f} MiB from {settled:.1f} s to the end of the {b['watch_s']:.0f} s window)"
                 if settled is not None else
                 f" (not under {limit:.1f} MiB for good within {b['watch_s']:.0f} s)")
    if b.get("after_anon") is not None:
        measured += f"; anonymous {b['idle_anon']:.1f} → {b['after_anon']:.1f} MiB"
    note = None
    if b["ok"] < total:
        note = f"void: {total - b['ok']} of {total} burst answers not 200"
    return measured, settled is not None and note is None, note


def burst_line(b: dict) -> str:
    settled = settled_after(b["samples"], 2 * b["idle"]) if b.get("samples") else None
    back = (f"under 2× idle ({2 * b['idle']:.1f} MiB) from {settled:.1f} s after the burst ended "
            f"to the end of the {b['watch_s']:.0f} s window"
            if settled is not None else
            f"**not** under 2× idle for good within {b['watch_s']:.0f} s")
    anon = (lambda k: f" ({b[k]:.1f} MiB anonymous)" if b.get(k) is not None else "")
    others = {k: n for k, n in b.get("statuses", {}).items() if k != 200}
    return (f"Memory after a burst ({b['conns']} concurrent {b['mb'] * 1e6 / MIB:g} MiB requests at once, "
            f"{b['bursts']} bursts 2 s apart on a fresh sidecar, measured after the last; "
            f"{b['ok']}/{b['conns'] * b['bursts']} answered 200"
            + ("".join(f", {n} {k}" for k, n in others.items())) +
            f"): idle RSS at start {b['idle']:.1f} MiB{anon('idle_anon')}; peak {b['peak']:.1f} MiB; "
            f"{b['at_end']:.1f} MiB{anon('at_end_anon')} when the burst ended; {back}; "
            f"{b['after']:.1f} MiB{anon('after_anon')} after {b['watch_s']:.0f} s.")


def stream_timing(conn_factory, path: str, body: bytes, n: int) -> dict:
    """Time to first body byte and to the end of the slow stream, on a warm
    keep-alive connection (no handshake in the number)."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    conn = conn_factory()
    conn.request("POST", CHAT_PATH, body=body, headers=headers)
    conn.getresponse().read()
    firsts, lasts = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        first = resp.read1(65536)
        t1 = time.perf_counter()
        rest = resp.read()
        t2 = time.perf_counter()
        if resp.status != 200 or not first.startswith(b"data:"):
            raise RuntimeError(f"slow stream: {resp.status} {first[:200]!r}")
        if (first + rest).count(b"data:") < 2:
            raise RuntimeError("slow stream: too few events")
        firsts.append((t1 - t0) * 1000)
        lasts.append((t2 - t0) * 1000)
    conn.close()
    return {"ttfb_ms": statistics.median(firsts), "ttlb_ms": statistics.median(lasts)}


# --------------------------------------------------------------------------
# Profile: callgrind


def fixed_load(port: int, path: str, body: bytes, total: int, conc: int) -> int:
    """Sends exactly `total` requests over `conc` keep-alive connections."""
    ok = [0] * conc
    per = [total // conc + (1 if i < total % conc else 0) for i in range(conc)]
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-placeholder",
               "User-Agent": "bedrock-broker-bench/1", "Accept": "application/json"}

    def worker(i: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(per[i]):
            c.request("POST", path, body=body, headers=headers)
            r = c.getresponse()
            r.read()
            ok[i] += r.status == 200
        c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(ok)


def shorten(fn: str) -> str:
    """Drops generic arguments and hash suffixes from a demangled Rust name,
    keeping the `<Type as Trait>` of trait methods."""
    fn = re.sub(r"::h[0-9a-f]{16}", "", fn)
    keep = 1 if fn.startswith("<") else 0
    out, depth = [], 0
    for ch in fn:
        if ch == "<":
            depth += 1
            if depth <= keep:
                out.append(ch)
            continue
        if ch == ">" and depth:
            if depth <= keep:
                out.append(ch)
            depth -= 1
            continue
        if depth <= keep:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= 160 else s[:157] + "..."


# One number column of callgrind_annotate: "1,234", optionally followed by
# its share "(0.5%)"; "." where the count is zero.
ANNOTATE_CELL = r"([\d,]+|\.)\s+(?:\([^)]*\)\s+)?"


def annotate_count(cell: str) -> int:
    return 0 if cell == "." else int(cell.replace(",", ""))


def annotate_function(entry: str) -> str:
    """The short function name of a callgrind_annotate entry
    ("file:function [object] (N x)")."""
    fn = re.sub(r"\s*\[[^\]]*\]$", "", entry.split(":", 1)[-1])
    return shorten(re.sub(r"\s*\([\d,]+x\)$", "", fn))


def annotate(out_file: Path, inclusive: bool, top: int) -> tuple[int, list[tuple[int, str]]]:
    """Top functions from callgrind_annotate. Entries of one function split
    over several source files (inlining) are merged: summed for self cost,
    the largest taken for inclusive cost. Thread-entry frames that were on
    the stack at the dump (reported with ~100% self) are dropped."""
    p = run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
             "--threshold=100", "--auto=no", str(out_file)])
    total = None
    agg: dict[str, int] = {}
    lines = p.stdout.splitlines()
    for line in lines:
        if "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
    start = next(i for i, line in enumerate(lines) if line.strip().endswith("file:function")) + 2
    table = []
    for line in lines[start:]:
        if not line.strip():
            break  # the function table ends at the first blank line
        table.append(line)
    for line in table:
        m = re.match(r"^\s*" + ANNOTATE_CELL + r"(?:\*\s+)?(.+?)\s*$", line)
        if not m:
            continue
        n = annotate_count(m.group(1))
        what = m.group(2)
        if ":" not in what:
            continue
        if not inclusive and n >= 0.99 * total:
            continue
        key = annotate_function(what)
        agg[key] = agg.get(key, 0) + n if not inclusive else max(agg.get(key, 0), n)
    rows = sorted(((n, fn) for fn, n in agg.items()), reverse=True)[:top]
    return total or 0, rows


def callgrind(start, body: bytes, requests: int, conc: int, workdir: Path, name: str,
              tool_args: list[str], path: str = CONVERSE_PATH) -> tuple[Path, int, float]:
    """Runs a proxy under callgrind for exactly `requests` requests to
    `path` (converse by default) at concurrency `conc`, after warm-up;
    returns the dump, the number answered 200 and the wall time.
    `start(wrapper)` starts the proxy (a ready Sidecar or Floor) under
    that command prefix."""
    out = workdir / f"{name}.out"
    proxy = start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *tool_args])
    try:
        # Warm the pool: every connection used below exists before counting.
        fixed_load(proxy.port, path, body, max(100, 4 * conc), conc)
        # Zero the counters after start-up and warm-up, dump right after the
        # measured requests: the dump holds only their cost (plus the idle
        # runtime ticking meanwhile, negligible).
        run(["callgrind_control", "-z", str(proxy.pid)])
        t0 = time.perf_counter()
        ok = fixed_load(proxy.port, path, body, requests, conc)
        wall = time.perf_counter() - t0
        run(["callgrind_control", "-d", str(proxy.pid)])
    finally:
        proxy.stop()
    dump = Path(f"{out}.1")
    if not dump.exists():
        raise RuntimeError(f"callgrind wrote no dump: {glob.glob(f'{out}*')}")
    return dump, ok, wall


def sidecar_starter(binary: Path, mock: Mock, args, workdir: Path, name: str,
                    extra_env: dict[str, str] | None = None):
    """A `start` for callgrind(): the sidecar under the given wrapper, ready."""
    def start(wrapper: list[str]) -> Sidecar:
        port = mock.h2_port if args.profile_h2 else mock.port
        sc = Sidecar(binary, port, mock.ca, args.proxy_cpu, workdir, wrapper, name, extra_env)
        try:
            sc.wait_ready(180)
        except BaseException:
            sc.stop()
            raise
        return sc
    return start


def floor_starter(mock: Mock, args, workdir: Path, name: str):
    """A `start` for callgrind(): the floor nginx under the given wrapper,
    listening (valgrind makes it slow to start)."""
    def start(wrapper: list[str]) -> Floor:
        return Floor(workdir, mock.port, mock.ca, args.proxy_cpu, wrapper, name, start_timeout=120)
    return start


def stack_floor_starter(binary: Path, mock: Mock, args, workdir: Path, name: str):
    """A `start` for callgrind(): the stack floor under the given wrapper,
    listening."""
    def start(wrapper: list[str]) -> StackFloor:
        return StackFloor(binary, mock.port, mock.ca, args.proxy_cpu, workdir, wrapper, name,
                          start_timeout=120)
    return start


def profile(binary: Path, mock: Mock, body: bytes, args, workdir: Path,
            streams: list[tuple[str, str, bytes]]) -> dict:
    dump, ok, wall = callgrind(sidecar_starter(binary, mock, args, workdir, "callgrind"), body,
                               args.profile_requests, args.profile_conc, workdir, "callgrind", [])
    total, incl = annotate(dump, True, args.profile_top)
    _, selfc = annotate(dump, False, args.profile_top)
    if args.keep_callgrind:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(dump, RESULTS / "callgrind.out")
    p = {"requests": args.profile_requests, "ok": ok, "conc": args.profile_conc,
         "total_ir": total, "ir_per_request": total / max(ok, 1), "inclusive": incl,
         "self": selfc, "wall_s": wall}
    sha = [n for n, fn in incl if fn == SHA256_BLOCKS]
    if sha:
        p["sha_ir_per_request"] = sha[0] / max(ok, 1)
    if not args.no_feature_rows:
        # The same requests with usage metrics off: what reading usage costs
        # in instructions, a figure the VM's noise does not move (the
        # throughput rows' verdict spreads over 20 to 40 points from round
        # to round on shared VMs).
        print("bench: callgrind profile, usage metrics off ...", flush=True)
        dump, ok, _ = callgrind(sidecar_starter(binary, mock, args, workdir, "callgrind-nousage", USAGE_OFF),
                                body, args.profile_requests, args.profile_conc, workdir,
                                "callgrind-nousage", [])
        total, _ = annotate(dump, True, 1)
        if args.keep_callgrind:
            # Beside the profile: the two annotated side by side show where reading usage goes.
            shutil.copy(dump, RESULTS / "callgrind-nousage.out")
        p["usage_off_ok"] = ok
        p["usage_off_ir_per_request"] = total / max(ok, 1)
        # Streamed answers are read by other code (the event-stream and SSE
        # scanners), message by message: their cost in instructions too,
        # where the throughput rows' figure for them is as noisy as the rest.
        p["streams"] = {}
        for what, path, stream_body in streams:
            counts = {}
            for usage, env in (("on", None), ("off", USAGE_OFF)):
                name = f"callgrind-{what.replace(' ', '-')}-{usage}"
                print(f"bench: callgrind profile, {what}, usage metrics {usage} ...", flush=True)
                dump, ok, _ = callgrind(sidecar_starter(binary, mock, args, workdir, name, env),
                                        stream_body, args.profile_requests, args.profile_conc,
                                        workdir, name, [], path)
                total, _ = annotate(dump, True, 1)
                counts[f"{usage}_ok"] = ok
                counts[f"{usage}_ir_per_request"] = total / max(ok, 1)
            p["streams"][what] = counts
    return p


def stream_usage_instructions(p: dict | None, what: str) -> str | None:
    """What reading usage cost a streamed answer (`what`, a stream row's
    endpoint) in the callgrind profiles: instructions a request and their
    share; None unless both ran and answered every request."""
    c = ((p or {}).get("streams") or {}).get(what)
    if not c or not c["on_ok"] == c["off_ok"] == p["requests"]:
        return None
    on, off = c["on_ir_per_request"], c["off_ir_per_request"]
    return f"{on - off:+,.0f} instructions a request, {100 * (on - off) / on:+.1f} % of {on:,.0f}"


# callgrind's name for the SHA-256 block function: software under valgrind
# (which hides the CPU's SHA extensions), the SHA extensions natively.
SHA256_BLOCKS = "sha2::sha256::compress256"


def usage_instructions(p: dict | None) -> str | None:
    """What reading usage cost in the callgrind profiles: instructions a
    request, as a share of all of them and of those that are not SHA-256
    (software under valgrind, the SHA extensions natively); None unless
    both profiles ran and answered every request (a failed request skips
    work and would skew the difference)."""
    if not p or p.get("usage_off_ir_per_request") is None:
        return None
    if not p["ok"] == p.get("usage_off_ok") == p["requests"]:
        return None
    on, off = p["ir_per_request"], p["usage_off_ir_per_request"]
    d = on - off
    text = f"{d:+,.0f} instructions a request, {100 * d / on:+.1f} % of {on:,.0f}"
    sha = p.get("sha_ir_per_request")
    if sha and on > sha:
        text += f", {100 * d / (on - sha):+.1f} % of the {on - sha:,.0f} besides SHA-256"
    return text


def l2_geometry(cpu: int | None) -> tuple[int, int, int]:
    """Size (bytes), ways and line size of `cpu`'s L2 from sysfs; 1 MiB,
    16 ways, 64 B when sysfs does not say."""
    base = Path(f"/sys/devices/system/cpu/cpu{cpu or 0}/cache")
    for idx in sorted(base.glob("index*")):
        try:
            if (idx / "level").read_text().strip() != "2":
                continue
            size = (idx / "size").read_text().strip()
            n = int(size.rstrip("KMG"))
            n *= {"K": 1024, "M": MIB, "G": 1024 * MIB}.get(size[-1], 1)
            ways = int((idx / "ways_of_associativity").read_text())
            line = int((idx / "coherency_line_size").read_text())
            return n, ways, line
        except (OSError, ValueError):
            break
    return MIB, 16, 64


CACHE_EVENTS = ["Ir", "D1mr", "D1mw", "DLmr", "DLmw"]


def cache_sim(who: str, start, body: bytes, conc: int, args, workdir: Path,
              name: str) -> dict:
    """callgrind's cache simulator with its last level set to the proxy
    core's L2: data misses per request of `who` at concurrency `conc`, and
    the functions (self cost) that miss most."""
    size, ways, line = l2_geometry(args.proxy_cpu)
    dump, ok, _ = callgrind(start, body, args.profile_requests, conc, workdir, name,
                            ["--cache-sim=yes", f"--LL={size},{ways},{line}"])
    if ok < args.profile_requests:
        print(f"bench: cache simulation, {who}: only {ok} of {args.profile_requests} requests "
              f"answered 200; figures are per answered request", file=sys.stderr)
    p = run(["callgrind_annotate", f"--show={','.join(CACHE_EVENTS)}", "--sort=DLmr,DLmw",
             "--inclusive=no", "--threshold=100", "--auto=no", str(dump)])
    row = re.compile(r"^\s*" + ANNOTATE_CELL * len(CACHE_EVENTS) + r"(.+?)\s*$")
    totals: dict[str, int] = {}
    agg: dict[str, int] = {}
    for text in p.stdout.splitlines():
        m = row.match(text)
        if not m:
            continue
        counts = dict(zip(CACHE_EVENTS, (annotate_count(v) for v in m.groups()[:-1])))
        what = m.group(len(CACHE_EVENTS) + 1)
        if "PROGRAM TOTALS" in what:
            totals = counts
        elif ":" in what and totals:
            misses = counts["DLmr"] + counts["DLmw"]
            if misses and counts["Ir"] < 0.99 * totals["Ir"]:  # not the thread-entry frames
                key = annotate_function(what)
                agg[key] = agg.get(key, 0) + misses
    if not totals:
        raise RuntimeError(f"callgrind_annotate gave no totals for {dump}")
    if args.keep_callgrind:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(dump, RESULTS / f"{name}.out")
    answered = max(ok, 1)
    per = {k: v / answered for k, v in totals.items()}
    # Rows under 0.05 misses a request would print as 0.0: left out.
    top = sorted(((n / answered, fn) for fn, n in agg.items()
                  if n / answered >= 0.05), reverse=True)[:10]
    copies = ([(n / answered, fn) for n, fn in memcpy_callers(dump)[:8] if n / answered >= 0.05]
              if who == "sidecar" else [])  # only the sidecar's are reported
    return {"who": who, "conc": conc, "ok": ok, "requests": args.profile_requests,
            "per_request": per, "top": top, "copies": copies, "l2": (size, ways, line)}


def memcpy_callers(dump: Path) -> list[tuple[int, str]]:
    """L2 misses inside `memcpy` by its caller (whose buffer a copy lands
    in), largest first."""
    p = run(["callgrind_annotate", "--show=DLmr,DLmw", "--sort=DLmw", "--tree=caller",
             "--inclusive=no", "--threshold=100", "--auto=no", str(dump)])
    arc = re.compile(r"^\s*" + ANNOTATE_CELL * 2 + r"([<*])\s+(.+?)\s*$")
    callers: list[tuple[int, str]] = []
    agg: dict[str, int] = {}
    # Each function's block lists its callers ("<" lines), then the
    # function itself ("*"); blocks are separated by blank lines.
    for text in p.stdout.splitlines():
        m = arc.match(text)
        if not m:
            if not text.strip():
                callers = []
            continue
        misses = sum(annotate_count(v) for v in m.group(1, 2))
        what = annotate_function(m.group(4))
        is_copy = "memcpy" in what or "memmove" in what
        if m.group(3) == "<":
            if not is_copy:  # `__memcpy_chk` calling `__memmove_*`: counted once
                callers.append((misses, what))
            continue
        if is_copy:
            for from_caller, fn in callers:
                agg[fn] = agg.get(fn, 0) + from_caller
        callers = []
    return sorted(((n, fn) for fn, n in agg.items() if n), reverse=True)


def cache_sim_lines(sims: list[dict]) -> list[str]:
    size, ways, line = sims[0]["l2"]
    L = [f"## Cache simulation (valgrind callgrind `--cache-sim=yes`, last level = this core's L2: "
         f"{size // 1024} KiB, {ways}-way, {line} B lines)\n",
         f"{sims[0]['requests']} converse requests (1 KB bodies) per row, after warm-up, each "
         f"proxy alone on the simulated core. User space only: the kernel's own misses are not "
         f"counted, and bytes it copies in (a request, TLS records) are invisible to the "
         f"simulation, so a buffer it refilled looks as warm or as cold as user code last left "
         f"it. Instructions include the SHA-256 the sidecar computes in software under valgrind "
         f"(natively it uses the CPU's SHA extensions).\n",
         "| proxy | concurrency | instructions / request | L1d misses / request | L2 data misses / request |",
         "|---|--:|--:|--:|--:|"]
    for sim in sims:
        r = sim["per_request"]
        L.append(f"| {sim['who']} | {sim['conc']} | {r['Ir']:,.0f} | {r['D1mr'] + r['D1mw']:,.0f} | "
                 f"**{r['DLmr'] + r['DLmw']:,.0f}** |")
    last = max((sim for sim in sims if sim["who"] == "sidecar"), key=lambda sim: sim["conc"])
    L.append(f"\nWhere the sidecar's L2 data misses are at concurrency {last['conc']} (self cost, top "
             f"{len(last['top'])}):\n")
    L.append("| L2 misses / request | function |")
    L.append("|--:|---|")
    for n, fn in last["top"]:
        L.append(f"| {n:,.1f} | `{fn}` |")
    if last["copies"]:
        L.append("\nThe copies: `memcpy`'s misses by the function that called it (whose "
                 "buffer or value was cold; mostly the destination, a write miss):\n")
        L.append("| L2 misses / request | caller |")
        L.append("|--:|---|")
        for n, fn in last["copies"]:
            L.append(f"| {n:,.1f} | `{fn}` |")
    return L


# --------------------------------------------------------------------------
# Report


def fmt(v, spec=".2f", dash="—"):
    return dash if v is None else format(v, spec)


def machine_line() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"load average before the run {os.getloadavg()[0]:.2f}")


def tool_versions() -> str:
    v = []
    for cmd in (["wrk", "-v"], ["nginx", "-v"]):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
            v.append((p.stdout + p.stderr).strip().splitlines()[0])
        except (OSError, IndexError):
            pass
    return "; ".join(v)


def errors_cell(r: dict) -> str:
    """The table's errors over a row's measured runs, by kind when any."""
    if not r.get("errors"):
        return "0"
    return (f"**{r['errors']:,}** ({r.get('errors_non2xx', 0):,} non-2xx, "
            f"{r.get('errors_socket', 0):,} socket)")


def verdict(ok: bool | None, note: str | None = None) -> str:
    """The verdict column: met / not met, and the note that qualifies it
    (a void row, rounds on both sides of the line)."""
    word = "—" if ok is None else ("met" if ok else "**not met**")
    return f"{word} ({note})" if note else word


class Line(tuple):
    """A line of the summary: (target, measured, met?, floor measured),
    with `note` qualifying the verdict (None when there is nothing to
    add)."""

    def __new__(cls, label: str, measured: str, ok: bool | None, floor_value: str | None,
                note: str | None = None):
        line = super().__new__(cls, (label, measured, ok, floor_value))
        line.note = note
        return line


def errors_note(used: list[tuple[dict, str]]) -> str | None:
    """'void: N errors in ...' when any of the (row, target name) pairs a
    verdict read had errors in its measured runs (non-2xx answers or
    socket errors), else None. An error answer is cheap and fast: a row
    with any measures something else than the requests it is named for."""
    bad = []
    for row, name in used:
        r = row["results"].get(name) if row else None
        n = (r or {}).get("errors", 0)
        if n:
            bad.append((f"{name} ({row['endpoint']}, {row['body']}, {row['conns']} conns)", n))
    if not bad:
        return None
    total = sum(n for _, n in bad)
    where = ", ".join(f"{w}" + (f": {n:,}" if len(bad) > 1 else "") for w, n in bad)
    return f"void: {total:,} errors in {where}"


def report(res: dict, args, command: str) -> str:
    L = []
    L.append(f"# bedrock-broker benchmark — {res['when']}\n")
    L.append(f"Command: `{command}`  ")
    L.append(f"Machine: {res['machine']}  ")
    L.append(f"Binary: `{res['binary']}`" + (f" (built from the work tree at git {res['git']})  "
             if not args.binary else f" (given with --binary; work tree at git {res['git']})  "))
    if res.get("hot_code"):
        L.append(f"Hot code: {res['hot_code']}  ")
    if args.baseline_binary:
        L.append(f"Baseline binary (A/B, 1 KB converse rows): `{args.baseline_binary}`  ")
    L.append(f"Tools: {res['tools']}  ")
    L.append("Sidecar environment from the Dockerfile's final stage (as shipped): "
             + (", ".join(f"`{k}={v}`" + (" (replaced in this run, see below)" if k in EXPERIMENT_ENV else "")
                          for k, v in IMAGE_ENV.items()) or "none") + "  ")
    if EXPERIMENT_ENV:
        L.append(experiment_line() + "  ")
    if res.get("stack_binary"):
        L.append(f"Stack floor: `{res['stack_binary']}` (bench/stack_floor.rs)  ")
    others = [name for name, off in (("the floor nginx", args.no_floor),
                                     ("the stack floor", args.no_stack_floor)) if not off]
    L.append(f"Pinning: sidecar{' (and ' + ' and '.join(others) + ')' if others else ''} on CPU {args.proxy_cpu}; wrk (1 thread), the mock nginx (1 worker) and the "
             f"driver on CPU {args.load_cpu}. Runs: {args.warmup:g} s warm-up, then {args.repeats} × "
             f"{args.duration:g} s per row, every target once a round, in an order shuffled per round "
             f"(seed {args.seed}; `--seed {args.seed}` repeats the orders); medians shown, verdicts "
             f"on the rounds paired; every run's own figures in `{args.out.with_suffix('.json').name}` "
             f"beside this report.\n")
    L.append("## Load (wrk, keep-alive, POST)\n")
    L.append("| row | body | conns | req/s | × direct | p50 ms | p99 ms | +p50 ms | +p99 ms "
             "| CPU µs / req | proxy CPU busy | new upstream conns / 1k req | peak RSS MiB | errors "
             "| other load on proxy CPU | steal, proxy / load CPU | runs re-done |")
    L.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for row in res["rows"]:
        d = row["direct"]
        for name, r in row["results"].items():
            is_direct = name == "direct"
            ratio = None if is_direct else r["rps"] / d["rps"]
            add50 = None if is_direct else r["p50_ms"] - d["p50_ms"]
            add99 = None if is_direct else r["p99_ms"] - d["p99_ms"]
            L.append(
                f"| {name} ({row['endpoint']}) | {row['body']} | {row['conns']} | {r['rps']:,.0f} | "
                f"{fmt(ratio)} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {fmt(add50, '+.3f')} | "
                f"{fmt(add99, '+.3f')} | {fmt(r['cpu_per_10k'] and 100 * r['cpu_per_10k'], '.1f')} | "
                f"{fmt(None if r['proxy_util'] is None else 100 * r['proxy_util'], '.0f')}{'' if r['proxy_util'] is None else ' %'} | "
                f"{r['conns_per_1k']:.2f} | {fmt(r['peak_rss'], '.1f')} | {errors_cell(r)} | "
                f"{100 * r['others_util']:.0f} % | "
                f"{100 * r['steal_proxy']:.0f} / {100 * r['steal_load']:.0f} % | {r['redone']} |")
    stream = converse_stream_messages()
    L.append("\nDirect rows: wrk → nginx over TLS (its own connections show in the "
             "connection column). Sidecar rows: wrk → sidecar (plain HTTP) → nginx over TLS; "
             "the connection column counts connections the sidecar opened to the mock during "
             "the measured runs (after warm-up). 'API key (no SigV4)' rows are a control: the same "
             "sidecar with AWS_BEARER_TOKEN_BEDROCK set, so requests go out with a bearer header "
             "instead of a signature; the gap to the 'sidecar' row is the cost of SigV4. 'usage metrics off' rows "
             "run with BEDROCK_BROKER_USAGE_METRICS=false (the 'sidecar' rows use the defaults, usage "
             "metrics on); the gap is the cost of reading token usage from responses. "
             + (("'converse stream' rows: a ConverseStream answer of "
                 f"{len(stream)} event-stream messages ({sum(map(len, stream)):,} bytes, the converse "
                 "answer's text in deltas of three words, usage in the last message), all written at "
                 "once by the mock: the sidecar's streaming path (answer passed on as it arrives, never "
                 "buffered whole; usage read from its last messages) under load. ")
                if args.stream_conns else "") +
             (("'chat stream' rows: a streamed chat completion of "
               f"{chat_stream_response_body().count('data: ')} SSE events "
               f"({len(chat_stream_response_body()):,} bytes; the chat answer's text in deltas of three "
               "words, `\"usage\":null` in every chunk as OpenAI writes them when a client sets "
               "`stream_options.include_usage`, then the usage chunk and `[DONE]`), all written at once. ")
              if args.chat_stream_conns else "") +
             f"'{FLOOR}' rows (1 KB converse only; off with --no-floor): wrk → a second, "
             "separate nginx (one worker, plain HTTP listener, pinned to the proxy's CPU like the sidecar) "
             "→ the mock over TLS with upstream keepalive, session reuse and no response buffering; it "
             "does no signing and no body inspection, so it is the floor any second hop costs on this "
             "machine (CPU, RSS and connection columns are that nginx process's). "
             f"'{STACK_FLOOR}' rows (1 KB converse only; off with --no-stack-floor): "
             "bench/stack_floor.rs in the sidecar's place, the leanest proxy on the sidecar's own "
             "stack (tokio current-thread, hyper HTTP/1.1, tokio-rustls with aws-lc-rs): no signing, "
             "metrics, limits, timeouts or body buffering, one upstream connection per client "
             "connection. The gap from it to the 'sidecar' row is what the sidecar's own code "
             "costs; from nginx to it, what the stack does. "
             + ("'sidecar, --baseline-binary' rows (1 KB converse only): another build of the sidecar, run in "
                "every round beside the 'sidecar' row, for an A/B in the same minutes. "
                if args.baseline_binary else "") +
             "Peak RSS is VmHWM, reset before each row. "
             "'proxy CPU busy' is the sidecar's CPU time over wall time (100 % = its core is "
             "saturated); 'other load on proxy CPU' is time that core spent on anything else "
             "inside this machine (other jobs; should be ~0 for trustworthy numbers). "
             "'steal' is time the hypervisor gave the pinned CPUs' host cores to another "
             "guest (the proxy's CPU / wrk's and the mock's), over the runs kept; a run with more "
             f"than {args.max_steal:g} % steal on either is run again, up to {args.steal_retries} "
             "times ('runs re-done'), because it measures the host's other tenants: their time "
             "and the caches they leave cold.\n")

    s = res["summary"]
    L.append("## Against the targets\n")
    has_floor = any(f is not None for *_, f in s)
    if has_floor:
        L.append(f"| target | measured (sidecar) | | {FLOOR} |")
        L.append("|---|---|---|---|")
    else:
        L.append("| target | measured | |")
        L.append("|---|---|---|")
    for line in s:
        label, measured, ok, floor_value = line
        L.append(f"| {label} | {measured} | {verdict(ok, getattr(line, 'note', None))} |"
                 + (f" {floor_value or '—'} |" if has_floor else ""))
    L.append("")
    if has_floor:
        L.append("The last column is the floor row (no signing, nginx as the second hop) against the "
                 "same targets: where the floor misses a target, no proxy on this setup can meet it.\n")
    L.extend(stack_floor_lines(res))
    st = res["stream"]
    L.append(f"Slow stream ({args.events} SSE events {args.gap_ms} ms apart, first at once; "
             f"median of {args.stream_repeats}): time to first byte direct {st['direct']['ttfb_ms']:.2f} ms, "
             f"sidecar {st['sidecar']['ttfb_ms']:.2f} ms; time to last byte direct "
             f"{st['direct']['ttlb_ms']:.1f} ms, sidecar {st['sidecar']['ttlb_ms']:.1f} ms"
             + (f"; floor (nginx, no signing): first byte {st['floor']['ttfb_ms']:.2f} ms, "
                f"last byte {st['floor']['ttlb_ms']:.1f} ms" if "floor" in st else "") + ".  ")
    if res.get("cold"):  # none with --cold-starts 0
        L.append(f"Cold start (process start → /readyz 200, static keys, no STS), {len(res['cold'])} starts: "
                 f"median {statistics.median(res['cold']):.1f} ms, all {', '.join(f'{c:.1f}' for c in res['cold'])} ms.  ")
    L.append(f"Idle RSS after start: {res['idle_rss']:.1f} MiB ({res['idle_rss_anon']:.1f} MiB anonymous, "
             f"{res['idle_rss_file']:.1f} MiB file-backed: code and read-only data, shared by every "
             f"process mapping the same binary); after the load rows, idle: {res['rss_end']:.1f} MiB"
             + (f" ({res['rss_end_anon']:.1f} MiB anonymous)" if res.get("rss_end_anon") is not None else "")
             + ".  ")
    if res.get("burst"):
        L.append(burst_line(res["burst"]) + "\n")
    if res.get("profile"):
        p = res["profile"]
        L.append("## Profile (valgrind callgrind, sidecar only)\n")
        L.append(f"{p['ok']}/{p['requests']} converse requests (1 KB bodies) at concurrency {p['conc']} "
                 f"after 100 warm-up requests; counters zeroed before and dumped right after them "
                 f"(`callgrind_control -z` / `-d`). "
                 f"Total {p['total_ir']:,} instructions = **{p['ir_per_request']:,.0f} instructions per request**.\n")
        instructions = usage_instructions(p)
        if instructions:
            L.append(f"The same requests with usage metrics off: {p['usage_off_ir_per_request']:,.0f} "
                     f"instructions per request, so reading usage costs {instructions}. Instructions are "
                     "not time: natively SHA-256 runs on the CPU's SHA extensions (far fewer instructions), "
                     "and the kernel's work for each request (system calls, loopback TCP), which callgrind "
                     "does not count, is CPU time too; a native profile (`perf record`) gives the share of "
                     "CPU time.\n")
        for what in p.get("streams") or {}:
            if text := stream_usage_instructions(p, what):
                L.append(f"A {what} answer (the row's request, {p['requests']} of them): "
                         f"reading usage costs {text}.\n")
        for title, key in (("Inclusive", "inclusive"), ("Self (exclusive)", "self")):
            L.append(f"### {title}, top {len(p[key])}\n")
            L.append("| Ir / request | % | function |")
            L.append("|--:|--:|---|")
            for n, fn in p[key]:
                L.append(f"| {n / max(p['ok'], 1):,.0f} | {100 * n / p['total_ir']:.1f} | `{fn}` |")
            L.append("")
    if res.get("cache_sim"):
        L.extend(cache_sim_lines(res["cache_sim"]))
    return "\n".join(L) + "\n"


def results_json(res: dict, args, command: str) -> str:
    """The run's raw data as JSON (written beside the markdown report):
    every measured run of every target in every row, in round order, with
    its place in the round, the seed of the orders, and the verdicts."""
    rows = [{k: v for k, v in row.items() if k != "direct"} for row in res.get("rows", [])]
    data = {"when": res.get("when"), "command": command, "seed": getattr(args, "seed", None),
            "machine": res.get("machine"), "binary": res.get("binary"), "git": res.get("git"),
            "hot_code": res.get("hot_code"), "rows": rows,
            "summary": [{"target": line[0], "measured": line[1], "met": line[2],
                         "floor": line[3], "note": getattr(line, "note", None)}
                        for line in res.get("summary", [])]}
    for k in ("burst", "stream", "cold", "idle_rss", "idle_rss_anon", "idle_rss_file", "rss_end",
              "rss_end_anon", "floor_idle_rss", "profile", "cache_sim"):
        if res.get(k) is not None:
            data[k] = res[k]
    return json.dumps(data, indent=1, default=str) + "\n"


def stack_floor_lines(res: dict) -> list[str]:
    """The sidecar and the nginx floor against the stack floor, per 1 KB
    converse row that measured it: how far the sidecar's own code is from
    what its stack reaches, in throughput and in CPU µs a request."""
    rows = [r for r in res["rows"] if r["endpoint"] == "converse" and r["body"] == "1 KB"
            and STACK_FLOOR in r["results"]]
    if not rows:
        return []
    L = ["Against the stack floor (bench/stack_floor.rs: the sidecar's stack without its code):\n",
         "| conns | stack floor req/s | sidecar × it | nginx floor × it "
         "| sidecar CPU over it, µs a request | nginx CPU over it, µs a request |",
         "|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        base = r["results"][STACK_FLOOR]
        if not base["rps"]:
            L.append(f"| {r['conns']} | 0 | — | — | — | — |")
            continue
        cells = []
        for name in ("sidecar", FLOOR):
            other = r["results"].get(name)
            cells.append((fmt(other and other["rps"] / base["rps"]),
                          fmt(other and (other["cpu_per_10k"] - base["cpu_per_10k"]) * 100, "+.1f")))
        L.append(f"| {r['conns']} | {base['rps']:,.0f} | {cells[0][0]} | {cells[1][0]} | "
                 f"{cells[0][1]} | {cells[1][1]} |")
    L.append("")
    return L


def round_ratios(a: dict, b: dict) -> list[float]:
    """a's req/s over b's, round by round: within a round the targets run
    back to back, so drift of the machine between rounds cancels out."""
    return sorted(x / y for x, y in zip(a.get("all_rps", []), b.get("all_rps", [])) if y)


def by_round(a: dict, b: dict, spec: str, cost: bool = False) -> str:
    """How far the figure moves between rounds: the median and the range of
    the per-round ratios (as a cost in % with ``cost``), which the targets
    are judged on (their median), so a reader can tell a real change from
    the run's own spread."""
    rs = round_ratios(a, b)
    if cost:
        rs = sorted(100 * (1 - x) for x in rs)
    return spread(rs, spec)


def median_interval(sorted_values: list[float]) -> tuple[float, float]:
    """A 95 % interval for the median of paired rounds that assumes
    nothing of their distribution: the k-th lowest and k-th highest round,
    k the largest with P(Binomial(n, 1/2) < k) ≤ 2.5 % on each side. Up to
    eight rounds only the lowest and highest are that far out, and the
    interval is the whole range (at three rounds it covers 75 %)."""
    v = sorted_values
    n = len(v)
    k, below = 0, 0.0
    while k < n and below + math.comb(n, k) / 2 ** n <= 0.025:
        below += math.comb(n, k) / 2 ** n
        k += 1
    k = max(k, 1)
    return v[k - 1], v[n - k]


def spread(sorted_values: list[float], spec: str, unit: str = "") -> str:
    """'by round: median M, LO to HI over N' of figures already sorted,
    with the median's 95 % interval when the rounds allow one."""
    v = sorted_values
    if not v:
        return "no rounds"
    text = (f"by round: median {statistics.median(v):{spec}}{unit}, "
            f"{v[0]:{spec}} to {v[-1]:{spec}}{unit} over {len(v)}")
    lo, hi = median_interval(v)
    if (lo, hi) != (v[0], v[-1]):
        text += f"; the median's 95 % interval {lo:{spec}} to {hi:{spec}}{unit}"
    return text


def round_gaps(a: dict, b: dict, key: str) -> list[float]:
    """a's latency minus b's (``key``: "all_p50_ms" or "all_p99_ms"), round
    by round. Against the floor the direct path drops out: (a − direct) −
    (floor − direct) is a − floor, and a − floor within a round is paired
    like the throughput ratios."""
    return sorted(x - y for x, y in zip(a.get(key, []), b.get(key, [])))


def by_round_gap(a: dict, b: dict, key: str) -> str:
    """The latency verdicts' spread, in ms: see by_round()."""
    return spread(round_gaps(a, b, key), "+.3f", " ms")


def paired(values: list[float], ok_fn) -> tuple[float | None, bool | None, str | None]:
    """A verdict from per-round paired figures (ratios, costs or gaps of
    two targets in the same round): (the median, met?, note). The note
    says 'unresolved' when the median's 95 % interval (median_interval)
    lies on both sides of the line: the run's own spread is wider than the
    distance to it, and another run may well give the other verdict. Up to
    eight rounds that interval is the whole range: rounds on both sides."""
    if not values:
        return None, None, "no rounds"
    v = sorted(values)
    med = statistics.median(v)
    lo, hi = median_interval(v)
    note = None
    if ok_fn(lo) != ok_fn(hi):
        note = ("unresolved: rounds on both sides" if (lo, hi) == (v[0], v[-1])
                else "unresolved: the median's 95 % interval on both sides")
    return med, ok_fn(med), note


def summary(res: dict, args) -> list:
    """(target, sidecar measured, met?, floor measured or None) per target.
    The throughput, latency and CPU targets are relative to the floor row
    (a plain nginx reverse proxy, no signing, pinned like the sidecar): what
    any second hop costs on this machine."""
    out = []
    by = {(r["endpoint"], r["body"], r["conns"]): r for r in res["rows"]}

    def add(label, measured, ok, floor_value, used=(), note=None):
        """One line; a verdict that read a row with errors is void, not met."""
        void = errors_note(list(used))
        if void:
            out.append(Line(label, measured, False if ok is not None else None, floor_value, void))
        else:
            out.append(Line(label, measured, ok, floor_value, note))

    def get(c, ep="converse", body="1 KB"):
        return by.get((ep, body, c))

    def floor(r):
        return r["results"].get(FLOOR) if r else None

    def median_ratio(a: dict, b: dict) -> float:
        """a's req/s over b's: the median of the paired rounds."""
        rs = round_ratios(a, b)
        return statistics.median(rs) if rs else a["rps"] / b["rps"]

    # Every verdict below is judged on the rounds paired (figures of two
    # targets from the same round), the median of them; the spread beside.
    for c in (16, 64):
        r = get(c)
        if r and floor(r):
            sc = r["results"]["sidecar"]
            ratio, ok, note = paired(round_ratios(sc, floor(r)), lambda x: x >= 0.85)
            add(f"throughput ≥ 0.85× the floor at {c} conns", f"{fmt(ratio)}× the floor "
                f"({median_ratio(sc, r['direct']):.2f}× direct; "
                f"{by_round(sc, floor(r), '.2f')})", ok,
                f"{median_ratio(floor(r), r['direct']):.2f}× direct",
                [(r, "sidecar"), (r, FLOOR), (r, "direct")], note)
    for c in (1, 16, 64):
        r = get(c)
        if r and BASELINE in r["results"]:
            ratio = median_ratio(r["results"]["sidecar"], r["results"][BASELINE])
            add(f"throughput against --baseline-binary at {c} conn{'s' if c > 1 else ''} (no target)",
                f"{ratio:.3f}× ({by_round(r['results']['sidecar'], r['results'][BASELINE], '.3f')})",
                None, None, [(r, "sidecar"), (r, BASELINE)])
    for c, key, pct, line in ((1, "p50", "all_p50_ms", 0.03), (64, "p99", "all_p99_ms", 0.5)):
        r = get(c)
        if r and floor(r):
            sc = r["results"]["sidecar"]
            a = sc[f"{key}_ms"] - r["direct"][f"{key}_ms"]
            f = floor(r)[f"{key}_ms"] - r["direct"][f"{key}_ms"]
            gaps = round_gaps(sc, floor(r), pct)
            if not gaps:  # results from before per-round latencies were kept
                gaps = [a - f]
            gap, ok, note = paired(gaps, lambda x, line=line: x <= line)
            add(f"added {key} at {c} conn{'s' if c > 1 else ''} ≤ the floor's + {line:g} ms",
                f"{a:+.3f} ms ({gap:+.3f} ms over the floor; {by_round_gap(sc, floor(r), pct)})",
                ok, f"{f:+.3f} ms", [(r, "sidecar"), (r, FLOOR), (r, "direct")], note)
    for c in (1, 16, 64):
        r = get(c)
        if r and floor(r):
            sc, fl = r["results"]["sidecar"], floor(r)
            # Per round, paired: the sidecar's CPU a request over the floor's.
            ratios = [x / y for x, y in zip(sc.get("all_cpu_us") or [], fl.get("all_cpu_us") or [])
                      if x is not None and y]
            if not ratios:  # results from before per-round CPU was kept
                ratios = [sc["cpu_per_10k"] / fl["cpu_per_10k"]]
            ratio, ok, note = paired(ratios, lambda x: x <= 1.5)
            # The gap in µs a request as well: a ratio moves with how much a
            # request costs the floor on the machine (the kernel's loopback
            # work), the gap with what the sidecar adds.
            gap_us = (sc["cpu_per_10k"] - fl["cpu_per_10k"]) * 100
            add(f"CPU s per 10k requests ≤ 1.5× the floor's at {c} conn{'s' if c > 1 else ''}",
                f"{sc['cpu_per_10k']:.2f} s ({100 * sc['cpu_per_10k']:.1f} µs a request; {ratio:.2f}×, "
                f"{spread(sorted(ratios), '.2f')}; {gap_us:+.1f} µs a request over the floor)", ok,
                f"{fl['cpu_per_10k']:.2f} s ({100 * fl['cpu_per_10k']:.1f} µs a request)",
                [(r, "sidecar"), (r, FLOOR)], note)
    r = get(16)
    off = "sidecar, usage metrics off"
    if r and off in r["results"]:
        costs = [100 * (1 - x) for x in round_ratios(r["results"]["sidecar"], r["results"][off])]
        cost, ok, note = paired(costs, lambda x: x <= 3)
        measured = (f"{fmt(cost, '+.1f')} % "
                    f"({by_round(r['results']['sidecar'], r['results'][off], '+.1f', cost=True)} %)")
        # Beside the verdict, not deciding it: the target is throughput.
        instructions = usage_instructions(res.get("profile"))
        if instructions:
            measured += f"; in callgrind {instructions}"
        add("usage metrics cost ≤ 3 % throughput at 16 conns", measured, ok, None,
            [(r, "sidecar"), (r, off)], note)
    # Streamed answers are read for usage by other code than plain ones
    # (event-stream and SSE scanners): their own lines, beside the target.
    for ep, what in (("converse stream", "streamed answers"), ("chat stream", "streamed chat answers")):
        r = get(16, ep=ep)
        if r and off in r["results"]:
            cost = 1 - median_ratio(r["results"]["sidecar"], r["results"][off])
            measured = (f"{100 * cost:+.1f} % "
                        f"({by_round(r['results']['sidecar'], r['results'][off], '+.1f', cost=True)} %)")
            instructions = stream_usage_instructions(res.get("profile"), ep)
            if instructions:
                measured += f"; in callgrind {instructions}"
            add(f"usage metrics cost on {what} at 16 conns (no target)", measured,
                None, None, [(r, "sidecar"), (r, off)])
    st = res["stream"]
    a = st["sidecar"]["ttfb_ms"] - st["direct"]["ttfb_ms"]
    add("stream time to first byte ≤ direct + 1 ms", f"{a:+.2f} ms", a <= 1.0,
        f"{st['floor']['ttfb_ms'] - st['direct']['ttfb_ms']:+.2f} ms" if "floor" in st else None)
    add("idle anonymous RSS ≤ 2 MiB", f"{res['idle_rss_anon']:.1f} MiB (total {res['idle_rss']:.1f})",
        res["idle_rss_anon"] <= 2, None)
    b = res.get("burst")
    if b:
        measured, ok, note = burst_judgement(b)
        add("RSS < 2× idle within 30 s after 16 concurrent 5 MB requests", measured, ok, None,
            note=note)
    r = get(64)
    if r:
        pk = r["results"]["sidecar"]["peak_rss"]
        add("peak RSS ≤ 20 MiB at 64 conns, 1 KB", f"{pk:.1f} MiB", pk <= 20,
            f"{floor(r)['peak_rss']:.1f} MiB" if floor(r) else None, [(r, "sidecar")])
    for r in res["rows"]:
        if r["body"] != "1 KB":
            pk = r["results"]["sidecar"]["peak_rss"]
            add(f"peak RSS with {r['body']} bodies at {r['conns']} conns (bounded, documented)",
                f"{pk:.1f} MiB", None, None, [(r, "sidecar")])
    rows_1k = [r for r in res["rows"] if r["body"] == "1 KB"]
    floor_rows = [r["results"][FLOOR] for r in rows_1k if FLOOR in r["results"]]
    nc = [r["results"]["sidecar"]["conns_per_1k"] for r in rows_1k]
    if nc:
        add("~0 new upstream connections per 1k requests (worst 1 KB row)", f"{max(nc):.2f}",
            max(nc) < 0.5,
            f"{max(f['conns_per_1k'] for f in floor_rows):.2f}" if floor_rows else None,
            [(r, "sidecar") for r in rows_1k])
    if res.get("cold"):  # none with --cold-starts 0
        cold = statistics.median(res["cold"])
        add("cold start to ready ≤ 50 ms (+ one STS round trip; none here)", f"{cold:.1f} ms",
            cold <= 50, None)
    return out


# --------------------------------------------------------------------------


def concurrencies(text: str) -> list[int]:
    """--cache-sim's value: concurrencies like 8,64, each once, in order."""
    problem = argparse.ArgumentTypeError(f"expected concurrencies of 1 or more like 8,64, got {text!r}")
    try:
        concs = list(dict.fromkeys(int(c) for c in text.split(",") if c))
    except ValueError:
        raise problem from None
    if any(c < 1 for c in concs):
        raise problem
    return concs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, help="sidecar binary (default: build one)")
    ap.add_argument("--baseline-binary", type=Path, metavar="PATH",
                    help="another sidecar build, run beside this one in every round of the 1 KB converse "
                         "rows; the summary gives this one's throughput over it, by round (an A/B)")
    ap.add_argument("--target-dir", type=Path,
                    default=Path(os.environ.get("BENCH_TARGET_DIR", ROOT / "target" / "bench")),
                    help="CARGO_TARGET_DIR for the build (default target/bench or $BENCH_TARGET_DIR)")
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured run (5; wrk takes whole seconds)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per row (1)")
    ap.add_argument("--repeats", type=int, default=3, help="measured runs per row (3)")
    ap.add_argument("--conns", default="1,16,64", help="wrk connections (1,16,64)")
    ap.add_argument("--body-bytes", type=int, default=1024)
    ap.add_argument("--big-body-mb", type=float, default=5, help="large-body row size; 0 skips it")
    ap.add_argument("--big-body-conns", default="16")
    ap.add_argument("--openai-conns", default="16", help="rows for the OpenAI chat endpoint ('' skips)")
    ap.add_argument("--stream-conns", default="16",
                    help="rows for ConverseStream answers, the streaming path under load ('' skips)")
    ap.add_argument("--chat-stream-conns", default="16",
                    help="rows for streamed OpenAI chat completions (SSE, usage in the last chunk) ('' skips)")
    ap.add_argument("--h2", action="store_true",
                    help="also run sidecar rows against an upstream that offers h2 by ALPN")
    ap.add_argument("--no-feature-rows", action="store_true",
                    help="skip the rows with data-path features (usage metrics) switched off")
    ap.add_argument("--no-api-key-row", action="store_true",
                    help="skip the control rows with a Bedrock API key (no SigV4)")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the floor rows: a plain nginx reverse proxy (no signing) on the "
                         "proxy CPU, in the 1 KB converse rows and the slow stream")
    ap.add_argument("--no-stack-floor", action="store_true",
                    help="skip the stack-floor rows: bench/stack_floor.rs, the leanest proxy on "
                         "the sidecar's stack (hyper, rustls, tokio), in the 1 KB converse rows")
    ap.add_argument("--stack-floor-binary", type=Path,
                    help="the stack_floor example (default: build it from the work tree in "
                         "--target-dir, also when --binary is given)")
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--events", type=int, default=5, help="slow stream events (5)")
    ap.add_argument("--gap-ms", type=int, default=200, help="slow stream gap (200 ms)")
    ap.add_argument("--stream-repeats", type=int, default=5)
    ap.add_argument("--cold-starts", type=int, default=7)
    ap.add_argument("--no-burst", action="store_true",
                    help="skip the memory-after-a-burst measurement (16 concurrent 5 MB requests)")
    ap.add_argument("--burst-only", action="store_true",
                    help="only the memory-after-a-burst measurement, printed")
    ap.add_argument("--bursts", type=int, default=3,
                    help="bursts of the memory measurement, 2 s apart; measured after the last (3)")
    ap.add_argument("--sidecar-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment of every sidecar this run starts (experiments, "
                         "e.g. an allocator's tunables or LD_PRELOAD); named in the report. "
                         "A variable the image sets is replaced, not extended: restate the "
                         "image's GLIBC_TUNABLES (':'-separated) to add one")
    ap.add_argument("--no-profile", action="store_true", help="skip the callgrind profile")
    ap.add_argument("--profile-only", action="store_true")
    ap.add_argument("--profile-h2", action="store_true",
                    help="callgrind runs against the upstream that offers h2 by ALPN (one shared connection)")
    ap.add_argument("--profile-requests", type=int, default=2000)
    ap.add_argument("--profile-conc", type=int, default=2)
    ap.add_argument("--profile-top", type=int, default=30)
    ap.add_argument("--cache-sim", type=concurrencies, default=[], metavar="CONCS",
                    help="also run the sidecar, the floor and the stack floor under callgrind's cache "
                         "simulator at these concurrencies (e.g. 8,64; under a minute "
                         "each): L2 misses per request, and where the sidecar's are")
    ap.add_argument("--keep-callgrind", action="store_true",
                    help="copy the raw callgrind files (profile, cache simulations) to bench/results/")
    ap.add_argument("--max-steal", type=float, default=3.0, metavar="PERCENT",
                    help="run a load run again when the hypervisor stole more than this share "
                         "of the proxy's or the load's CPU during it (3; 100 turns it off)")
    ap.add_argument("--steal-retries", type=int, default=3,
                    help="how many times one run may be re-done for steal before it is kept "
                         "anyway (3)")
    ap.add_argument("--wait-idle", type=float, default=0,
                    help="wait up to this many seconds for other load on the machine to stop (0)")
    ap.add_argument("--seed", type=int, metavar="N",
                    help="seed of the targets' order, shuffled in every round (default: a random "
                         "one, printed in the report; give it to run the same orders again)")
    ap.add_argument("--out", type=Path, default=RESULTS / "latest.md")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    if not 0 <= args.max_steal <= 100:
        ap.error(f"--max-steal: a percentage from 0 to 100, got {args.max_steal:g}")
    if args.steal_retries < 0:
        ap.error(f"--steal-retries: 0 or more, got {args.steal_retries}")
    for kv in args.sidecar_env:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            ap.error(f"--sidecar-env: expected KEY=VALUE, got {kv!r}")
        EXPERIMENT_ENV[key] = value
    # Make SIGTERM unwind like Ctrl-C, so the nginx instances and sidecars
    # started below are stopped by the `finally` in any case.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    command = "python3 bench/run.py " + " ".join(
        re.sub(rf"(^|=)({'|'.join(SECRET_ENV)})=.*", r"\1\2=<redacted>", a) for a in sys.argv[1:])

    ncpu = len(os.sched_getaffinity(0))
    if ncpu < 2:
        print("bench: fewer than 2 CPUs; running unpinned", file=sys.stderr)
        args.proxy_cpu = args.load_cpu = None
    cache_concs = args.cache_sim
    if args.profile_only and args.no_profile and not cache_concs:
        ap.error("--profile-only with --no-profile measures nothing: add --cache-sim")
    if args.no_stack_floor and args.stack_floor_binary:
        ap.error("--stack-floor-binary with --no-stack-floor: the binary would not be used")
    if args.baseline_binary:
        if args.profile_only or args.burst_only:
            ap.error("--baseline-binary runs in the load rows only: not with --profile-only or --burst-only")
        args.baseline_binary = args.baseline_binary.resolve()
        if not os.access(args.baseline_binary, os.X_OK):
            ap.error(f"--baseline-binary: {args.baseline_binary} is not an executable file")
    ensure_tools(need_valgrind=not args.no_profile or bool(cache_concs))
    if args.binary and not os.access(args.binary, os.X_OK):
        ap.error(f"--binary: {args.binary} is not an executable file")
    if args.stack_floor_binary and not os.access(args.stack_floor_binary, os.X_OK):
        ap.error(f"--stack-floor-binary: {args.stack_floor_binary} is not an executable file")
    binary = args.binary or build_binary(args.target_dir)
    binary = binary.resolve()
    for flag, path in (("--binary", binary), ("--baseline-binary", args.baseline_binary)):
        if path and built_with_test_clock(path):
            ap.error(f"{flag}: {path} has tokio's test-util clock, so it was built together with an "
                     "example or a test and is not the binary that ships; build it alone: "
                     "cargo build --release --locked --bin bedrock-broker")
    # Built only when a row or the cache simulation will run it.
    wants_stack = not args.no_stack_floor and not args.burst_only and (
        not args.profile_only or bool(cache_concs))
    stack_binary = (args.stack_floor_binary or build_stack_floor(args.target_dir)).resolve() \
        if wants_stack else None
    for path in (binary, args.baseline_binary, stack_binary):
        if path:
            drop_cached_pages(path)
    if args.load_cpu is not None:
        os.sched_setaffinity(0, {args.load_cpu})  # the driver itself stays off the proxy's CPU

    busy = wait_idle(args.wait_idle) if args.wait_idle else machine_busy()
    res: dict = {
        "when": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine_line() + f", CPUs {100 * busy:.0f} % busy just before the run",
        "tools": tool_versions(),
        "binary": binary,
        "hot_code": binary_coverage(binary).describe(),
        "stack_binary": stack_binary,
        "git": subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip() or "?",
    }
    workdir = Path(tempfile.mkdtemp(prefix="bedrock-broker-bench-"))
    mock = Mock(workdir, args.load_cpu, args.events, args.gap_ms / 1000)
    sidecars: list[Sidecar] = []
    floor: Floor | None = None
    stack: StackFloor | None = None
    try:
        small = workdir / "body-1k.json"
        small_body = converse_request_body(args.body_bytes)
        small.write_bytes(small_body)
        chat = workdir / "body-chat.json"
        chat_stream = workdir / "body-chat-stream.json"
        plain, streamed = chat_request_bodies(small_body, args.body_bytes)
        chat.write_bytes(plain)
        chat_stream.write_bytes(streamed)

        big_conns = int(args.big_body_conns.split(",")[0] or 16)
        if args.burst_only:
            b = burst_memory(binary, mock, converse_request_body(int(args.big_body_mb * MIB)), big_conns,
                             args, workdir)
            if EXPERIMENT_ENV:
                print(experiment_line())
            print(burst_line(b))
            print("samples (s, MiB):", b["samples"])
            return 0
        if not args.profile_only:
            if not args.no_burst and args.big_body_mb > 0:
                print("bench: memory after a burst ...", flush=True)
                res["burst"] = burst_memory(binary, mock, converse_request_body(int(args.big_body_mb * MIB)),
                                            big_conns, args, workdir)
            # Cold start: separate short-lived processes, after one that is
            # not counted: with --no-burst the first start after the drop
            # from the page cache reads the binary from disk.
            if args.cold_starts:
                sc = Sidecar(binary, mock.port, mock.ca, args.proxy_cpu, workdir, name="cold")
                sc.wait_ready(10)
                sc.stop()
            cold = []
            for _ in range(args.cold_starts):
                sc = Sidecar(binary, mock.port, mock.ca, args.proxy_cpu, workdir, name="cold")
                cold.append(sc.wait_ready(10) * 1000)
                sc.stop()
            res["cold"] = cold

            sc = Sidecar(binary, mock.port, mock.ca, args.proxy_cpu, workdir)
            sidecars.append(sc)
            sc.wait_ready(10)
            time.sleep(1.0)
            idle = proc_mem(sc.pid)
            res["idle_rss"] = idle["VmRSS"]
            # Anonymous pages are the pod's own; file-backed ones (code)
            # are shared by every sidecar on a node running the same image.
            res["idle_rss_anon"], res["idle_rss_file"] = idle["RssAnon"], idle["RssFile"]
            targets = [Target("direct", f"https://127.0.0.1:{mock.port}", None),
                       Target("sidecar", f"http://127.0.0.1:{sc.port}", sc)]
            if not args.no_feature_rows:
                # The data-path features that are on by default, switched off:
                # the gap to "sidecar" is what each costs.
                sc4 = Sidecar(binary, mock.port, mock.ca, args.proxy_cpu, workdir, name="sidecar-nousage",
                              extra_env=USAGE_OFF)
                sidecars.append(sc4)
                sc4.wait_ready(10)
                targets.append(Target("sidecar, usage metrics off", f"http://127.0.0.1:{sc4.port}", sc4))
            if not args.no_api_key_row:
                # Control row: same proxy, but a configured Bedrock API key wins
                # over SigV4, so the difference to "sidecar" is the signing cost.
                sc3 = Sidecar(binary, mock.port, mock.ca, args.proxy_cpu, workdir, name="sidecar-apikey",
                              extra_env={"AWS_BEARER_TOKEN_BEDROCK": "ABSKbenchNotARealKey"})
                sidecars.append(sc3)
                sc3.wait_ready(10)
                targets.append(Target("sidecar, API key (no SigV4)", f"http://127.0.0.1:{sc3.port}", sc3))
            if args.h2:
                sc2 = Sidecar(binary, mock.h2_port, mock.ca, args.proxy_cpu, workdir, name="sidecar-h2")
                sidecars.append(sc2)
                sc2.wait_ready(10)
                targets.append(Target("sidecar, h2 upstream", f"http://127.0.0.1:{sc2.port}", sc2))
            if not args.no_floor:
                # Floor row: a plain nginx reverse proxy (no signing) in the
                # sidecar's place: what any second hop costs here.
                floor = Floor(workdir, mock.port, mock.ca, args.proxy_cpu)
                time.sleep(0.5)
                res["floor_idle_rss"] = proc_mem(floor.pid)["VmRSS"]
                targets.append(Target(FLOOR, f"http://127.0.0.1:{floor.port}", floor,
                                      rows="1 KB converse"))
            if args.baseline_binary:
                # An A/B in the same minutes: another build of the sidecar,
                # run in every round beside this one.
                scb = Sidecar(args.baseline_binary, mock.port, mock.ca, args.proxy_cpu, workdir,
                              name="sidecar-baseline")
                sidecars.append(scb)
                scb.wait_ready(10)
                targets.append(Target(BASELINE, f"http://127.0.0.1:{scb.port}", scb, rows="1 KB converse"))
            if stack_binary:
                stack = StackFloor(stack_binary, mock.port, mock.ca, args.proxy_cpu, workdir)
                targets.append(Target(STACK_FLOOR, f"http://127.0.0.1:{stack.port}", stack,
                                      rows="1 KB converse"))

            plan = [("converse", CONVERSE_PATH, small, "1 KB", int(c)) for c in args.conns.split(",") if c]
            plan += [("openai chat", CHAT_PATH, chat, "1 KB", int(c)) for c in args.openai_conns.split(",") if c]
            plan += [("converse stream", CONVERSE_STREAM_PATH, small, "1 KB", int(c))
                     for c in args.stream_conns.split(",") if c]
            plan += [("chat stream", CHAT_STREAM_PATH, chat_stream, "1 KB", int(c))
                     for c in args.chat_stream_conns.split(",") if c]
            if args.big_body_mb > 0:
                big = workdir / "body-big.json"
                big.write_bytes(converse_request_body(int(args.big_body_mb * MIB)))
                label = f"{args.big_body_mb:g} MB"
                plan += [("converse", BIG_CONVERSE_PATH, big, label, int(c))
                         for c in args.big_body_conns.split(",") if c]
            rows = []
            for endpoint, path, body_file, label, conns in plan:
                print(f"bench: {endpoint} {label} × {conns} conns ...", flush=True)
                row_targets = [t for t in targets if t.rows == "all"
                               or (t.rows == "1 KB converse" and endpoint == "converse" and label == "1 KB")]
                results = measure(row_targets, mock, path, body_file, conns, args, endpoint)
                rows.append({"endpoint": endpoint, "body": label, "conns": conns,
                             "direct": results["direct"], "results": results})
                for name, r in results.items():
                    print(f"  {name:>38}: {r['rps']:9,.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
                          f"p99 {r['p99_ms']:.3f} ms  runs {r['all_rps']}", flush=True)
            res["rows"] = rows
            time.sleep(1.0)
            end = proc_mem(sc.pid)
            res["rss_end"], res["rss_end_anon"] = end["VmRSS"], end["RssAnon"]

            print("bench: slow stream time to first byte ...", flush=True)
            ctx = ssl.create_default_context(cafile=str(mock.ca))
            res["stream"] = {
                "direct": stream_timing(
                    lambda: http.client.HTTPSConnection("127.0.0.1", mock.port, context=ctx, timeout=10),
                    SLOW_STREAM_PATH, small_body, args.stream_repeats),
                "sidecar": stream_timing(
                    lambda: http.client.HTTPConnection("127.0.0.1", sc.port, timeout=10),
                    SLOW_STREAM_PATH, small_body, args.stream_repeats),
            }
            if floor:
                res["stream"]["floor"] = stream_timing(
                    lambda: http.client.HTTPConnection("127.0.0.1", floor.port, timeout=10),
                    SLOW_STREAM_PATH, small_body, args.stream_repeats)
                floor.stop()
                floor = None
            if stack:
                stack.stop()
                stack = None
            for s in sidecars:
                s.stop()
            sidecars.clear()

        if not args.no_profile:
            print(f"bench: callgrind profile ({args.profile_requests} requests) ...", flush=True)
            streams = []
            if not args.no_feature_rows:
                if args.stream_conns:
                    streams.append(("converse stream", CONVERSE_STREAM_PATH, small_body))
                if args.chat_stream_conns:
                    streams.append(("chat stream", CHAT_STREAM_PATH, chat_stream.read_bytes()))
            res["profile"] = profile(binary, mock, small_body, args, workdir, streams)
        if cache_concs:
            res["cache_sim"] = []
            proxies = (["sidecar"] + ([] if args.no_floor else ["floor"])
                       + (["stack"] if stack_binary else []))
            for conc in cache_concs:
                for short in proxies:
                    name = f"cachesim-{short}-{conc}"
                    if short == "sidecar":
                        who, start = "sidecar", sidecar_starter(binary, mock, args, workdir, name)
                    elif short == "floor":
                        who, start = FLOOR, floor_starter(mock, args, workdir, name)
                    else:
                        who, start = STACK_FLOOR, stack_floor_starter(stack_binary, mock, args,
                                                                      workdir, name)
                    print(f"bench: cache simulation, {who}, concurrency {conc} ...", flush=True)
                    res["cache_sim"].append(cache_sim(who, start, small_body, conc, args, workdir, name))
        if "rows" in res:
            res["summary"] = summary(res, args)
    finally:
        for s in sidecars:
            s.stop()
        if floor:
            floor.stop()
        if stack:
            stack.stop()
        mock.stop()

    if args.profile_only:
        if res.get("profile"):
            p = res["profile"]
            print(f"{p['ir_per_request']:,.0f} instructions per request")
            instructions = usage_instructions(p)
            if instructions:
                print(f"usage metrics off: {p['usage_off_ir_per_request']:,.0f}; "
                      f"reading usage: {instructions}")
            for what in p.get("streams") or {}:
                if text := stream_usage_instructions(p, what):
                    print(f"reading usage of a {what} answer: {text}")
            for title, key in (("inclusive", "inclusive"), ("self", "self")):
                print(f"-- {title}")
                for n, fn in p[key]:
                    print(f"{n / p['ok']:>12,.0f}  {fn}")
        if res.get("cache_sim"):
            print("\n".join(cache_sim_lines(res["cache_sim"])))
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    text = report(res, args, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    raw = args.out.with_suffix(".json")
    raw.write_text(results_json(res, args, command))
    print()
    print(text)
    print(f"bench: written to {args.out}; every round's figures to {raw}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
