//! What a usage tap says it holds, against what it really allocates.
//!
//! All taps draw what they hold from one budget (src/proxy/usage/room.rs),
//! so a tap that counts less than it allocates lets the sidecar past the
//! budget, and one that counts far more turns answers away for nothing.
//! Each answer here is fed frame by frame, and after every frame the
//! bytes allocated since the tap was opened (dhat's count of live heap
//! bytes) must be within what the tap reports, and not far below it.

// Test code: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::Write;

use bedrock_broker::proxy::TapBench;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use usage_support::event;

mod usage_support;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// The tap itself and what it boxes (a scanner, its ring of messages)
/// are allocated when it opens and are not part of what it reports.
const FIXED: usize = 2 * 1024;

fn headers(content_type: &str, encoding: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_str(content_type).unwrap());
    if let Some(e) = encoding {
        h.insert("content-encoding", HeaderValue::from_str(e).unwrap());
    }
    h
}

/// A ConverseStream answer: `n` text events of about `size` bytes, then
/// the metadata event with usage 3 in, 4 out.
fn converse_stream(n: usize, size: usize) -> Vec<u8> {
    converse_stream_of(&vec![size; n])
}

/// A ConverseStream answer of text events of about `sizes` bytes.
fn converse_stream_of(sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    for size in sizes {
        let text = "x".repeat(*size);
        out.extend(event(
            "contentBlockDelta",
            format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"{text}"}}}}"#),
        ));
    }
    out.extend(event(
        "metadata",
        r#"{"usage":{"inputTokens":3,"outputTokens":4}}"#.to_owned(),
    ));
    out
}

/// An OpenAI-style SSE stream of `n` chunks of about `size` bytes, usage last.
fn sse(n: usize, size: usize) -> Vec<u8> {
    let text = "x".repeat(size);
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend(
            format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n").bytes(),
        );
    }
    out.extend(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n");
    out
}

/// A Converse answer of about `size` bytes, usage at its end.
fn converse(size: usize) -> Vec<u8> {
    format!(
        r#"{{"output":{{"message":{{"content":[{{"text":"{}"}}]}}}},"usage":{{"inputTokens":3,"outputTokens":4}}}}"#,
        "x".repeat(size)
    )
    .into_bytes()
}

fn deflate(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

/// Feeds `pieces` to a tap, each as a frame that arrives and is dropped
/// once passed on, as the proxy does; after each, what the tap reports
/// is checked against what it has allocated (or kept of the frames).
fn check(name: &str, h: &HeaderMap, pieces: &[&[u8]]) {
    let bench = TapBench::new().unwrap();
    let base = dhat::HeapStats::get().curr_bytes;
    let mut tap = bench.open(h);
    // A decoder is allocated as the tap opens: counted from then on.
    let live = dhat::HeapStats::get().curr_bytes.saturating_sub(base);
    assert!(
        live <= tap.held() + FIXED,
        "{name}, opened: {live} bytes allocated, {} reported",
        tap.held()
    );
    for (i, piece) in pieces.iter().enumerate() {
        let frame = Bytes::copy_from_slice(piece);
        tap.observe(&frame);
        drop(frame);
        let live = dhat::HeapStats::get().curr_bytes.saturating_sub(base);
        let held = tap.held();
        assert!(
            live <= held + FIXED,
            "{name}, frame {i}: {live} bytes allocated, {held} reported"
        );
        assert!(
            held <= 2 * live + 8 * 1024,
            "{name}, frame {i}: {held} bytes reported, {live} allocated"
        );
    }
    tap.finish();
    assert_eq!(bench.tokens(), (3, 4), "{name}: usage not read");
}

fn cut(body: &[u8], frame: usize) -> Vec<&[u8]> {
    body.chunks(frame).collect()
}

#[test]
fn a_tap_reports_what_it_allocates() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let es = headers("application/vnd.amazon.eventstream", None);
    for (n, size) in [(200, 300), (50, 5_000), (8, 100_000), (6, 240_000)] {
        let body = converse_stream(n, size);
        // One message to a frame, as Bedrock sends them.
        let one = converse_stream(1, size).len() - converse_stream(0, size).len();
        let mut frames = cut(&body[..n * one], one);
        frames.push(&body[n * one..]);
        check(&format!("events of {size} B, one a frame"), &es, &frames);
        for frame in [512, 16 * 1024, 64 * 1024] {
            let name = format!("events of {size} B in {frame} B frames");
            check(&name, &es, &cut(&body, frame));
        }
        let gz = headers("application/vnd.amazon.eventstream", Some("gzip"));
        let name = format!("events of {size} B, gzipped, in 16 KiB frames");
        check(&name, &gz, &cut(&gzip(&body), 16 * 1024));
    }
    // A message shorter than the start of the next one in the same frame:
    // what was split off stays in front of the buffer as it grows.
    let body = converse_stream_of(&[50_000, 200_000].repeat(4));
    for frame in [16 * 1024, 64 * 1024, 120 * 1024] {
        let name = format!("events of 50 and 200 KB in {frame} B frames");
        check(&name, &es, &cut(&body, frame));
    }
    let ss = headers("text/event-stream", None);
    let gz = headers("text/event-stream", Some("gzip"));
    for (n, size) in [(500, 100), (20, 50_000)] {
        let body = sse(n, size);
        for frame in [100, 4 * 1024, 16 * 1024] {
            check(
                &format!("SSE of {size} B in {frame} B frames"),
                &ss,
                &cut(&body, frame),
            );
        }
        let name = format!("SSE of {size} B, gzipped, in 1 KiB frames");
        check(&name, &gz, &cut(&gzip(&body), 1024));
    }
    // A gzip header may carry a name, a comment and an extra field of
    // 64 KiB each; a decoder that kept them held what the budget did not
    // see.
    let mut e = flate2::GzBuilder::new()
        .filename("n".repeat(60_000))
        .comment("c".repeat(60_000))
        .extra(vec![b'e'; 60_000])
        .write(Vec::new(), flate2::Compression::fast());
    e.write_all(&sse(20, 100)).unwrap();
    let named = e.finish().unwrap();
    check(
        "SSE gzipped with a long name and comment",
        &gz,
        &cut(&named, 16 * 1024),
    );
    let json = headers("application/json", None);
    let gz = headers("application/json", Some("gzip"));
    let zl = headers("application/json", Some("deflate"));
    for size in [2_000, 60_000, 1_000_000] {
        let body = converse(size);
        for frame in [1_000, 16 * 1024] {
            check(
                &format!("JSON of {size} B in {frame} B frames"),
                &json,
                &cut(&body, frame),
            );
        }
        let name = format!("JSON of {size} B, gzipped, in 16 KiB frames");
        check(&name, &gz, &cut(&gzip(&body), 16 * 1024));
        let name = format!("JSON of {size} B, deflated, in 16 KiB frames");
        check(&name, &zl, &cut(&deflate(&body), 16 * 1024));
    }
}
