"""Starting and stopping the fake: the ready line and ``--exit-with-parent``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import FAKE, Fake, start_fake, stop_fake, wait_until


def test_ready_line_matches_ready_file(fake: Fake):
    info = json.loads(fake.ready_line)
    assert info == json.loads(fake.ready_file.read_text())
    assert info["sts"].startswith("http://127.0.0.1:")
    assert info["bedrock"].startswith("http://127.0.0.1:")
    assert info["control"] == info["sts"] + "/_control"
    assert info["bedrock_h2"].startswith("http://127.0.0.1:")  # h2c: the fixture passes --h2-port 0


def test_ready_line_has_no_h2_url_without_h2_port(tmp_path: Path):
    f = start_fake(tmp_path)
    try:
        assert set(json.loads(f.ready_line)) == {"sts", "bedrock", "control"}
    finally:
        stop_fake(f)


def _process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting reaping counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_exit_with_parent(tmp_path: Path):
    ready = tmp_path / "ready.json"
    # The launcher waits until the fake is ready (so the fake has recorded its parent), then exits.
    launcher = (
        "import os, subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, {str(FAKE)!r}, '--exit-with-parent', '--ready-file', {str(ready)!r},"
        f" '--log-file', {str(tmp_path / 'log')!r}], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "deadline = time.monotonic() + 20\n"
        f"while not os.path.exists({str(ready)!r}) and time.monotonic() < deadline and p.poll() is None:\n"
        "    time.sleep(0.02)\n"
        "print(p.pid)\n"
    )
    out = subprocess.run([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True, check=True, timeout=30)
    pid = int(out.stdout)
    try:
        assert ready.exists()
        wait_until(lambda: _process_gone(pid), timeout=10, what="orphaned fake to exit")
        assert "parent" in (tmp_path / "log").read_text()
    finally:
        if not _process_gone(pid):
            os.kill(pid, 9)
