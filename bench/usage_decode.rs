//! What reading token usage from a response costs: the same bodies
//! through the usage tap as Bedrock sends them plain and gzipped.
//! Run with `cargo bench --bench usage_decode`; results in
//! docs/performance.md.

// A benchmark panics on setup errors and prints the sizes it measures.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::hint::black_box;
use std::io::Write;

use bedrock_broker::proxy::bench_tap;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue};
use usage_support::event;

#[path = "../tests/usage_support/mod.rs"]
mod usage_support;

/// `n` words of text that compresses about as well as a model's prose
/// (gzip: about a third), not as well as one word repeated.
fn prose(n: usize, seed: &mut u64) -> Vec<String> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 2 + (*seed >> 60) as usize;
            (0..len)
                .map(|i| (b'a' + ((*seed >> (8 * (i % 7) + 3)) % 26) as u8) as char)
                .collect()
        })
        .collect()
}

/// A Converse answer of `words` words, usage at the end as Bedrock puts it.
fn converse(words: usize) -> Vec<u8> {
    let text = prose(words, &mut 7).join(" ");
    format!(r#"{{"output":{{"message":{{"role":"assistant","content":[{{"text":"{text}"}}]}}}},"stopReason":"end_turn","usage":{{"inputTokens":12,"outputTokens":{words},"totalTokens":{}}},"metrics":{{"latencyMs":812}}}}"#, words + 12).into_bytes()
}

/// An OpenAI-compatible SSE stream of `n` chunks, the usage chunk last;
/// with `null_usage`, every other chunk says `"usage":null`, as OpenAI's
/// API does when a client asks for usage.
fn sse(n: usize, null_usage: bool) -> Vec<u8> {
    let usage = if null_usage { r#","usage":null"# } else { "" };
    let mut out = Vec::new();
    for word in prose(n, &mut 11) {
        out.extend_from_slice(format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"openai.gpt-oss-120b-1:0\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" {word}\"}},\"finish_reason\":null}}]{usage}}}\n\n").as_bytes());
    }
    out.extend_from_slice(format!("data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n", n + 12).as_bytes());
    out
}

/// A ConverseStream answer of `n` text deltas, framed by
/// aws-smithy-eventstream, the metadata event with the usage last.
fn converse_stream(n: usize) -> Vec<u8> {
    let mut out = event("messageStart", r#"{"role":"assistant"}"#.to_owned());
    for word in prose(n, &mut 13) {
        out.extend(event(
            "contentBlockDelta",
            format!(r#"{{"contentBlockIndex":0,"delta":{{"text":" {word}"}}}}"#),
        ));
    }
    out.extend(event(
        "contentBlockStop",
        r#"{"contentBlockIndex":0}"#.to_owned(),
    ));
    out.extend(event(
        "messageStop",
        r#"{"stopReason":"end_turn"}"#.to_owned(),
    ));
    out.extend(event(
        "metadata",
        format!(r#"{{"usage":{{"inputTokens":12,"outputTokens":{n},"totalTokens":{}}},"metrics":{{"latencyMs":812}}}}"#, n + 12),
    ));
    out
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

/// Frames as hyper hands them on: `size`-byte pieces.
fn frames(body: &[u8], size: usize) -> Vec<Bytes> {
    body.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn headers(content_type: &str, encoding: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_str(content_type).unwrap());
    if let Some(e) = encoding {
        h.insert("content-encoding", HeaderValue::from_str(e).unwrap());
    }
    h
}

fn usage(c: &mut Criterion) {
    let cases = [
        (
            "converse 1 KB",
            "application/json",
            converse(120),
            16 * 1024,
        ),
        (
            "converse 64 KB",
            "application/json",
            converse(10_000),
            16 * 1024,
        ),
        (
            "sse 2,000 chunks",
            "text/event-stream",
            sse(2_000, false),
            512,
        ),
        (
            "sse 2,000 chunks, usage null in each",
            "text/event-stream",
            sse(2_000, true),
            512,
        ),
        (
            "converse-stream 2,000 events",
            "application/vnd.amazon.eventstream",
            converse_stream(2_000),
            512,
        ),
    ];
    let mut group = c.benchmark_group("usage tap");
    for (name, ct, body, frame) in cases {
        let zipped = gzip(&body);
        eprintln!(
            "{name}: {} bytes plain, {} gzipped",
            body.len(),
            zipped.len()
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        for (label, encoding, bytes) in [("identity", None, &body), ("gzip", Some("gzip"), &zipped)]
        {
            let h = headers(ct, encoding);
            let f = frames(bytes, frame);
            assert!(bench_tap(&h, &f).1 > 0, "{name} {label}: no usage found");
            group.bench_function(format!("{name}, {label}"), |b| {
                b.iter(|| black_box(bench_tap(&h, black_box(&f))))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, usage);
criterion_main!(benches);
