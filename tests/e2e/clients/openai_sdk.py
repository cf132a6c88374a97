"""The OpenAI SDK in an injected pod: no code at all (OPENAI_BASE_URL, OPENAI_API_KEY)."""

from _report import capture, guarded, report


def main():
    # --- snippet ---
    from openai import OpenAI

    client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY come from the injector
    reply = client.chat.completions.create(
        model="openai.gpt-oss-120b-1:0",
        messages=[{"role": "user", "content": "Hello"}],
    )
    print(reply.choices[0].message.content)
    # --- end snippet ---
    import openai

    stream = client.chat.completions.create(
        model="openai.gpt-oss-120b-1:0",
        messages=[{"role": "user", "content": "stream"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    denied = capture(lambda: client.chat.completions.create(
        model="openai.fake-denied", messages=[{"role": "user", "content": "x"}]))
    report(reply=reply.choices[0].message.content, chunks=chunks, denied=denied,
           denied_is_own_type=denied["error"] == f"{openai.PermissionDeniedError.__module__}.PermissionDeniedError")


guarded(main)
