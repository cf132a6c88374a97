#!/usr/bin/env python3
"""Writes link/hot-code.txt, the functions a sidecar runs, which build.rs
has the linker place first and together in the release binary's code.

    make hot-code                                  # build, run, write the list
    python3 bench/hot_code.py --binary B           # from a release build at hand
    python3 bench/hot_code.py --check B            # how much of the list B holds

How: the sidecar (a release build, which keeps its symbols) runs under
valgrind's callgrind with symbol names as the linker sees them. Each of
three sidecars (SigV4 to an HTTP/1.1 upstream, SigV4 to one that speaks
HTTP/2, a Bedrock API key) starts, serves every kind of request the
benchmark sends (converse with 1 KB and 5 MB bodies, a ConverseStream,
OpenAI chat completions plain and streamed, 1 to 64 connections), answers
its admin endpoints and stops; callgrind dumps what ran in each phase.
Then one more runs the same requests natively under `perf record`: code
that picks its implementation by CPU (SHA-256, AES-GCM) runs another one
under valgrind, which has neither SHA extensions nor AVX-512. The list:
the functions that served requests, the busiest first, then those that
only ran at start-up or shutdown. Functions of the C library are not the
binary's and are left out.

A symbol's name carries a hash of the toolchain, the crate's version and
the release profile, so the list is made from a build with exactly the
release profile and the toolchain of rust-toolchain.toml, and made again
when those or the dependencies change (`--check` says how much still
matches; `make bench` reports it).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def parse_annotate(out: str) -> dict[str, int]:
    """Self instructions by symbol from `callgrind_annotate --inclusive=no`
    of a dump made with `--demangle=no`. callgrind marks a function's
    recursive calls as separate entries (`name'2`): one function here."""
    costs: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?\S*?:(\S+)(?:\s+\[.*\])?\s*$", line)
        if not m:
            continue
        name = re.sub(r"'\d+$", "", m.group(2))
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def hot_list(serving: dict[str, int], others: list[dict[str, int]],
             symbols: dict[str, tuple[int, int]]) -> list[str]:
    """Functions that served requests, the busiest first; then those that
    only ran in the other phases (start-up, shutdown), busiest first. Only
    the binary's own functions."""
    order: list[str] = []
    seen: set[str] = set()
    for costs in (serving, *others):
        for name, _ in sorted(costs.items(), key=lambda kv: (-kv[1], kv[0])):
            if name in symbols and name not in seen:
                seen.add(name)
                order.append(name)
    return order


# --- running the sidecar under callgrind --------------------------------------------------


def admin(port: int) -> None:
    for path in ("/readyz", "/healthz", "/metrics", "/metrics"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
            r.read()
            if r.status != 200:
                raise RuntimeError(f"{path}: {r.status}")


def workload(port: int, bodies: dict[str, bytes]) -> None:
    """Every kind of request `make bench` sends, under callgrind (slow:
    a few hundred of each)."""
    for path, body, n, conc in [
        (bench.CONVERSE_PATH, bodies["small"], 300, 1),
        (bench.CONVERSE_PATH, bodies["small"], 300, 16),
        (bench.CONVERSE_PATH, bodies["small"], 320, 64),
        (bench.CONVERSE_STREAM_PATH, bodies["small"], 200, 4),
        (bench.CHAT_PATH, bodies["chat"], 200, 4),
        (bench.CHAT_STREAM_PATH, bodies["chat_stream"], 200, 4),
        (bench.BIG_CONVERSE_PATH, bodies["big"], 8, 4),
    ]:
        ok = bench.fixed_load(port, path, body, n, conc)
        if ok != n:
            raise RuntimeError(f"{path} at {conc} connections: {n - ok} of {n} requests failed")


def phases(binary: Path, mock, upstream_port: int, workdir: Path, name: str,
           bodies: dict[str, bytes], extra_env: dict[str, str] | None) -> list[dict[str, int]]:
    """Self instructions by symbol of one sidecar's start-up, serving and
    shutdown."""
    out = workdir / f"{name}.out"
    wrapper = ["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={out}"]
    sc = bench.Sidecar(binary, upstream_port, mock.ca, None, workdir, wrapper, name, extra_env)
    try:
        sc.wait_ready(300)
        subprocess.run(["callgrind_control", "-d", str(sc.pid)], check=True, capture_output=True)
        workload(sc.port, bodies)
        admin(sc.admin_port)
        subprocess.run(["callgrind_control", "-d", str(sc.pid)], check=True, capture_output=True)
    finally:
        sc.stop()
    dumps = [Path(f"{out}.1"), Path(f"{out}.2"), out]
    missing = [d for d in dumps if not d.exists()]
    if missing:
        raise RuntimeError(f"callgrind wrote no {missing}; its log: {sc.log_path}")
    return [parse_annotate(subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", str(d)],
        capture_output=True, text=True, check=True).stdout) for d in dumps]


def parse_perf_report(out: str) -> dict[str, float]:
    """Share of samples by symbol from `perf report --no-demangle
    --sort symbol --stdio`: lines like `  4.29%  [.] name`."""
    shares: dict[str, float] = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+\[\.\]\s+(\S+)", line)
        if m:
            shares[m.group(2)] = shares.get(m.group(2), 0.0) + float(m.group(1))
    return shares


def native(binary: Path, mock, workdir: Path, bodies: dict[str, bytes]) -> dict[str, float]:
    """Functions sampled while a sidecar runs the workload natively.
    Under valgrind the CPU has neither SHA extensions nor AVX-512, so code
    that picks its implementation by CPU (SHA-256, AES-GCM, memchr) runs
    another one than on a real node: these samples add the busy ones a
    real CPU runs (this machine's; the list keeps valgrind's too)."""
    if not shutil.which("perf"):
        print("hot-code: no perf here: only what ran under valgrind is listed", flush=True)
        return {}
    data = workdir / "perf.data"
    sc = bench.Sidecar(binary, mock.port, mock.ca, None, workdir, None, "native")
    try:
        sc.wait_ready(30)
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "10000", "-p",
                                str(sc.pid), "-o", str(data)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(10):
                workload(sc.port, bodies)
        finally:
            rec.send_signal(signal.SIGINT)
            _, err = rec.communicate(timeout=60)
    finally:
        sc.stop()
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-demangle", "--no-children",
                          "--sort", "symbol", "--stdio"], capture_output=True, text=True)
    shares = parse_perf_report(out.stdout)
    if not shares:
        # perf on PATH but unable to record (perf_event_paranoid, a
        # wrapper without the kernel's perf): say so, the list is poorer.
        print(f"hot-code: perf recorded nothing, only what ran under valgrind is listed: "
              f"{(err or out.stderr).strip()[:300]}", flush=True)
    return shares


def collect(binary: Path) -> tuple[dict[str, int], list[dict[str, int]]]:
    workdir = Path(tempfile.mkdtemp(prefix="hot-code-"))
    mock = bench.Mock(workdir, None, 5, 0.2)
    small = bench.converse_request_body(1024)
    chat, chat_stream = bench.chat_request_bodies(small, 1024)
    bodies = {"small": small, "chat": chat, "chat_stream": chat_stream,
              "big": bench.converse_request_body(5 * bench.MIB)}
    serving: dict[str, int] = {}
    start: dict[str, int] = {}
    stop: dict[str, int] = {}
    try:
        for name, port, env in [("sigv4-h1", mock.port, None),
                                ("sigv4-h2", mock.h2_port, None),
                                ("api-key", mock.port, {"AWS_BEARER_TOKEN_BEDROCK": "ABSKbenchNotARealKey"})]:
            print(f"hot-code: {name} under callgrind ...", flush=True)
            s, v, e = phases(binary, mock, port, workdir, name, bodies, env)
            for into, costs in ((start, s), (serving, v), (stop, e)):
                for k, n in costs.items():
                    into[k] = into.get(k, 0) + n
        print("hot-code: natively, under perf ...", flush=True)
        sampled = native(binary, mock, workdir, bodies)
        # Ranked with the busiest functions valgrind counted: a share of
        # samples taken as that share of all instructions served.
        total = sum(serving.values())
        for k, share in sampled.items():
            serving[k] = max(serving.get(k, 0), int(share / 100 * total))
    finally:
        mock.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return serving, [start, stop]


def header(names: list[str], symbols: dict[str, tuple[int, int]]) -> str:
    rustc = subprocess.run(["rustc", "--version"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip() or "unknown"
    size = sum(symbols[n][1] for n in names)
    return (f"# The functions a sidecar runs, the busiest first; build.rs has the linker\n"
            f"# place them first in the release binary's code. Written by\n"
            f"# bench/hot_code.py (`make hot-code`); do not edit by hand.\n"
            f"# {len(names)} functions, {size / bench.MIB:.2f} MiB; from git {rev}, {rustc}.\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", type=Path, help="a release build (default: build one)")
    ap.add_argument("--target-dir", type=Path, default=ROOT / "target" / "bench")
    ap.add_argument("--out", type=Path, default=bench.HOT_CODE_LIST)
    ap.add_argument("--check", type=Path, metavar="BINARY",
                    help="only say how much of the list BINARY holds, placed together; "
                         "exit 1 when stale, not placed together or unknowable "
                         "(no symbols, no nm)")
    args = ap.parse_args()
    if args.check:
        c = bench.binary_coverage(args.check, args.out)
        print(f"{args.check}: {c.describe()}")
        return 0 if c.fresh and c.together and not c.unknown else 1
    bench.ensure_tools(True)
    binary = args.binary
    if binary is None:
        bench.cargo_release(args.target_dir, "--bin", "bedrock-broker")
        binary = args.target_dir / "release" / "bedrock-broker"
    symbols = bench.text_symbols(binary)
    if not symbols:
        print(f"{binary} has no symbols: build it with the release profile as it is "
              "(it keeps them; the image strips them)", file=sys.stderr)
        return 2
    serving, others = collect(binary)
    names = hot_list(serving, others, symbols)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header(names, symbols) + "\n".join(names) + "\n")
    print(f"hot-code: wrote {args.out}: {len(names)} functions "
          f"({sum(symbols[n][1] for n in names) / bench.MIB:.2f} MiB); rebuild to apply it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
