#!/usr/bin/env python3
"""Unit tests of bench/run.py's own functions on synthetic input: no wrk,
nginx or sidecar is started. Plain unittest, stdlib only:

    python3 -m unittest bench/test_run.py
    python3 bench/test_run.py
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import types
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_run_under_test", HERE / "run.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@contextlib.contextmanager
def patched(module, **attrs):
    """Replaces module attributes for the duration of a `with`."""
    old = {k: getattr(module, k) for k in attrs}
    for k, v in attrs.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


def wrk_output(requests: int, seconds: float, *, non2xx: int = 0, connect: int = 0,
               read: int = 0, timeout: int = 0, bytes_each: int = 1200) -> str:
    """What wrk prints with bench/wrk.lua: its own summary (with the
    "Non-2xx or 3xx responses" and "Socket errors" lines when there are
    any), then the script's BENCH_JSON line."""
    lines = [f"Running {round(seconds)}s test @ http://127.0.0.1:9",
             "  1 threads and 16 connections",
             f"  {requests} requests in {seconds:.2f}s, {requests * bytes_each / 2**20:.2f}MB read"]
    if connect or read or timeout:
        lines.append(f"  Socket errors: connect {connect}, read {read}, write 0, timeout {timeout}")
    if non2xx:
        lines.append(f"  Non-2xx or 3xx responses: {non2xx}")
    lines.append(f"Requests/sec: {requests / seconds:10.2f}")
    js = {"requests": requests, "duration_us": int(seconds * 1e6), "bytes": requests * bytes_each,
          "errors_connect": connect, "errors_read": read, "errors_write": 0,
          "errors_status": non2xx, "errors_timeout": timeout,
          "p50_us": 250, "p90_us": 400, "p99_us": 900, "p999_us": 1500, "mean_us": 260.0,
          "max_us": 3000}
    lines.append("BENCH_JSON " + json.dumps(js, separators=(",", ":")))
    return "\n".join(lines) + "\n"


class FakeMock:
    def accepts(self) -> int:
        return 0


def fake_args(**kw) -> types.SimpleNamespace:
    a = dict(warmup=1, duration=5, repeats=3, load_cpu=None, proxy_cpu=None, steal_retries=0,
             max_steal=3.0, seed=1234)
    a.update(kw)
    return types.SimpleNamespace(**a)


def proxy_targets(*names: str) -> list:
    """"direct" plus a proxy target per name (a stand-in process)."""
    out = [bench.Target("direct", "https://127.0.0.1:1", None)]
    for i, n in enumerate(names):
        out.append(bench.Target(n, f"http://127.0.0.1:{10 + i}", types.SimpleNamespace(pid=10 + i)))
    return out


def quiet_process_probes():
    """measure()'s /proc readings, stubbed: every proxy used 1 ms of CPU a run."""
    cpu = {"t": 0.0}

    def proc_cpu_seconds(pid):
        cpu["t"] += 0.0005
        return cpu["t"]

    return patched(bench, proc_cpu_seconds=proc_cpu_seconds,
                   proc_mem=lambda pid: {"VmRSS": 12.0, "VmHWM": 14.0, "RssAnon": 3.0, "RssFile": 9.0},
                   reset_peak_rss=lambda pid: True, cpu_times=lambda cpu: (0.0, 0.0))


def run_measure(targets, fake_run_wrk, **args):
    with quiet_process_probes(), patched(bench, run_wrk=fake_run_wrk), \
            contextlib.redirect_stdout(sys.stderr):
        return bench.measure(targets, FakeMock(), bench.CONVERSE_PATH, Path("/dev/null"), 16,
                             fake_args(**args), "converse")


def a_target(rps: list[float], p50: list[float] | None = None, p99: list[float] | None = None,
             cpu_us: list[float] | None = None, errors: int = 0) -> dict:
    """A target's figures as measure() leaves them, from per-round values."""
    n = len(rps)
    p50 = p50 or [0.3] * n
    p99 = p99 or [1.0] * n
    cpu_us = cpu_us or [25.0] * n
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731 (odd counts only here)
    return {"rps": med(rps), "p50_ms": med(p50), "p99_ms": med(p99), "requests": 1000 * n,
            "errors": errors, "all_errors": [errors] + [0] * (n - 1),
            "cpu_per_10k": sum(cpu_us) / n / 100, "all_cpu_us": cpu_us,
            "proxy_util": 0.9, "others_util": 0.0, "steal_proxy": 0.0, "steal_load": 0.0,
            "redone": 0, "conns_per_1k": 0.0, "peak_rss": 14.0, "rss_after": 12.0,
            "all_rps": rps, "all_p50_ms": p50, "all_p99_ms": p99}


def a_row(conns: int, results: dict, endpoint: str = "converse", body: str = "1 KB") -> dict:
    results = {"direct": a_target([1000.0] * len(next(iter(results.values()))["all_rps"])), **results}
    return {"endpoint": endpoint, "body": body, "conns": conns, "direct": results["direct"],
            "results": results}


def a_result(rows: list[dict], **extra) -> dict:
    res = {"rows": rows, "stream": {"sidecar": {"ttfb_ms": 0.5, "ttlb_ms": 800.0},
                                    "direct": {"ttfb_ms": 0.4, "ttlb_ms": 800.0}},
           "idle_rss_anon": 1.2, "idle_rss": 10.1, "idle_rss_file": 8.9, "rss_end": 17.8,
           "rss_end_anon": 6.5, "cold": [9.0]}
    res.update(extra)
    return res


def verdicts(res: dict) -> dict:
    """target -> (measured, ok, the verdict as the report words it)."""
    out = {}
    for line in bench.summary(res, None):
        label, measured, ok, _ = line
        word = bench.verdict(ok, getattr(line, "note", None)) if hasattr(line, "note") else bench.verdict(ok)
        out[label] = (measured, ok, word)
    return out


THROUGHPUT_16 = "throughput ≥ 0.85× the floor at 16 conns"


class ErrorsVoidVerdicts(unittest.TestCase):
    """Bug 1: wrk's errors (non-2xx answers, socket errors) never reached a
    verdict."""

    def measured_rows(self, sidecar_out: str) -> dict:
        """A 16-connection 1 KB converse row: the direct path and the floor
        answer 200 to 50,000 req/s; the sidecar's wrk runs print
        `sidecar_out` (its warm-up is clean)."""
        calls = {"sidecar": 0}

        def fake_subprocess_run(cmd, env=None, **kw):
            url = cmd[-1]
            if url.endswith(":10"):  # the sidecar
                calls["sidecar"] += 1
                out = wrk_output(250_000, 5.0) if calls["sidecar"] == 1 else sidecar_out
            else:
                out = wrk_output(250_000, 5.0)
            return types.SimpleNamespace(returncode=0, stdout=out, stderr="")

        fake_sp = types.SimpleNamespace(run=fake_subprocess_run)
        real_run_wrk = bench.run_wrk

        def run_wrk(*a, **kw):
            with patched(bench, subprocess=fake_sp):
                return real_run_wrk(*a, **kw)

        results = run_measure(proxy_targets("sidecar", bench.FLOOR), run_wrk)
        return a_row(16, results)

    def test_all_non_2xx_is_not_met(self):
        # Every answer a 503 at 60,000 req/s: more than the floor's 50,000.
        row = self.measured_rows(wrk_output(300_000, 5.0, non2xx=300_000))
        self.assertEqual(row["results"]["sidecar"]["errors"], 900_000)
        measured, ok, word = verdicts(a_result([row]))[THROUGHPUT_16]
        self.assertIs(ok, False, measured)
        self.assertIn("void: 900,000 errors in", word)

    def test_socket_errors_void_too(self):
        row = self.measured_rows(wrk_output(260_000, 5.0, read=40, timeout=2))
        measured, ok, word = verdicts(a_result([row]))[THROUGHPUT_16]
        self.assertIs(ok, False, measured)
        self.assertIn("void: 126 errors in sidecar", word)

    def test_the_non_2xx_line_counts_when_the_json_says_less(self):
        # wrk's own summary line is read as well as the script's count.
        out = wrk_output(1000, 1.0).replace("Requests/sec", "  Non-2xx or 3xx responses: 7\nRequests/sec")
        with patched(bench, subprocess=types.SimpleNamespace(
                run=lambda *a, **k: types.SimpleNamespace(returncode=0, stdout=out, stderr=""))):
            r = bench.run_wrk("http://x", "/p", Path("/dev/null"), 1, 1, None)
        self.assertEqual(r["errors"], 7)
        self.assertEqual(r["errors_non2xx"], 7)

    def test_a_clean_row_keeps_its_verdict(self):
        row = self.measured_rows(wrk_output(230_000, 5.0))
        measured, ok, word = verdicts(a_result([row]))[THROUGHPUT_16]
        self.assertIs(ok, True, measured)
        self.assertEqual(word, "met")

    def test_the_table_shows_each_kind_of_error(self):
        row = self.measured_rows(wrk_output(260_000, 5.0, non2xx=10, read=2))
        r = row["results"]["sidecar"]
        self.assertEqual((r["errors_non2xx"], r["errors_socket"]), (30, 6))
        self.assertEqual(r["all_errors"], [12, 12, 12])
        self.assertEqual(bench.errors_cell(r), "**36** (30 non-2xx, 6 socket)")
        self.assertEqual(bench.errors_cell(row["results"][bench.FLOOR]), "0")


BURST = "RSS < 2× idle within 30 s after 16 concurrent 5 MB requests"


def a_burst(samples: list[tuple[float, float, float]], ok: int = 48) -> dict:
    """burst_memory()'s result from (elapsed s, VmRSS, RssAnon) samples
    taken after the last burst; back_after_s as the first sample under 2×
    idle (what the old code judged on)."""
    idle = 10.0
    first_under = next((t for t, rss, _ in samples if rss < 2 * idle), None)
    return {"idle": idle, "idle_anon": 1.2, "peak": 66.9, "at_end": samples[0][1],
            "at_end_anon": samples[0][2], "after": samples[-1][1], "after_anon": samples[-1][2],
            "back_after_s": first_under, "watch_s": 30.0, "ok": ok, "conns": 16, "bursts": 3,
            "statuses": {200: ok, 503: 48 - ok} if ok < 48 else {200: ok}, "mb": 5 * 2**20 / 1e6,
            "samples": samples}


def half_second_samples(rss_at) -> list[tuple[float, float, float]]:
    return [(t / 2, rss_at(t / 2), rss_at(t / 2) - 8.9) for t in range(60)]


class BurstVerdict(unittest.TestCase):
    """Bug 2: the burst verdict ignored the answers' statuses, passed on the
    first sample under 2× idle, and gave only VmRSS."""

    def test_memory_that_climbs_back_is_not_met(self):
        # Under 2× idle for a moment at 0.5 s, then over it to the end.
        b = a_burst(half_second_samples(lambda t: 15.0 if t < 1 else 25.0))
        measured, ok, word = verdicts(a_result([], burst=b))[BURST]
        self.assertIs(ok, False, measured)

    def test_judged_on_the_samples_from_the_crossing_to_the_end(self):
        b = a_burst(half_second_samples(lambda t: 40.0 if t < 3 else (15.0 if t != 10 else 21.0)))
        self.assertEqual(bench.settled_after(b["samples"], 20.0), 10.5)
        measured, ok, word = verdicts(a_result([], burst=b))[BURST]
        self.assertIs(ok, True, measured)
        self.assertIn("from 10.5 s", measured)

    def test_an_answer_other_than_200_voids_it(self):
        b = a_burst(half_second_samples(lambda t: 12.0), ok=47)
        measured, ok, word = verdicts(a_result([], burst=b))[BURST]
        self.assertIs(ok, False, measured)
        self.assertIn("void: 1 of 48 burst answers not 200", word)

    def test_anonymous_memory_is_reported_beside(self):
        b = a_burst(half_second_samples(lambda t: 12.9))
        measured, ok, word = verdicts(a_result([], burst=b))[BURST]
        self.assertIs(ok, True, measured)
        self.assertIn("anonymous 1.2 → 4.0 MiB", measured)
        self.assertIn("4.0 MiB anonymous", bench.burst_line(b))


class PairedRoundVerdicts(unittest.TestCase):
    """Bug 3: verdicts took the ratio of the medians although the rounds
    are paired; now the median of the paired ratios, and rounds on both
    sides of the line are said to leave it unresolved."""

    def test_throughput_is_judged_on_the_paired_ratios(self):
        # Medians 90 and 100 (0.90×), but round by round 0.90, 0.80, 0.80.
        row = a_row(16, {"sidecar": a_target([90.0, 80.0, 120.0]),
                         bench.FLOOR: a_target([100.0, 100.0, 150.0])})
        measured, ok, word = verdicts(a_result([row]))[THROUGHPUT_16]
        self.assertIs(ok, False, measured)
        self.assertTrue(measured.startswith("0.80× the floor"), measured)
        self.assertEqual(word, "**not met** (unresolved: rounds on both sides)")

    def test_rounds_on_one_side_are_resolved(self):
        row = a_row(16, {"sidecar": a_target([90.0, 88.0, 95.0]),
                         bench.FLOOR: a_target([100.0, 100.0, 100.0])})
        measured, ok, word = verdicts(a_result([row]))[THROUGHPUT_16]
        self.assertIs(ok, True, measured)
        self.assertEqual(word, "met")

    def test_usage_cost_is_the_median_of_paired_costs(self):
        # Medians 96 and 100: 4 %. Paired: 4.0, 2.0, 1.1 %: median 2.0 %.
        row = a_row(16, {"sidecar": a_target([96.0, 99.0, 90.0]),
                         "sidecar, usage metrics off": a_target([100.0, 101.0, 91.0])})
        measured, ok, word = verdicts(a_result([row]))["usage metrics cost ≤ 3 % throughput at 16 conns"]
        self.assertIs(ok, True, measured)
        self.assertTrue(measured.startswith("+2.0 % ("), measured)
        self.assertEqual(word, "met (unresolved: rounds on both sides)")

    def test_many_rounds_are_judged_on_the_medians_interval(self):
        # 25 rounds from 0.70 to 1.03 of the floor: the lowest under the
        # line, but the median's 95 % interval (rounds 8 and 18) above it.
        ratios = [0.70, 0.72, 0.75, 0.78, 0.80, 0.82, 0.84] + [0.86 + 0.01 * i for i in range(18)]
        row = a_row(16, {"sidecar": a_target([100.0 * r for r in ratios]),
                         bench.FLOOR: a_target([100.0] * 25)})
        measured, ok, word = verdicts(a_result([row]))[THROUGHPUT_16]
        self.assertIs(ok, True, measured)
        self.assertEqual(word, "met")
        self.assertIn("the median's 95 % interval 0.86 to 0.96", measured)
        # One more round under the line brings the interval across it.
        ratios[7] = 0.83
        row = a_row(16, {"sidecar": a_target([100.0 * r for r in ratios]),
                         bench.FLOOR: a_target([100.0] * 25)})
        _, _, word = verdicts(a_result([row]))[THROUGHPUT_16]
        self.assertEqual(word, "met (unresolved: the median's 95 % interval on both sides)")

    def test_the_medians_interval_is_the_range_up_to_eight_rounds(self):
        for n, k in [(3, 1), (5, 1), (6, 1), (9, 2), (25, 8)]:
            v = list(range(n))
            self.assertEqual(bench.median_interval(v), (k - 1, n - k), n)

    def test_no_cold_starts_leave_no_cold_start_verdict(self):
        row = a_row(16, {"sidecar": a_target([90.0] * 3), bench.FLOOR: a_target([100.0] * 3)})
        got = verdicts(a_result([row], cold=[]))
        self.assertFalse([k for k in got if k.startswith("cold start")], got)
        self.assertIn(THROUGHPUT_16, got)
        text = a_report(a_result([row], cold=[]))
        self.assertIn(THROUGHPUT_16, text)
        self.assertNotIn("Cold start", text)

    def test_latency_is_judged_on_the_paired_gaps(self):
        # Medians 0.40 and 0.30 (+0.10 over the floor); paired +0.01, +0.01, +0.20.
        rows = [a_row(1, {"sidecar": a_target([90.0] * 3, p50=[0.30, 0.40, 0.50]),
                          bench.FLOOR: a_target([95.0] * 3, p50=[0.29, 0.39, 0.30])})]
        measured, ok, word = verdicts(a_result(rows))["added p50 at 1 conn ≤ the floor's + 0.03 ms"]
        self.assertIs(ok, True, measured)
        self.assertIn("+0.010 ms over the floor", measured)
        self.assertEqual(word, "met (unresolved: rounds on both sides)")


class StreamUsageInstructions(unittest.TestCase):
    """The streamed answers' usage cost, beside its throughput figure, in
    callgrind's instructions: the throughput rows' figure moves by tens
    of points from round to round on a shared VM; instructions do not."""

    LABEL = "usage metrics cost on streamed answers at 16 conns (no target)"

    def stream_row(self) -> dict:
        return a_row(16, {"sidecar": a_target([80.0, 82.0, 78.0]),
                          "sidecar, usage metrics off": a_target([100.0] * 3)},
                     endpoint="converse stream")

    def profile(self, on_ok: int = 2000) -> dict:
        return {"requests": 2000, "ok": 2000, "usage_off_ok": 2000,
                "ir_per_request": 200_000.0, "usage_off_ir_per_request": 195_000.0,
                "streams": {"converse stream": {"on_ok": on_ok, "off_ok": 2000,
                                                "on_ir_per_request": 250_000.0,
                                                "off_ir_per_request": 210_000.0}}}

    def test_the_instructions_follow_the_throughput_figure(self):
        res = a_result([self.stream_row()], profile=self.profile())
        measured, ok, _ = verdicts(res)[self.LABEL]
        self.assertIsNone(ok)
        self.assertTrue(measured.startswith("+20.0 % ("), measured)
        self.assertIn("; in callgrind +40,000 instructions a request, +16.0 % of 250,000", measured)

    def test_a_failed_request_leaves_them_out(self):
        res = a_result([self.stream_row()], profile=self.profile(on_ok=1999))
        measured, _, _ = verdicts(res)[self.LABEL]
        self.assertNotIn("callgrind", measured)


class ShuffledRounds(unittest.TestCase):
    """Bug 4: every round ran the targets in the same order, so the A/B
    twins always ran right after the sidecar."""

    NAMES = ("sidecar", "sidecar, usage metrics off", "sidecar, API key (no SigV4)", bench.FLOOR,
             bench.BASELINE)

    def calls(self, seed: int, repeats: int = 8) -> list[str]:
        seen = []

        def run_wrk(url, path, body_file, conns, duration, cpu):
            seen.append(url)
            return {**json.loads(wrk_output(5000, 5.0).split("BENCH_JSON ")[1]), "errors": 0, "errors_non2xx": 0, "errors_socket": 0, "rps": 1000.0}

        targets = proxy_targets(*self.NAMES)
        results = run_measure(targets, run_wrk, repeats=repeats, seed=seed)
        by_url = {t.url: t.name for t in targets}
        self.results = results
        return [by_url[u] for u in seen]

    def rounds(self, seed: int, repeats: int = 8) -> list[list[str]]:
        names = self.calls(seed, repeats)
        n = len(self.NAMES) + 1
        self.assertEqual(names[:n], ["direct", *self.NAMES])  # warm-up: every target, in order
        return [names[i:i + n] for i in range(n, len(names), n)]

    def test_the_order_changes_between_rounds(self):
        rounds = self.rounds(seed=7)
        self.assertEqual(len(rounds), 8)
        for r in rounds:
            self.assertEqual(sorted(r), sorted(["direct", *self.NAMES]))
        self.assertGreater(len({tuple(r) for r in rounds}), 1)

    def test_the_twins_do_not_always_follow_the_sidecar(self):
        rounds = self.rounds(seed=7)
        for twin in ("sidecar, usage metrics off", bench.BASELINE):
            follows = [r.index(twin) == r.index("sidecar") + 1 for r in rounds]
            self.assertFalse(all(follows), twin)

    def test_the_seed_repeats_the_order(self):
        self.assertEqual(self.rounds(seed=11), self.rounds(seed=11))
        self.assertNotEqual(self.rounds(seed=11), self.rounds(seed=12))

    def test_each_target_records_its_place_in_each_round(self):
        rounds = self.rounds(seed=3, repeats=4)
        for name in ("direct", *self.NAMES):
            self.assertEqual(self.results[name]["all_order"], [r.index(name) for r in rounds])


def report_args(**kw) -> types.SimpleNamespace:
    a = dict(binary=Path("/x/bedrock-broker"), baseline_binary=None, no_floor=False,
             no_stack_floor=True, proxy_cpu=1, load_cpu=0, warmup=1, repeats=3, duration=5,
             seed=42, out=Path("bench/results/latest.md"), stream_conns="16", chat_stream_conns="16", max_steal=3.0, steal_retries=3,
             events=5, gap_ms=200, stream_repeats=5)
    a.update(kw)
    return types.SimpleNamespace(**a)


def a_report(res: dict) -> str:
    base = {"when": "2026-12-06 19:00", "machine": "test machine", "binary": Path("/x/bedrock-broker"),
            "git": "abc1234", "tools": "wrk 4.1.0"}
    res = {**base, **res}
    res["summary"] = bench.summary(res, None)
    return bench.report(res, report_args(), "python3 bench/run.py")


def cpu_rows() -> list[dict]:
    # The sidecar: 24.6, 24.9, 25.3 µs a request; the floor 21.0 each round.
    return [a_row(16, {"sidecar": a_target([40000.0] * 3, cpu_us=[24.6, 24.9, 25.3]),
                       bench.FLOOR: a_target([46000.0] * 3, cpu_us=[21.0, 21.0, 21.0])})]


class MemoryAfterTheLoadRows(unittest.TestCase):
    """Bug 6: after the load rows only VmRSS was kept, not RssAnon."""

    def test_anonymous_rss_after_the_load_rows_is_shown(self):
        text = a_report(a_result(cpu_rows()))
        self.assertIn("after the load rows, idle: 17.8 MiB (6.5 MiB anonymous)", text)


class BinaryReadFromDisk(unittest.TestCase):
    """A binary just written maps in larger pieces than one read back from
    disk (about 1 MiB more file-backed RSS): every run drops the binaries'
    cached pages first, so RSS compares between runs."""

    def resident_bytes(self, path: Path) -> int:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                             capture_output=True, text=True, check=True).stdout
        return int(out.split()[0])

    @unittest.skipUnless(shutil.which("fincore"), "fincore (util-linux) not installed")
    def test_a_freshly_written_file_leaves_the_page_cache(self):
        # Next to the sources, not in /tmp: a tmpfs holds its files in memory
        # and cannot evict them.
        with tempfile.TemporaryDirectory(dir=HERE) as d:
            path = Path(d) / "binary"
            path.write_bytes(bytes(range(256)) * 4096)  # 1 MiB, cached as written
            fs = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                                text=True, check=True).stdout.strip()
            if fs in ("tmpfs", "ramfs"):
                self.skipTest(f"the work tree is on {fs}, which keeps its files in memory")
            self.assertGreater(self.resident_bytes(path), 0)
            bench.drop_cached_pages(path)
            self.assertEqual(self.resident_bytes(path), 0)


class CpuInMicroseconds(unittest.TestCase):
    """Bug 7: the CPU column printed s per 10k requests to two decimals
    (steps of 1 µs a request); the per-round data were not written."""

    def test_the_table_gives_microseconds_a_request(self):
        text = a_report(a_result(cpu_rows()))
        self.assertIn("| CPU µs / req |", text)
        sidecar = next(line for line in text.splitlines() if line.startswith("| sidecar (converse)"))
        self.assertIn("| 24.9 |", sidecar)

    def test_the_verdict_keeps_the_targets_unit_and_pairs_rounds(self):
        measured, ok, word = verdicts(a_result(cpu_rows()))[
            "CPU s per 10k requests ≤ 1.5× the floor's at 16 conns"]
        self.assertIs(ok, True)
        self.assertTrue(measured.startswith("0.25 s (24.9 µs a request; 1.19×"), measured)

    def test_every_rounds_raw_figures_go_to_json(self):
        runs = [{"requests": 200_000, "duration_us": 5_000_000, "rps": 40000.0, "cpu_s": 4.98,
                 "errors": 0}]
        rows = cpu_rows()
        rows[0]["results"]["sidecar"]["runs"] = runs
        res = a_result(rows, burst=None, when="2026-12-06 19:00", binary=Path("/x/b"))
        res["summary"] = bench.summary(res, None)
        data = json.loads(bench.results_json(res, report_args(), "python3 bench/run.py"))
        self.assertEqual(data["seed"], 42)
        row = data["rows"][0]
        self.assertEqual((row["endpoint"], row["body"], row["conns"]), ("converse", "1 KB", 16))
        self.assertEqual(row["results"]["sidecar"]["runs"], runs)
        self.assertEqual(row["results"]["sidecar"]["all_cpu_us"], [24.6, 24.9, 25.3])
        self.assertIn({"target": "CPU s per 10k requests ≤ 1.5× the floor's at 16 conns",
                       "met": True, "note": None},
                      [{k: v[k] for k in ("target", "met", "note")} for v in data["summary"]])



if __name__ == "__main__":
    unittest.main()
