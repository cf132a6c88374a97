#!/usr/bin/env python3
"""See the whole bedrock-broker flow locally, without an AWS account.

    projected token file -> fake STS (AssumeRoleWithWebIdentity)
        -> bedrock-broker sidecar (refresher + signing proxy)
        -> fake Bedrock (verifies every SigV4 signature with botocore)
        -> streamed answer back to the OpenAI SDK and boto3

Run it with `make demo`. It keeps the sidecar running afterwards so you can
try it with curl; Ctrl-C stops everything. `--once` exits after the tour.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINARY = Path(os.environ.get("BEDROCK_BROKER_BIN", ROOT / "target" / "debug" / "bedrock-broker"))
ROLE_ARN = "arn:aws:iam::123456789012:role/demo-chat-app"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # noqa: BLE001 - still starting
            pass
        time.sleep(0.05)
    raise SystemExit(f"demo: timed out waiting for {what}")


def sidecar_failed(log: Path, why: str, listen: str, admin_listen: str) -> int:
    """Says why the demo's own sidecar is not serving, and what to do."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    print(f"demo: {why}; its log ({log}) ends:", file=sys.stderr)
    for line in text.splitlines()[-3:] or ["(empty)"]:
        print(f"   {line}", file=sys.stderr)
    taken = re.search(r"cannot listen on (\S+) for the .*Address already in use", text)
    if taken:
        def other(address: str) -> str:
            host, _, port = address.rpartition(":")
            # Port 0 (any free port) cannot be taken: it stays.
            return f"{host}:{int(port) + 10}" if port.isdigit() and port != "0" else address
        print(
            f"demo: {taken.group(1)} is already in use, perhaps by another demo or a sidecar started by hand.\n"
            f"   Stop that process, or run the demo on other ports (now {listen} and {admin_listen}):\n"
            f"   BEDROCK_BROKER_LISTEN={other(listen)} BEDROCK_BROKER_ADMIN_LISTEN={other(admin_listen)} make demo\n"
            f"   (or hack/demo.py --listen {other(listen)} --admin-listen {other(admin_listen)};\n"
            f"   port 0 takes any free one: hack/demo.py --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0)",
            file=sys.stderr,
        )
    return 1


def listening(log: Path) -> tuple[str, str] | None:
    """The (proxy, admin) addresses the sidecar's start-up line says it bound."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"sidecar listening proxy=(\S+) admin=(\S+)", text)
    return (found.group(1), found.group(2)) if found else None


def fake_token() -> str:
    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"aud": ["sts.amazonaws.com"], "iss": "https://oidc.demo.local", "sub": "system:serviceaccount:demo:chat-app", "exp": int(time.time()) + 86400}
    return f"{enc({'alg': 'RS256'})}.{enc(claims)}.ZGVtbw"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="exit after the tour instead of serving until Ctrl-C")
    parser.add_argument("--listen", default=os.environ.get("BEDROCK_BROKER_LISTEN", "127.0.0.1:9787"),
                        help="the sidecar's proxy address (default $BEDROCK_BROKER_LISTEN, else 127.0.0.1:9787; port 0 is any free port)")
    parser.add_argument("--admin-listen", default=os.environ.get("BEDROCK_BROKER_ADMIN_LISTEN", "127.0.0.1:9788"),
                        help="its admin address (default $BEDROCK_BROKER_ADMIN_LISTEN, else 127.0.0.1:9788; port 0 is any free port)")
    parser.add_argument("--lifetime", type=float, default=20.0, help="seconds the fake STS credentials live")
    args = parser.parse_args()

    import boto3
    import openai
    import requests
    from botocore import UNSIGNED
    from botocore.config import Config

    work = Path(tempfile.mkdtemp(prefix="bedrock-broker-demo-"))
    procs: list[subprocess.Popen] = []
    finished = False

    def stop_all(*_):
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    try:
        say("Starting a fake STS and a fake Bedrock (tests/fakes/fake_aws)")
        ready = work / "fake.json"
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "tests/fakes/fake_aws"), "--sts-port", "0", "--bedrock-port", "0", "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=open(work / "fake.log", "wb"),
        ))
        fake = wait_for(lambda: ready.exists() and ready.stat().st_size and json.loads(ready.read_text()), 30, "the fakes")
        requests.post(f"{fake['control']}/sts", json={"lifetime_seconds": args.lifetime}, timeout=5).raise_for_status()
        print(f"   STS:     {fake['sts']}\n   Bedrock: {fake['bedrock']}")

        say("Writing a projected service-account token, as the kubelet would")
        token = work / "token"
        token.write_text(fake_token())
        print(f"   {token}")

        say("Starting bedrock-broker sidecar: the IRSA variables, plus STS and Bedrock endpoints at the fakes")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_REGION": "us-east-1",
            "AWS_ROLE_ARN": ROLE_ARN,
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
            "AWS_ROLE_SESSION_NAME": "demo",
            "AWS_ENDPOINT_URL_STS": fake["sts"],
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake["bedrock"],
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
        }
        log = work / "sidecar.log"
        procs.append(subprocess.Popen(
            [str(BINARY), "sidecar", "--listen", args.listen, "--admin-listen", args.admin_listen],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
        ))
        sidecar = procs[-1]
        # Ready means the demo's own sidecar: alive, and it has called the
        # demo's own STS (it binds both ports before that), so the /readyz
        # that answers is its, not that of whatever else holds the port.
        # Where it listens is what its start-up line says (port 0 is any
        # free port); without that line (RUST_LOG=warn) the given addresses.
        any_port = args.listen.endswith(":0") or args.admin_listen.endswith(":0")
        deadline = time.monotonic() + 20
        while True:
            if sidecar.poll() is not None:
                return sidecar_failed(log, f"the sidecar exited (status {sidecar.returncode}) before it was ready", args.listen, args.admin_listen)
            bound = listening(log)
            if bound or not any_port:
                listen, admin_listen = bound or (args.listen, args.admin_listen)
                admin = f"http://{admin_listen}"
                proxy = f"http://{listen}"
                try:
                    calls = requests.get(f"{fake['control']}/sts/calls", timeout=5).json()
                    if calls and requests.get(f"{admin}/readyz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass  # still starting
            if time.monotonic() > deadline:
                why = "the sidecar was not ready within 20 s"
                if any_port and not bound:
                    why += " (with port 0 the demo reads the bound ports from its `listening` line, logged at info: is RUST_LOG set lower?)"
                return sidecar_failed(log, why, args.listen, args.admin_listen)
            time.sleep(0.05)
        print(f"   proxy {proxy}, admin {admin}")
        print(f"   ready: {requests.get(f'{admin}/readyz', timeout=5).text.strip()}")
        print(f"   STS saw {len(calls)} AssumeRoleWithWebIdentity call(s) for {calls[0].get('role_arn', ROLE_ARN)}")

        say("OpenAI Python SDK, streaming, through the proxy (no AWS code, placeholder API key)")
        client = openai.OpenAI(base_url=f"{proxy}/openai/v1", api_key="sk-not-used", max_retries=0)
        stream = client.chat.completions.create(
            model="openai.gpt-oss-20b-1:0",
            messages=[{"role": "user", "content": "Say hello from the demo"}],
            stream=True,
            extra_headers={"x-fake-chunks": "6", "x-fake-chunk-delay-ms": "250"},
        )
        print("   ", end="", flush=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()

        say("boto3 bedrock-runtime converse, with an inference-profile ARN as model id")
        # UNSIGNED: boto3 sends no credentials (it needs none); the sidecar signs.
        br = boto3.client(
            "bedrock-runtime", region_name="us-east-1", endpoint_url=proxy,
            config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}),
        )
        out = br.converse(
            modelId="arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0",
            messages=[{"role": "user", "content": [{"text": "Hi from boto3"}]}],
        )
        print("   " + out["output"]["message"]["content"][0]["text"])

        recs = requests.get(f"{fake['control']}/bedrock/requests", timeout=5).json()
        say("What the fake Bedrock verified (independently, with botocore)")
        for r in recs:
            print(f"   {r['method']} {r['raw_path'][:70]:70} auth={r['auth_kind']} key={r['access_key_id']} verified={r['verified']}")

        say("Metrics (admin port)")
        for line in requests.get(f"{admin}/metrics", timeout=5).text.splitlines():
            if line.startswith(("bedrock_broker_credentials_expiry", "bedrock_broker_credential_refreshes_total", "bedrock_broker_requests_total")):
                print("   " + line)

        if args.once:
            say("Done")
            finished = True
            return 0
        # Half the lifetime, less up to a fifth of it at random (the
        # refresh policy in docs/credentials.md).
        say("The sidecar keeps running; credentials refresh every %g-%g s. Try:" % (round(args.lifetime * 0.3, 1), round(args.lifetime * 0.5, 1)))
        print(f"""   curl -s {proxy}/openai/v1/chat/completions -H 'content-type: application/json' \\
        -d '{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"stream":true}}'
   curl -s {admin}/metrics | grep bedrock_broker_
   tail -f {log}
   Ctrl-C to stop.""")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        finished = True
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a process exited; stopping", file=sys.stderr)
        finished = False
        return 1
    except KeyboardInterrupt:
        # During the tour `finished` is still False: its logs may say why
        # it was slow to get anywhere.
        return 0
    finally:
        stop_all()
        # Logs help only when something went wrong.
        if finished:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
