"""The benchmark's report arithmetic (bench/run.py), without running a benchmark."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_ratios_pair_runs_of_the_same_round():
    # The machine slowed down in the second round; both targets felt it.
    sidecar = {"all_rps": [80, 40, 82]}
    floor = {"all_rps": [100, 50, 100]}
    assert bench.round_ratios(sidecar, floor) == [0.8, 0.8, 0.82]
    assert bench.by_round(sidecar, floor, ".2f") == "by round: median 0.80, 0.80 to 0.82 over 3"


def test_a_round_is_paired_with_its_own_round_only():
    # Sorted separately, these lists would pair 50/50 and 90/100.
    sidecar = {"all_rps": [50, 90, 82]}
    floor = {"all_rps": [100, 50, 100]}
    assert bench.round_ratios(sidecar, floor) == [0.5, 0.82, 1.8]


def test_costs_are_shown_in_percent():
    on = {"all_rps": [97, 95]}
    off = {"all_rps": [100, 100]}
    assert bench.by_round(on, off, "+.1f", cost=True) == "by round: median +4.0, +3.0 to +5.0 over 2"


def test_no_rounds_is_said_not_divided():
    assert bench.by_round({"all_rps": []}, {"all_rps": []}, ".2f") == "no rounds"
    assert bench.by_round({"all_rps": [5]}, {"all_rps": [0]}, ".2f") == "no rounds"


def test_latency_gaps_pair_runs_of_the_same_round():
    # Round 2 was slow for both: paired, it is a gap of 0.02 ms like the
    # others; compared across rounds it would look like 0.52 ms.
    sidecar = {"all_p50_ms": [0.30, 0.80, 0.31]}
    floor = {"all_p50_ms": [0.28, 0.78, 0.28]}
    gaps = bench.round_gaps(sidecar, floor, "all_p50_ms")
    assert [round(g, 3) for g in gaps] == [0.02, 0.02, 0.03]
    assert bench.by_round_gap(sidecar, floor, "all_p50_ms") == "by round: median +0.020 ms, +0.020 to +0.030 ms over 3"


def test_latency_gaps_of_an_old_result_are_said_missing():
    # Results measured before per-round latencies were kept.
    assert bench.by_round_gap({"all_rps": [1]}, {"all_rps": [1]}, "all_p99_ms") == "no rounds"


def _target(rps: float, p50: list[float], p99: list[float]) -> dict:
    return {"rps": rps, "p50_ms": sorted(p50)[len(p50) // 2], "p99_ms": sorted(p99)[len(p99) // 2],
            "cpu_per_10k": 1.0, "peak_rss": 10.0, "conns_per_1k": 0.0, "all_rps": [rps] * len(p50),
            "all_p50_ms": p50, "all_p99_ms": p99}


def _row(conns: int, results: dict, endpoint: str = "converse") -> dict:
    """A 1 KB row (converse unless told); `results` maps target names to
    `_target` arguments."""
    return {"endpoint": endpoint, "body": "1 KB", "conns": conns,
            "direct": {"rps": 1000.0, "p50_ms": 0.1, "p99_ms": 0.2},
            "results": {name: _target(**t) for name, t in results.items()}}


def _verdicts(rows: list[dict], profile: dict | None = None) -> dict:
    """The summary of a run with these rows: target -> (measured, met)."""
    res = {
        "rows": rows,
        "stream": {"sidecar": {"ttfb_ms": 0.5}, "direct": {"ttfb_ms": 0.4}},
        "idle_rss_anon": 1.0, "idle_rss": 10.0, "cold": [10.0],
    }
    if profile is not None:
        res["profile"] = profile
    return {t: (m, ok) for t, m, ok, _ in bench.summary(res, None)}


def test_latency_verdicts_show_the_rounds_beside_the_medians():
    lines = _verdicts([
        _row(1, {"sidecar": {"rps": 900.0, "p50": [0.30, 0.33, 0.31], "p99": [1.0, 1.0, 1.0]},
                 bench.FLOOR: {"rps": 950.0, "p50": [0.29, 0.29, 0.29], "p99": [1.0, 1.0, 1.0]}}),
        _row(64, {"sidecar": {"rps": 900.0, "p50": [1.0, 1.0, 1.0], "p99": [3.0, 4.5, 3.2]},
                  bench.FLOOR: {"rps": 950.0, "p50": [1.0, 1.0, 1.0], "p99": [2.9, 3.0, 3.1]}}),
    ])
    m, ok = lines["added p50 at 1 conn ≤ the floor's + 0.03 ms"]
    # Medians 0.31 and 0.29: 0.02 over the floor, met; one round was 0.04.
    assert ok is True
    assert "+0.020 ms over the floor; by round: median +0.020 ms, +0.010 to +0.040 ms over 3)" in m
    m, ok = lines["added p99 at 64 conns ≤ the floor's + 0.5 ms"]
    assert ok is True
    assert "by round: median +0.100 ms, +0.100 to +1.500 ms over 3)" in m


def test_usage_instructions_are_the_difference_of_the_two_profiles():
    p = {"ir_per_request": 150_000, "usage_off_ir_per_request": 147_000, "sha_ir_per_request": 75_000,
         "ok": 2000, "usage_off_ok": 2000, "requests": 2000}
    # 3,000 of 150,000 is 2 %; of the 75,000 that are not SHA-256, 4 %.
    assert bench.usage_instructions(p) == (
        "+3,000 instructions a request, +2.0 % of 150,000, +4.0 % of the 75,000 besides SHA-256")
    del p["sha_ir_per_request"]
    assert bench.usage_instructions(p) == "+3,000 instructions a request, +2.0 % of 150,000"


def test_usage_instructions_need_both_profiles_whole():
    assert bench.usage_instructions(None) is None
    assert bench.usage_instructions({"ir_per_request": 150_000, "ok": 2000, "requests": 2000}) is None
    # A failed request does less work: no difference is given then.
    whole = {"ir_per_request": 150_000, "usage_off_ir_per_request": 147_000,
             "ok": 2000, "usage_off_ok": 2000, "requests": 2000}
    assert bench.usage_instructions(whole) is not None
    assert bench.usage_instructions({**whole, "usage_off_ok": 1999}) is None
    assert bench.usage_instructions({**whole, "ok": 1999}) is None


def _usage_verdict(usage_on_rps: float, profile: dict | None) -> tuple[str, bool]:
    """The usage verdict of a run whose 16-connection usage-off row did
    1,000 req/s."""
    lines = _verdicts([_row(16, {
        "sidecar": {"rps": usage_on_rps, "p50": [1.0], "p99": [1.0]},
        "sidecar, usage metrics off": {"rps": 1000.0, "p50": [1.0], "p99": [1.0]},
    })], profile)
    return lines["usage metrics cost ≤ 3 % throughput at 16 conns"]


def test_the_usage_verdict_stays_with_throughput():
    # The instructions say 2 %, the throughput rows 5 %: the verdict is
    # the throughput's, the instructions stand beside it.
    m, ok = _usage_verdict(950.0, {"ir_per_request": 150_000, "usage_off_ir_per_request": 147_000,
                                   "ok": 2000, "usage_off_ok": 2000, "requests": 2000})
    assert ok is False
    assert m.startswith("+5.0 % (")
    assert m.endswith("; in callgrind +3,000 instructions a request, +2.0 % of 150,000")


def test_without_a_profile_the_usage_verdict_has_no_instructions():
    m, ok = _usage_verdict(990.0, None)
    assert ok is True
    assert m.startswith("+1.0 % (")
    assert "callgrind" not in m


@pytest.mark.parametrize("endpoint, what, rps, cost, other", [
    ("converse stream", "streamed answers", 600.0, "+40.0", "streamed chat answers"),
    ("chat stream", "streamed chat answers", 800.0, "+20.0", "streamed answers"),
])
def test_streamed_answers_get_their_own_usage_line(endpoint, what, rps, cost, other):
    lines = _verdicts([
        _row(16, {"sidecar": {"rps": 990.0, "p50": [1.0], "p99": [1.0]},
                  "sidecar, usage metrics off": {"rps": 1000.0, "p50": [1.0], "p99": [1.0]}}),
        _row(16, {"sidecar": {"rps": rps, "p50": [1.0], "p99": [1.0]},
                  "sidecar, usage metrics off": {"rps": 1000.0, "p50": [1.0], "p99": [1.0]}},
             endpoint=endpoint),
    ])
    # The target stays the converse row's; the stream's is beside it.
    assert lines["usage metrics cost ≤ 3 % throughput at 16 conns"][0].startswith("+1.0 % (")
    m, ok = lines[f"usage metrics cost on {what} at 16 conns (no target)"]
    assert ok is None
    assert m.startswith(f"{cost} % (by round: median {cost}")
    assert f"usage metrics cost on {other} at 16 conns (no target)" not in lines


def test_a_binary_with_the_test_clock_is_recognised(tmp_path):
    # A symbol as rustc mangles it, in otherwise arbitrary bytes.
    with_clock = tmp_path / "with"
    with_clock.write_bytes(b"\x7fELF" + b"\0" * 100 + b"_ZN5tokio4time5clock15DID_PAUSE_CLOCK17h0123E" + b"\0" * 10)
    without = tmp_path / "without"
    without.write_bytes(b"\x7fELF" + b"\0" * 100 + b"_ZN5tokio4time5clock5Clock3now17h0123E")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert bench.built_with_test_clock(with_clock) is True
    assert bench.built_with_test_clock(without) is False
    assert bench.built_with_test_clock(empty) is False


def test_the_mock_streams_a_converse_answer_botocore_reads():
    # The streamed rows mean something only if the answer is one a client
    # (and the sidecar's usage reader) takes for ConverseStream.
    from botocore.eventstream import EventStreamBuffer

    buf = EventStreamBuffer()
    buf.add_data(bench.converse_stream_response_body())
    messages = list(buf)
    kinds = [m.headers[":event-type"] for m in messages]
    assert kinds[0] == "messageStart"
    assert kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    deltas = [json.loads(m.payload) for m in messages if m.headers[":event-type"] == "contentBlockDelta"]
    assert len(deltas) == len(messages) - 4 > 40
    text = "".join(d["delta"]["text"] for d in deltas).strip()
    assert text == json.loads(bench.converse_response_body())["output"]["message"]["content"][0]["text"]
    assert json.loads(messages[-1].payload)["usage"] == {"inputTokens": 212, "outputTokens": 196, "totalTokens": 408}
    assert all(m.headers[":message-type"] == "event" for m in messages)


def test_the_mock_streams_a_chat_answer_the_openai_sdk_reads():
    # What a client asking for usage in a stream gets from OpenAI's API,
    # read by the SDK itself (its HTTP transport replaced by the mock's body).
    openai = pytest.importorskip("openai")
    import httpx

    body = bench.chat_stream_response_body().encode()
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(api_key="x", base_url="http://mock/openai/v1", max_retries=0,
                           http_client=httpx.Client(transport=httpx.MockTransport(answer)))
    chunks = list(client.chat.completions.create(
        model="openai.gpt-oss-20b-1:0", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert seen[0]["stream"] is True
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert text == json.loads(bench.chat_response_body())["choices"][0]["message"]["content"]
    assert len(chunks) > 40 and all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 408
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert body.count(b'"usage":null') == len(chunks) - 1


def test_a_row_answered_by_another_route_is_refused():
    stream = len(bench.chat_stream_response_body())
    # The chat stream row's requests answered by the plain chat route.
    plain = {"requests": 100, "bytes": 100 * (len(bench.chat_response_body()) + 150)}
    with pytest.raises(RuntimeError, match="less than the 11,340-byte answer"):
        bench.check_answers("sidecar", "chat stream", plain)
    with pytest.raises(RuntimeError, match="0 bytes a response"):
        bench.check_answers("sidecar", "converse", {"requests": 0, "bytes": 0})
    bench.check_answers("sidecar", "chat stream", {"requests": 100, "bytes": 100 * (stream + 150)})
    bench.check_answers("direct", "openai chat", plain)
