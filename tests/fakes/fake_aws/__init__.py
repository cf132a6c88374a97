"""Fake AWS STS + Amazon Bedrock for bedrock-broker's end-to-end tests.

One process serves two (or three) loopback ports that share in-memory state
(``state.py``):

* a fake **STS** (plain HTTP, ``sts.py``): ``AssumeRoleWithWebIdentity``
  (unsigned), ``AssumeRole`` (role chaining) and ``GetCallerIdentity`` (both
  SigV4, service ``sts``), plus the JSON control API under ``/_control``
  (``control.py``);
* a fake **Bedrock** runtime (HTTP, or HTTPS with ``--tls-cert/--tls-key``,
  ``bedrock.py``): ``converse``, ``converse-stream``, ``invoke``,
  ``invoke-with-response-stream`` and the OpenAI-compatible ``/openai/v1``
  routes;
* with ``--h2-port``, a fake Bedrock **HTTP/2** listener (``bedrock_h2.py`` on
  ``h2server.py``; TLS with ALPN ``h2`` when a certificate is given, else
  cleartext h2c with prior knowledge) that serves only
  ``InvokeModelWithBidirectionalStream``, full duplex: each input frame's
  chained event-stream signature is verified as it arrives and answered at
  once with an echo event.

The STS port also serves a fake EC2 instance metadata service (IMDSv2) under
``/imds/`` (``imds.py``) and a fake container-credentials endpoint (ECS / EKS
Pod Identity agent) under ``/ecs/`` (``ecs.py``).  Both hand out credentials
minted like STS ones (``credentials.py``), so fake Bedrock accepts them.

Every Bedrock request is authenticated first (the HTTP/2 listener only
routes before that, answering 404 for anything but its one route).  SigV4
signatures are verified independently with botocore (``sigv4.py``), so that
the broker's Rust signer is checked by a different implementation; the
bidirectional stream's frame signatures are checked by ``EventStreamVerifier``
(``eventstream_signing.py``), written with hashlib/hmac.

``__main__.py`` is the command line (``python tests/fakes/fake_aws ...``);
``tests/fakes/README.md`` documents the control API.
"""

import os

# Recorded before the slow third-party imports, for --exit-with-parent.  However
# the fake is started, this runs first: __main__.py imports the package before
# anything else of its own.
STARTING_PARENT_PID = os.getppid()

from .eventstream_signing import EventStreamVerifier, event_string_to_sign  # noqa: E402
from .sigv4 import SigCheck, verify_sigv4  # noqa: E402
from .state import FakeState  # noqa: E402

__all__ = ["STARTING_PARENT_PID", "EventStreamVerifier", "FakeState", "SigCheck", "event_string_to_sign", "verify_sigv4"]
