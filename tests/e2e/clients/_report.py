"""What every client script prints last: one ``RESULT {json}`` line.

The scripts run as the app of an injected pod would (the environment is
exactly what ``bedrock-broker inject`` gave the pod's container), so they
cannot be told anything by the test but through that line.
"""

from __future__ import annotations

import json
import traceback

DENIED_MODEL = "anthropic.fake-denied-v1:0"  # the fake answers 403 AccessDeniedException


def error_name(exc: BaseException) -> str:
    """``module.Class`` of an exception, plus the AWS error code when it has one."""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    code = getattr(exc, "response", None)
    if isinstance(code, dict) and "Error" in code:
        name += f":{code['Error'].get('Code')}"
    return name


def capture(fn) -> dict:
    """Runs ``fn``; the error it raises (it should) as ``{"error": ..., "detail": ...}``."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test checks which one
        return {"error": error_name(exc), "detail": str(exc)[:500]}
    return {"error": None}


def report(**fields) -> None:
    print("RESULT " + json.dumps(fields, default=str), flush=True)


def guarded(main) -> None:
    """Runs ``main``; an unexpected failure is reported, not hidden."""
    try:
        main()
    except Exception as exc:  # noqa: BLE001
        report(crashed=error_name(exc), traceback=traceback.format_exc()[-3000:])
        raise SystemExit(1)
