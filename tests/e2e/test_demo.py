"""The README's run command (`make demo`) must work on a fresh machine."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

from conftest import ROOT


def test_demo_tour_runs_end_to_end(tmp_path):
    # Port 0: any free ports, read back from the sidecar's start-up line
    # (nothing to collide with, unlike ports picked before the start).
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "demo.py"), "--once",
         "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    bound = re.search(r"proxy http://127\.0\.0\.1:(\d+), admin http://127\.0\.0\.1:(\d+)", out.stdout)
    assert bound and "0" not in bound.groups(), out.stdout
    assert "verified=True" in out.stdout
    assert "verified=False" not in out.stdout
    assert 'bedrock_broker_credential_refreshes_total{result="success"}' in out.stdout
    # Its token, logs and fake's state go with it: nothing left in /tmp.
    assert list(tmp_path.iterdir()) == []


class ReadyHandler(http.server.BaseHTTPRequestHandler):
    """Another sidecar's admin server: ready, but not the demo's."""

    def do_GET(self):  # noqa: N802 - the http.server name
        body = b'{"ready":true,"mode":"sigv4"}'
        self.send_response(200 if self.path == "/readyz" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


@contextlib.contextmanager
def held_port(how: str):
    """Holds a loopback port the way another process would: a socket that
    listens but never answers, or a ready sidecar's /readyz. Yields its
    port; the port is released on exit."""
    if how == "socket":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            yield s.getsockname()[1]
        return
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ReadyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# Ephemeral ports, not 9787/9788: a demo or e2e run elsewhere on the
# machine must neither break this test nor be broken by it.
@pytest.mark.parametrize("taken, how", [("proxy", "socket"), ("admin", "socket"), ("admin", "ready")])
def test_demo_stops_clearly_when_its_port_is_taken(tmp_path, taken, how):
    with held_port(how) as port:
        # The other port any free one (0), which the hint must keep.
        listen = port if taken == "proxy" else 0
        admin = port if taken == "admin" else 0
        out = subprocess.run(
            [sys.executable, str(ROOT / "hack" / "demo.py"), "--once",
             "--listen", f"127.0.0.1:{listen}", "--admin-listen", f"127.0.0.1:{admin}"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)},
        )
    output = out.stdout + out.stderr
    assert out.returncode != 0, output
    assert "Traceback" not in output, output
    # Another process's /readyz is not taken for the demo's sidecar's.
    assert "ready:" not in out.stdout, output
    assert f"127.0.0.1:{port} is already in use" in output, output
    # ... and it says how to get past it.
    assert "BEDROCK_BROKER_LISTEN" in output, output
    assert "--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0" in output, output
    if taken == "admin":
        assert "BEDROCK_BROKER_LISTEN=127.0.0.1:0 " in output, output
    else:
        assert "BEDROCK_BROKER_ADMIN_LISTEN=127.0.0.1:0 " in output, output
