"""Large legitimate requests at once stay within the injected memory limit:
bodies beyond --request-body-budget wait, or are told to retry, instead of
taking the sidecar over 128Mi (six 24 MiB requests once peaked at 160 MiB)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import selectors
import socket
import threading
import time
import uuid

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import requests

from conftest import shipped_env, wait_for
from test_soak import peak_rss_mib, rss_mib

CONVERSE = "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
CONVERSE_STREAM = CONVERSE + "-stream"
# The smallest converse request: what each stream of these tests asks.
HI = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
INJECTED_LIMIT_MIB = 128


def assert_peak_under_the_limit(sidecar) -> None:
    """The sidecar's peak RSS so far is within the injected limit's 90 %."""
    peak = peak_rss_mib(sidecar.proc.pid)
    print(f"\npeak RSS {peak:.1f} MiB")
    assert peak < INJECTED_LIMIT_MIB * 0.9, f"peak RSS {peak:.1f} MiB"


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


def test_a_trickling_upload_gives_its_budget_back_after_the_grace(start_sidecar, irsa_env, fake_aws):
    # A client that declares a large body and sends a byte now and then is
    # never silent for --body-read-timeout, yet holds its declared length
    # of the budget: before --body-min-rate, for as long as it trickled.
    sidecar = start_sidecar({
        **irsa_env,
        "BEDROCK_BROKER_REQUEST_BODY_BUDGET": str(1024 * 1024),
        "BEDROCK_BROKER_MAX_BODY_BYTES": str(1024 * 1024),
        "BEDROCK_BROKER_BODY_BUDGET_WAIT": "0s",
        "BEDROCK_BROKER_BODY_MIN_RATE_GRACE": "2s",
    })
    host, port = sidecar.proxy.removeprefix("http://").rsplit(":", 1)
    small = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
    with socket.create_connection((host, int(port)), timeout=30) as trickle:
        trickle.sendall(
            f"POST {CONVERSE} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1024 * 1024}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        # hyper sends 100 Continue once the proxy reads the body, after it
        # reserved the declared length.
        assert trickle.recv(64).startswith(b"HTTP/1.1 100 Continue")
        started = time.monotonic()
        held = requests.post(sidecar.url(CONVERSE), data=small, timeout=10)
        assert (held.status_code, held.headers["x-bedrock-broker-error"]) == (503, "overloaded")

        answer = b""
        while b"\r\n\r\n" not in answer:
            assert time.monotonic() - started < 20, "the trickle was never cut off"
            trickle.sendall(b"x")
            trickle.settimeout(0.25)
            try:
                answer += trickle.recv(4096)
            except socket.timeout:
                pass
        elapsed = time.monotonic() - started
    head = answer.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 408"), head
    assert "x-bedrock-broker-error: body_too_slow" in head, head
    # The grace, and not the 30 s read timeout, ended it.
    assert 2 <= elapsed < 15, elapsed
    after = requests.post(sidecar.url(CONVERSE), data=small, timeout=10)
    assert after.status_code == 200, after.text


def test_streams_whose_clients_stop_reading_stay_under_the_memory_limit(start_sidecar, irsa_env, fake_aws):
    # An app whose readers fall behind (a slow consumer, a stuck worker):
    # every such stream kept its upstream connection's whole read buffer
    # (hyper's ~400 KiB), and 200 of them took the sidecar past 128Mi.
    unread_streams_peak(start_sidecar({**irsa_env, **shipped_env()}), fake_aws)


def test_unread_streams_over_an_http2_upstream_stay_under_the_memory_limit(start_sidecar, fake_aws_h2, h2_env):
    # Over HTTP/2 (Bedrock's own protocol) the 200 streams share one
    # connection (the fake allows 1000 streams on it): what the sidecar
    # holds is bounded by its flow-control windows, and the rest waits at
    # Bedrock.
    unread_streams_peak(start_sidecar({**h2_env, **shipped_env()}), fake_aws_h2)
    assert {r["http_version"] for r in fake_aws_h2.requests()} == {"2"}


def unread_streams_peak(sidecar, fake_aws) -> None:
    """200 ConverseStreams of 32 KiB events whose clients read nothing: the
    sidecar's peak RSS once every buffer on the way is full."""
    host, port = sidecar.proxy.removeprefix("http://").split(":")
    run = uuid.uuid4().hex[:8]
    ids = [f"unread-{run}-{i}" for i in range(200)]
    sockets = []
    try:
        for stream_id in ids:
            s = socket.socket()
            # A small window: the kernel keeps little of what is not read,
            # so the proxy's own buffers fill within seconds.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, int(port)))
            s.sendall(
                (
                    f"POST {CONVERSE_STREAM} HTTP/1.1\r\n"
                    f"Host: {host}:{port}\r\nContent-Type: application/json\r\n"
                    f"x-fake-stream-id: {stream_id}\r\nx-fake-chunks: 400\r\nx-fake-chunk-pad: 32768\r\n"
                    f"Content-Length: {len(HI)}\r\n\r\n"
                ).encode()
                + HI
            )
            sockets.append(s)  # never read

        def all_waiting() -> bool:
            streams = {s["stream_id"]: s for s in fake_aws.get("/streams")}
            mine = [streams.get(i, {}) for i in ids]
            return all(m.get("blocked_on_write") or m.get("finished") for m in mine)

        # Every buffer on the way is full once each write waits (or, for a
        # stream the kernel's buffers took whole, once it was all sent).
        wait_for(all_waiting, timeout=60, what="every stream to wait for its reader")
        assert_peak_under_the_limit(sidecar)
    finally:
        for s in sockets:
            s.close()


def test_large_bidirectional_messages_stay_under_the_memory_limit(start_sidecar, fake_aws_h2, h2_env):
    # Signing a bidirectional stream's message holds it about three times
    # over (the client's bytes, the decoded copy, the signed envelope): one
    # 24 MiB message took the sidecar to 132 MiB, past 128Mi, while the
    # budget counted it once, and two 12.6 MiB ones (AWS's event streams
    # allow 16 MiB) to 140 MiB. They now take turns in the budget (a
    # generous wait, so both get theirs), and both arrive verified.
    import asyncio

    from test_bidirectional_stream import H2Client, bidi_headers, bidi_records, chunk

    sidecar = start_sidecar({**h2_env, **shipped_env(), "BEDROCK_BROKER_BODY_BUDGET_WAIT": "60s"})
    message = chunk("x" * (9 * 1024 * 1024))
    assert 12 * 1024 * 1024 < len(message) < 16 * 1024 * 1024

    async def one() -> None:
        client = await H2Client.connect(sidecar.proxy)
        try:
            call = await client.start(bidi_headers(sidecar.proxy))
            await call.send(message, timeout=120)
            assert await call.response_status(timeout=120) == 200
            echoed = await call.next_message(timeout=120)
            assert echoed is not None and echoed.headers[":message-type"] == "event", (echoed.headers, echoed.payload[:300])
            await call.send(b"", end_stream=True)
            assert await call.next_message(timeout=60) is None
        finally:
            await client.close()

    async def both() -> None:
        await asyncio.gather(one(), one())

    asyncio.run(both())
    peak = peak_rss_mib(sidecar.proc.pid)
    print(f"\npeak RSS {peak:.1f} MiB")
    records = bidi_records(fake_aws_h2)
    assert [r["bidi"]["frames_verified"] for r in records] == [2, 2], [r["bidi"] for r in records]
    assert all(r["bidi"]["completed"] for r in records)
    assert peak < INJECTED_LIMIT_MIB * 0.9, f"peak RSS {peak:.1f} MiB"
    bodies = {"budget": "request_bodies"}
    wait_for(lambda: sidecar.metric("bedrock_broker_memory_budget_used_bytes", bodies) == 0, timeout=10, what="room back")


def test_open_bidirectional_streams_keep_no_large_message_buffer(start_sidecar, fake_aws_h2, h2_env):
    # A message just short of what its receiving buffer had grown to left
    # the whole buffer with its stream after it was signed, outside the
    # budget: six open sessions that had each sent one such 16 MiB message
    # held 133 MiB between messages.
    import asyncio

    from test_bidirectional_stream import H2Client, bidi_headers, chunk

    sidecar = start_sidecar({**h2_env, **shipped_env(), "BEDROCK_BROKER_BODY_BUDGET_WAIT": "60s"})
    text = "x" * (12_550_000)
    message = chunk(text)
    assert 16 * 1024 * 1024 - 60_000 < len(message) < 16 * 1024 * 1024 - 20_000, len(message)

    async def sessions() -> float:
        clients = []
        try:
            for _ in range(6):
                client = await H2Client.connect(sidecar.proxy)
                clients.append(client)
                call = await client.start(bidi_headers(sidecar.proxy))
                for m in (message, chunk("and a small one")):
                    await call.send(m, timeout=120)
                    echoed = await call.next_message(timeout=120)
                    assert echoed is not None and echoed.headers[":message-type"] == "event", echoed.headers
            # Every session open, each between messages.
            return rss_mib(sidecar.proc.pid)
        finally:
            for client in clients:
                await client.close()

    held = asyncio.run(sessions())
    print(f"\nRSS with six sessions open {held:.1f} MiB")
    assert held < INJECTED_LIMIT_MIB * 0.9, f"RSS {held:.1f} MiB"


def test_event_streams_of_large_events_stay_under_the_memory_limit(start_sidecar, irsa_env, fake_aws):
    # The usage tap keeps an event stream's last messages until its end:
    # up to 1 MiB a stream, multiplied by every stream in flight. 240
    # ConverseStreams of 240 KB events, all between their fifth and last
    # event at once, took the sidecar far past 128Mi. All taps together
    # now hold at most their shared budget; a stream that finds none left
    # still reaches its client whole, only its tokens go uncounted.
    sidecar = start_sidecar({**irsa_env, **shipped_env()})
    host, port = sidecar.proxy.removeprefix("http://").split(":")
    run = uuid.uuid4().hex[:8]
    ids = [f"large-events-{run}-{i}" for i in range(240)]
    pad, chunks = 240_000, 6
    model = "anthropic.claude-3-haiku-20240307-v1:0"

    def output_tokens() -> float:
        return sidecar.metric("bedrock_broker_tokens_total", {"model": model, "direction": "output"}) or 0

    def without_usage(reason: str) -> float:
        labels = {"operation": "converse_stream", "reason": reason}
        return sidecar.metric("bedrock_broker_answers_without_usage_total", labels) or 0

    # One such answer alone has all the room it needs: its tokens, as
    # each of the 240 would count them.
    alone = requests.post(
        sidecar.url(f"/model/{model}/converse-stream"),
        data=HI,
        headers={"content-type": "application/json", "x-fake-chunks": str(chunks), "x-fake-chunk-pad": str(pad)},
        timeout=60,
    )
    assert alone.status_code == 200 and len(alone.content) > chunks * pad
    wait_for(lambda: output_tokens() > 0, timeout=10, what="the lone answer's tokens")
    each = output_tokens()
    received = {i: 0 for i in ids}
    answers = {i: b"" for i in ids}
    closed: set[str] = set()
    sel = selectors.DefaultSelector()
    for stream_id in ids:
        s = socket.create_connection((host, int(port)))
        s.sendall(
            (
                f"POST {CONVERSE_STREAM} HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nContent-Type: application/json\r\nConnection: close\r\n"
                f"x-fake-lockstep: {stream_id}\r\nx-fake-lockstep-timeout-ms: 120000\r\n"
                f"x-fake-chunks: {chunks}\r\nx-fake-chunk-pad: {pad}\r\n"
                f"Content-Length: {len(HI)}\r\n\r\n"
            ).encode()
            + HI
        )
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, stream_id)
    lock = threading.Lock()
    stop = threading.Event()

    def drain() -> None:
        # One reader for every stream: what the proxy sends is taken at
        # once, so each answer's frames pass its tap as they come.
        while not stop.is_set() and len(closed) < len(ids):
            for key, _ in sel.select(timeout=0.1):
                stream_id = key.data
                data = key.fileobj.recv(1 << 20)
                with lock:
                    if not data:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                        closed.add(stream_id)
                        continue
                    received[stream_id] += len(data)
                    if len(answers[stream_id]) < 200:
                        answers[stream_id] += data[:200]

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        for stream_id in ids:
            fake_aws.post("/stream/release", {"stream_id": stream_id, "count": chunks - 2})

        def all_past_their_fifth_event() -> bool:
            with lock:
                return all(n > (chunks - 1) * pad for n in received.values())

        wait_for(all_past_their_fifth_event, timeout=120, what="every stream to pass its fifth event")
        peak = peak_rss_mib(sidecar.proc.pid)
        # The taps that found room hold nearly all of it now.
        held = sidecar.metric("bedrock_broker_memory_budget_used_bytes", {"budget": "usage_taps"})
        for stream_id in ids:
            fake_aws.release(stream_id)
        wait_for(lambda: len(closed) == len(ids), timeout=120, what="every answer to end")
    finally:
        stop.set()
        reader.join(timeout=10)
        for key in list(sel.get_map().values()):
            key.fileobj.close()
    print(f"\npeak RSS {peak:.1f} MiB")
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers.values()), {a[:40] for a in answers.values()}
    # Each answer reached its client whole: every event and the end.
    assert all(n > chunks * pad for n in received.values())
    finished = [fake_aws.stream(i) for i in ids]
    assert all(s["finished"] and not s["client_disconnected"] for s in finished)
    assert peak < INJECTED_LIMIT_MIB * 0.9, f"peak RSS {peak:.1f} MiB"
    # Every answer is accounted for: its tokens counted in full, or the
    # answer counted as one whose usage did not fit. 240 answers holding
    # three 240 KB events each cannot all fit.
    wait_for(
        lambda: output_tokens() - each + without_usage("over_budget") * each == 240 * each,
        timeout=10,
        what="every answer counted, by its tokens or as over budget",
    )
    print(f"{without_usage('over_budget'):.0f} answers over budget")
    assert without_usage("over_budget") > 0
    assert [without_usage(r) for r in ("not_reported", "cut_off", "unreadable")] == [0, 0, 0]
    print(f"the taps held {held / 2**20:.1f} MiB of 16")
    assert 8 * 2**20 < held <= 16 * 2**20
    # What the taps took, the full ones' and the refused ones', came back.
    taps = {"budget": "usage_taps"}
    wait_for(lambda: sidecar.metric("bedrock_broker_memory_budget_used_bytes", taps) == 0, timeout=10, what="room back")


def test_http2_clients_of_many_large_event_streams_stay_under_the_memory_limit(start_sidecar, irsa_env, fake_aws):
    # An app that multiplexes its streams over HTTP/2 reaches --max-requests
    # (512) on a few connections, each stream with its own HTTP/1.1
    # upstream connection. Every chunk queued for a client pinned the whole
    # read buffer it was read into while the connection read on into a new
    # one: 512 ConverseStreams of 240 KB events took the sidecar to 185 MiB.
    sidecar = start_sidecar({**irsa_env, **shipped_env()})
    run = uuid.uuid4().hex[:8]
    ids = [f"h2-large-events-{run}-{i}" for i in range(512)]
    pad, chunks = 240_000, 6
    received = {i: 0 for i in ids}
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    url = sidecar.url(CONVERSE_STREAM)

    async def one(client: httpx.AsyncClient, stream_id: str) -> None:
        headers = {
            "content-type": "application/json",
            "x-fake-lockstep": stream_id,
            "x-fake-lockstep-timeout-ms": "120000",
            "x-fake-chunks": str(chunks),
            "x-fake-chunk-pad": str(pad),
        }
        async with client.stream("POST", url, content=HI, headers=headers) as answer:
            statuses[stream_id] = answer.status_code
            async for data in answer.aiter_raw():
                with lock:
                    received[stream_id] += len(data)

    async def all_streams() -> list:
        # httpx (httpcore) runs at most 100 streams on a connection: six
        # connections carry all 512 at once.
        clients = [
            httpx.AsyncClient(http1=False, http2=True, timeout=180, limits=httpx.Limits(max_connections=1))
            for _ in range(6)
        ]
        try:
            calls = [one(clients[n % len(clients)], i) for n, i in enumerate(ids)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            for client in clients:
                await client.aclose()

    def all_past_their_fifth_event() -> bool:
        with lock:
            return all(n > (chunks - 1) * pad for n in received.values())

    peak, results = peak_before_the_last_event(sidecar, fake_aws, ids, all_streams(), all_past_their_fifth_event)
    assert [r for r in results if r is not None] == []
    assert set(statuses.values()) == {200} and len(statuses) == len(ids)
    assert all(n > chunks * pad for n in received.values())
    assert all(fake_aws.stream(i)["finished"] for i in ids)
    assert {r["http_version"] for r in fake_aws.requests()} == {"1.1"}
    assert peak < INJECTED_LIMIT_MIB * 0.9, f"peak RSS {peak:.1f} MiB"


def test_http2_clients_of_large_event_streams_over_an_http2_upstream_stay_under_the_memory_limit(
    start_sidecar, fake_aws_h2, h2_env
):
    # The test above with Bedrock's own protocol upstream: all 512 answers
    # share one HTTP/2 connection to the fake, so what the sidecar holds is
    # what its windows let in (16 MiB) plus what it queues for the clients.
    # The clients are raw h2 ones that read every frame as it comes: httpx
    # (httpcore 1.0) left a stream's frames in its own queue while the
    # stream's task waited for the connection's read lock, held by a task
    # blocked on a read (nothing more came until the release), and a dozen
    # streams stopped short until then. The sidecar had sent them whole.
    sidecar = start_sidecar({**h2_env, **shipped_env()})
    host, port = sidecar.proxy.removeprefix("http://").split(":")
    run = uuid.uuid4().hex[:8]
    ids = [f"h2-h2-large-events-{run}-{i}" for i in range(512)]
    pad, chunks = 240_000, 6
    received = {i: 0 for i in ids}
    statuses: dict[str, str] = {}
    ended: set[str] = set()

    async def connection(mine: list[str]) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        # The windows httpx opens: 16 MiB a connection and a stream.
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16 * 1024 * 1024})
        conn.increment_flow_control_window(16 * 1024 * 1024)
        streams = {}
        for stream_id in mine:
            sid = conn.get_next_available_stream_id()
            streams[sid] = stream_id
            conn.send_headers(sid, [
                (":method", "POST"), (":scheme", "http"), (":authority", f"{host}:{port}"),
                (":path", CONVERSE_STREAM), ("content-type", "application/json"),
                ("x-fake-lockstep", stream_id), ("x-fake-lockstep-timeout-ms", "120000"),
                ("x-fake-chunks", str(chunks)), ("x-fake-chunk-pad", str(pad)),
            ])
            conn.send_data(sid, HI, end_stream=True)
        writer.write(conn.data_to_send())
        try:
            while not ended.issuperset(mine):
                data = await reader.read(65536)
                assert data, "the sidecar closed the connection"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        statuses[streams[event.stream_id]] = dict(event.headers)[":status"]
                    elif isinstance(event, h2.events.DataReceived):
                        received[streams[event.stream_id]] += len(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                        ended.add(streams[event.stream_id])
                writer.write(conn.data_to_send())
                await writer.drain()
        finally:
            writer.close()

    async def all_streams() -> list:
        # Six connections of about 85 streams, as httpx would carry them.
        return await asyncio.gather(*(connection(ids[k::6]) for k in range(6)), return_exceptions=True)

    def all_past_their_fifth_event() -> bool:
        return all(n > (chunks - 1) * pad for n in list(received.values()))

    peak, results = peak_before_the_last_event(sidecar, fake_aws_h2, ids, all_streams(), all_past_their_fifth_event)
    assert [r for r in results if r is not None] == []
    assert set(statuses.values()) == {"200"} and len(statuses) == len(ids)
    assert all(n > chunks * pad for n in received.values())
    assert all(fake_aws_h2.stream(i)["finished"] for i in ids)
    assert {r["http_version"] for r in fake_aws_h2.requests()} == {"2"}
    assert peak < INJECTED_LIMIT_MIB * 0.9, f"peak RSS {peak:.1f} MiB"


def peak_before_the_last_event(sidecar, fake_aws, ids, streams, all_past_their_fifth_event) -> tuple[float, list]:
    """Runs ``streams`` (six-event lockstep answers, ``ids``) and lets each
    through to its fifth event: the sidecar's peak RSS then, and the
    streams' results once all are let through to their end."""
    with concurrent.futures.ThreadPoolExecutor(1) as runner, concurrent.futures.ThreadPoolExecutor(16) as control:
        outcome = runner.submit(asyncio.run, streams)
        list(control.map(lambda i: fake_aws.post("/stream/release", {"stream_id": i, "count": 4}), ids))
        # Polled until every stream is past its fifth event, or they ended.
        wait_for(lambda: outcome.done() or all_past_their_fifth_event(), timeout=120, what="every fifth event")
        assert not outcome.done(), f"the streams ended early: {outcome.result()[:3]}"
        peak = peak_rss_mib(sidecar.proc.pid)
        list(control.map(fake_aws.release, ids))
        results = outcome.result(timeout=120)
    print(f"\npeak RSS {peak:.1f} MiB")
    return peak, results


def test_http2_clients_that_stop_reading_small_events_stay_under_the_memory_limit(start_sidecar, irsa_env, fake_aws):
    # Token events arrive one by one, each read alone into a buffer that
    # the event, queued for a client that has stopped reading, keeps
    # alive: 16 KiB queued for a stream kept about forty 8 KiB buffers.
    # HTTP/2 clients grant large windows (httpx 16 MiB), so nothing stops
    # the queue filling: 512 such streams took the sidecar to 141 MiB.
    sidecar = start_sidecar({**irsa_env, **shipped_env()})
    host, port = sidecar.proxy.removeprefix("http://").split(":")
    run = uuid.uuid4().hex[:8]
    ids = [f"h2-unread-{run}-{i}" for i in range(512)]
    window = 16 * 1024 * 1024
    sockets = []
    try:
        for first in range(0, len(ids), 128):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, int(port)))
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
            conn.increment_flow_control_window(window)
            for stream_id in ids[first:first + 128]:
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, [
                    (":method", "POST"), (":scheme", "http"), (":authority", f"{host}:{port}"),
                    (":path", CONVERSE_STREAM),
                    ("content-type", "application/json"), ("x-fake-stream-id", stream_id),
                    ("x-fake-chunks", "3000"), ("x-fake-chunk-pad", "300"), ("x-fake-chunk-delay-ms", "20"),
                ])
                conn.send_data(sid, HI, end_stream=True)
            s.sendall(conn.data_to_send())
            sockets.append(s)  # never read

        def all_sent(events: int) -> bool:
            streams = {r["stream_id"]: r for r in fake_aws.get("/streams")}
            return all(streams.get(i, {}).get("chunks_sent", 0) >= events for i in ids)

        # The fake's writes never wait here: the kernel takes megabytes of
        # what the sidecar leaves unread. 300 events (about 120 KB, six
        # seconds) are three times what a client's socket and a stream's
        # queue take; the sidecar reads each as it comes until then.
        wait_for(lambda: all_sent(300), timeout=50, interval=0.5, what="every stream to send 300 events")
        assert_peak_under_the_limit(sidecar)
    finally:
        for s in sockets:
            s.close()


def test_the_budgets_show_what_they_hold_and_get_it_all_back(start_sidecar, irsa_env, fake_aws):
    # A full budget refuses (a body is told to retry, an answer goes
    # uncounted); the gauges show how near each is before that, and that
    # everything taken is given back once its request is over.
    budget = 1024 * 1024
    sidecar = start_sidecar({
        **irsa_env,
        "BEDROCK_BROKER_REQUEST_BODY_BUDGET": str(budget),
        "BEDROCK_BROKER_MAX_BODY_BYTES": str(budget),
        "BEDROCK_BROKER_BODY_BUDGET_WAIT": "0s",
    })

    def used(name: str) -> float | None:
        return sidecar.metric("bedrock_broker_memory_budget_used_bytes", {"budget": name})

    assert sidecar.metric("bedrock_broker_memory_budget_limit_bytes", {"budget": "request_bodies"}) == budget
    assert sidecar.metric("bedrock_broker_memory_budget_limit_bytes", {"budget": "usage_taps"}) == 16 * 1024 * 1024
    assert (used("request_bodies"), used("usage_taps")) == (0, 0)

    host, port = sidecar.proxy.removeprefix("http://").rsplit(":", 1)
    declared = 600 * 1024
    with socket.create_connection((host, int(port)), timeout=30) as upload:
        upload.sendall(
            f"POST {CONVERSE} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        # hyper sends 100 Continue once the proxy reads the body, after it
        # reserved the declared length.
        assert upload.recv(64).startswith(b"HTTP/1.1 100 Continue")
        assert used("request_bodies") == declared
        # A body that does not fit in what is left is refused: what the
        # gauge warned of.
        big = requests.post(sidecar.url(CONVERSE), data=b"x" * (budget - declared + 1), timeout=30)
        assert (big.status_code, big.headers["x-bedrock-broker-error"]) == (503, "overloaded")
    # The client went away mid-body: its room comes back.
    wait_for(lambda: used("request_bodies") == 0, timeout=10, what="the abandoned body's room back")

    # An event stream's tap keeps its last messages until the end.
    pad, chunks = 240_000, 6
    stream_id = f"budget-gauge-{uuid.uuid4().hex[:8]}"
    received = 0
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(
            (
                f"POST {CONVERSE_STREAM} HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nContent-Type: application/json\r\nConnection: close\r\n"
                f"x-fake-lockstep: {stream_id}\r\nx-fake-lockstep-timeout-ms: 60000\r\n"
                f"x-fake-chunks: {chunks}\r\nx-fake-chunk-pad: {pad}\r\n"
                f"Content-Length: {len(HI)}\r\n\r\n"
            ).encode()
            + HI
        )
        fake_aws.post("/stream/release", {"stream_id": stream_id, "count": chunks - 2})
        deadline = time.monotonic() + 60
        while received <= (chunks - 1) * pad:
            assert time.monotonic() < deadline, f"{received} bytes of the stream"
            data = s.recv(1 << 20)
            assert data, f"the stream ended after {received} bytes"
            received += len(data)
        # Past its fifth event: the tap holds at least the last two.
        holding = used("usage_taps")
        print(f"\nthe tap holds {holding:.0f} bytes")
        assert 2 * pad <= holding <= 16 * 1024 * 1024
        fake_aws.release(stream_id)
        while data := s.recv(1 << 20):
            received += len(data)
    assert received > chunks * pad
    wait_for(lambda: used("usage_taps") == 0, timeout=10, what="the tap's room back")
    assert fake_aws.stream(stream_id)["finished"]
