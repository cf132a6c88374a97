"""The fake's command line: start every listener, announce readiness, run until SIGTERM/SIGINT.

Usage::

    python tests/fakes/fake_aws --sts-port 0 --bedrock-port 0 [--h2-port 0] \\
        [--tls-cert F --tls-key F] [--region us-east-1] [--ready-file PATH]

(or ``python -m fake_aws ...`` with ``tests/fakes`` on ``sys.path``).

When every port listens, one JSON line is printed to stdout (and written to
``--ready-file``)::

    {"sts": "http://127.0.0.1:P1", "bedrock": "http://127.0.0.1:P2",
     "control": "http://127.0.0.1:P1/_control",
     "bedrock_h2": "https://127.0.0.1:P3"}

``bedrock_h2`` is present only with ``--h2-port`` (``http://`` for h2c);
with ``--tls-cert``, ``sts_tls`` is STS over HTTPS too (same state).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import sys
from typing import Optional

if not __package__:
    # Run as `python tests/fakes/fake_aws`, Python puts this directory on
    # sys.path, which would make the package's modules importable as top-level
    # ones (shadowing any library of the same name).  The package, and the
    # eventstream.py beside it, are meant to be imported from one level up.
    _HERE = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0]) == _HERE:
        sys.path[0] = os.path.dirname(_HERE)

import fake_aws  # noqa: E402  (first: it records the parent PID before the slow imports)
from aiohttp import web  # noqa: E402
from fake_aws.bedrock import build_bedrock_app  # noqa: E402
from fake_aws.bedrock_h2 import handle_h2_request  # noqa: E402
from fake_aws.control import add_control_routes  # noqa: E402
from fake_aws.ecs import ECS_PREFIX, ecs_handler  # noqa: E402
from fake_aws.h2relay import H2Relay  # noqa: E402
from fake_aws.h2server import H2Listener  # noqa: E402
from fake_aws.imds import IMDS_PREFIX, imds_handler  # noqa: E402
from fake_aws.state import STATE_KEY, FakeState  # noqa: E402
from fake_aws.sts import sts_handler  # noqa: E402

log = logging.getLogger("fake_aws")


def build_sts_app(state: FakeState) -> web.Application:
    """The STS + control application, plus the fake IMDS (``/imds/``) and container credentials (``/ecs/``)."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE_KEY] = state
    add_control_routes(app)
    app.router.add_route("*", IMDS_PREFIX + "/{tail:.*}", imds_handler)
    app.router.add_route("*", ECS_PREFIX + "/{tail:.*}", ecs_handler)
    app.router.add_route("POST", "/", sts_handler)
    app.router.add_route("GET", "/", sts_handler)
    return app


def bind_loopback(port: int) -> socket.socket:
    """A listening-ready TCP socket on 127.0.0.1:port (0 = ephemeral)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def tls_context(cert: str, key: str, alpn: tuple = ("http/1.1",)) -> ssl.SSLContext:
    """Server TLS context offering ``alpn`` (HTTP/1.1 only by default)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def write_ready_file(path: str, payload: str) -> None:
    """Atomically write the ready JSON (tmp file + rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(payload + "\n")
    os.replace(tmp, path)


async def start_site(app: web.Application, sock: socket.socket, ssl_ctx: Optional[ssl.SSLContext]) -> web.AppRunner:
    """Run ``app`` on ``sock``; handler cancellation lets streams see disconnects."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ssl_ctx, backlog=1024).start()
    return runner


async def start_h2_listener(state: FakeState, args: argparse.Namespace, bedrock_url: str) -> tuple:
    """``(listener, base URL)`` of the HTTP/2 port: TLS + ALPN with ``--tls-cert``, else h2c."""
    state.h2_relay = H2Relay(bedrock_url)
    sock = bind_loopback(args.h2_port)
    ssl_ctx = tls_context(args.tls_cert, args.tls_key, alpn=("h2", "http/1.1")) if args.tls_cert else None
    listener = H2Listener(lambda stream: handle_h2_request(state, stream))
    await listener.start(sock, ssl_ctx)
    return listener, f"{'https' if ssl_ctx else 'http'}://127.0.0.1:{sock.getsockname()[1]}"


async def serve(args: argparse.Namespace) -> None:
    """Start the servers, announce readiness, run until SIGTERM/SIGINT."""
    if args.ready_file and os.path.exists(args.ready_file):
        os.unlink(args.ready_file)  # never let a poller see a previous run's ports
    state = FakeState(region=args.region)
    ssl_ctx = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    sts_sock, bedrock_sock = bind_loopback(args.sts_port), bind_loopback(args.bedrock_port)
    runners = [
        await start_site(build_sts_app(state), sts_sock, None),
        await start_site(build_bedrock_app(state), bedrock_sock, ssl_ctx),
    ]
    sts_url = f"http://127.0.0.1:{sts_sock.getsockname()[1]}"
    scheme = "https" if ssl_ctx else "http"
    urls = {
        "sts": sts_url,
        "bedrock": f"{scheme}://127.0.0.1:{bedrock_sock.getsockname()[1]}",
        "control": f"{sts_url}/_control",
    }
    if ssl_ctx:
        # STS over TLS as well, sharing the state: AWS_CA_BUNDLE is trusted
        # on the way to STS, not only to Bedrock.
        sts_tls_sock = bind_loopback(0)
        runners.append(await start_site(build_sts_app(state), sts_tls_sock, ssl_ctx))
        urls["sts_tls"] = f"https://127.0.0.1:{sts_tls_sock.getsockname()[1]}"
    h2_listener = None
    if args.h2_port is not None:
        h2_listener, urls["bedrock_h2"] = await start_h2_listener(state, args, urls["bedrock"])
    ready = json.dumps(urls)
    print(ready, flush=True)
    if args.ready_file:
        write_ready_file(args.ready_file, ready)
    log.info("ready: %s (region %s)", ready, args.region)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(watch_parent(stop)) if args.exit_with_parent else None
    await stop.wait()
    if watchdog:
        watchdog.cancel()
    log.info("shutting down")
    if h2_listener is not None:
        await h2_listener.close()
        await state.h2_relay.close()
    for runner in runners:
        await runner.cleanup()


async def watch_parent(stop: asyncio.Event) -> None:
    """Set ``stop`` once the process that started us has gone (we got reparented)."""
    parent = fake_aws.STARTING_PARENT_PID
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    log.info("parent %d exited; stopping", parent)
    stop.set()


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(prog="fake_aws", description=fake_aws.__doc__.split("\n\n")[0])
    p.add_argument("--sts-port", type=int, default=0)
    p.add_argument("--bedrock-port", type=int, default=0)
    p.add_argument(
        "--h2-port", type=int, default=None,
        help="also serve Bedrock over HTTP/2 on this port (0 = ephemeral; TLS + ALPN with --tls-cert, "
        "else h2c with prior knowledge): bidirectional streams natively, every other operation "
        "through the HTTP/1.1 app",
    )
    p.add_argument("--tls-cert", help="PEM certificate chain: serve Bedrock (and a second STS port) over HTTPS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--ready-file", help="also write the ready JSON here (atomically)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO (one line per request), WARNING")
    p.add_argument("--log-file", help="append logs here instead of stderr")
    p.add_argument("--exit-with-parent", action="store_true", help="exit when the process that started this one dies")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    return args


def main(argv: Optional[list] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="fake_aws %(asctime)s %(levelname)s %(message)s",
        **({"filename": args.log_file} if args.log_file else {"stream": sys.stderr}),
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
