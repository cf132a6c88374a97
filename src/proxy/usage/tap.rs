//! Watching one response body for usage.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::decode::Inflater;
use super::eventstream::EventScanner;
use super::json::Envelope;
use super::sse::SseScanner;
use super::UsageRecorder;
use crate::metrics::labels::ModelCounters;
use crate::proxy::operation::Operation;
use crate::proxy::response_body::StreamKind;

/// Largest plain JSON body kept for usage parsing; bigger ones are skipped.
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

/// How usage is read, by the framing of the body. The stream scanners are
/// boxed: the tap rides inside every response body, which is moved and
/// stored per request, and most answers are plain JSON.
#[derive(Debug)]
pub enum Parser {
    /// Plain JSON: handles to the frames (no copies), parsed at the end;
    /// the first apart, as most answers are one frame.
    Json {
        first: Option<Bytes>,
        more: Vec<Bytes>,
        size: usize,
    },
    Sse(Box<SseScanner>),
    EventStream(Box<EventScanner>),
}

impl Parser {
    pub fn for_kind(kind: StreamKind) -> Self {
        match kind {
            StreamKind::Sse => Self::Sse(Box::default()),
            StreamKind::EventStream => Self::EventStream(Box::default()),
            StreamKind::Plain => Self::Json {
                first: None,
                more: Vec::new(),
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
    pub(super) model: Arc<ModelCounters>,
    /// For streams: what to observe at the first chunk.
    pub(super) first_chunk: Option<(Operation, Instant)>,
    pub(super) parser: Parser,
    /// Undoes a gzip/deflate `content-encoding` for the parser (only).
    /// Boxed: its state is large and compressed answers are rare.
    pub(super) inflater: Option<Box<Inflater>>,
    /// Decoded bytes so far; `None` once decoding failed (no usage then).
    pub(super) decoded: Option<usize>,
}

impl UsageTap {
    pub fn observe(&mut self, data: &Bytes) {
        if let Some((operation, started)) = self.first_chunk.take() {
            self.recorder.first_token(operation, started);
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
            Parser::Json { first, more, size } => {
                *size += data.len();
                if *size > MAX_JSON_BODY {
                    *first = None;
                    *more = Vec::new();
                } else if first.is_none() {
                    *first = Some(data.clone());
                } else {
                    more.push(data.clone());
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
            Parser::Json { first, more, size } if size <= MAX_JSON_BODY => match first {
                None => None,
                Some(one) if more.is_empty() => Envelope::usage(&one),
                Some(one) => {
                    let mut all = BytesMut::with_capacity(size);
                    all.extend_from_slice(&one);
                    for f in &more {
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
            UsageRecorder::record(&self.model, usage);
        }
    }
}
