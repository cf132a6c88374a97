"""The README's run command (`make demo`) must work on a fresh machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_tour_runs_end_to_end(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "demo.py"), "--once",
         "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verified=True" in out.stdout
    assert "verified=False" not in out.stdout
    assert 'bedrock_broker_credential_refreshes_total{result="success"}' in out.stdout
    # Its token, logs and fake's state go with it: nothing left in /tmp.
    assert list(tmp_path.iterdir()) == []
