//! Watching one response body for usage.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::decode::Inflater;
use super::eventstream::EventScanner;
use super::sse::SseScanner;
use super::{Envelope, UsageRecorder};
use crate::proxy::operation::Operation;
use crate::proxy::response_body::StreamKind;

/// Largest plain JSON body kept for usage parsing; bigger ones are skipped.
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

/// How usage is read, by the framing of the body.
#[derive(Debug)]
pub enum Parser {
    /// Plain JSON: handles to the frames (no copies), parsed at the end.
    Json {
        frames: Vec<Bytes>,
        size: usize,
    },
    Sse(SseScanner),
    EventStream(EventScanner),
}

impl Parser {
    pub fn for_kind(kind: StreamKind) -> Self {
        match kind {
            StreamKind::Sse => Self::Sse(SseScanner::default()),
            StreamKind::EventStream => Self::EventStream(EventScanner::default()),
            StreamKind::Plain => Self::Json {
                frames: Vec::new(),
                size: 0,
            },
        }
    }

    pub fn is_stream(&self) -> bool {
        !matches!(self, Self::Json { .. })
    }
}

/// Watches one response body.
#[derive(Debug)]
pub struct UsageTap {
    pub(super) recorder: Arc<UsageRecorder>,
    pub(super) model: Arc<str>,
    /// For streams: what to observe at the first chunk.
    pub(super) first_chunk: Option<(Operation, Instant)>,
    pub(super) parser: Parser,
    /// Undoes a gzip/deflate `content-encoding` for the parser (only).
    pub(super) inflater: Option<Inflater>,
    /// Decoded bytes so far; `None` once decoding failed (no usage then).
    pub(super) decoded: Option<usize>,
}

impl UsageTap {
    pub fn observe(&mut self, data: &Bytes) {
        if let Some((operation, started)) = self.first_chunk.take() {
            self.recorder
                .time_to_first_token
                .with_label_values(&[operation.as_str()])
                .observe(started.elapsed().as_secs_f64());
        }
        let decoded;
        let data = match (&mut self.inflater, self.decoded) {
            (None, _) => data,
            (Some(_), None) => return,
            (Some(inflater), Some(so_far)) => match inflater.feed(data, so_far) {
                Some(bytes) => {
                    self.decoded = Some(so_far + bytes.len());
                    decoded = bytes;
                    &decoded
                }
                None => {
                    self.decoded = None;
                    return;
                }
            },
        };
        match &mut self.parser {
            Parser::Json { frames, size } => {
                *size += data.len();
                if *size <= MAX_JSON_BODY {
                    frames.push(data.clone());
                } else {
                    frames.clear();
                }
            }
            Parser::Sse(scanner) => scanner.observe(data),
            Parser::EventStream(scanner) => scanner.observe(data),
        }
    }

    /// The stream ended (or was dropped): record what was found.
    pub fn finish(self) {
        if self.inflater.is_some() && self.decoded.is_none() {
            return;
        }
        let usage = match self.parser {
            Parser::Json { frames, size } if size <= MAX_JSON_BODY => match frames.as_slice() {
                [one] => Envelope::usage(one),
                many => {
                    let mut all = BytesMut::with_capacity(size);
                    for f in many {
                        all.extend_from_slice(f);
                    }
                    Envelope::usage(&all)
                }
            },
            Parser::Json { .. } => None,
            Parser::Sse(scanner) => scanner.finish(),
            Parser::EventStream(scanner) => scanner.finish(),
        };
        if let Some(usage) = usage {
            self.recorder.record(&self.model, usage);
        }
    }
}
