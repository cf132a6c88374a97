//! Watching one response body for usage.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::decode::Inflater;
use super::eventstream::{Ending, EventScanner};
use super::json::{Envelope, Usage};
use super::room::Share;
use super::sse::{SseScanner, USAGE_FINDER, USAGE_KEY};
use super::UsageRecorder;
use crate::metrics::labels::ModelCounters;
use crate::proxy::operation::Operation;
use crate::proxy::response_body::StreamKind;

/// Largest plain JSON body kept whole: its usage is read as always (the
/// object near the end, else the whole document).
pub(super) const WHOLE_JSON_BODY: usize = 256 * 1024;

/// Of a larger body, only its end is kept (Bedrock writes usage last):
/// the body streams past, and 30 image answers of 4 MB at once held
/// 100 MB more with the whole bodies kept.
pub(super) const JSON_TAIL: usize = 64 * 1024;

/// How usage is read, by the framing of the body. The stream scanners are
/// boxed: the tap rides inside every response body, which is moved and
/// stored per request, and most answers are plain JSON.
#[derive(Debug)]
pub enum Parser {
    Json(JsonBody),
    Sse(Box<SseScanner>),
    EventStream(Box<EventScanner>),
    /// Nothing to read in the body, its usage came in the headers: only
    /// how it ends is watched.
    Counted,
    /// Nothing the tap can read: a `content-encoding` it cannot undo.
    Unreadable,
    /// The taps' shared budget had no room for what this one held: what it
    /// kept is dropped and the rest of the answer goes by unread.
    NoRoom,
}

impl Parser {
    pub fn for_kind(kind: StreamKind) -> Self {
        match kind {
            StreamKind::Sse => Self::Sse(Box::default()),
            StreamKind::EventStream => Self::EventStream(Box::default()),
            StreamKind::Plain => Self::Json(JsonBody::default()),
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, Self::Sse(_) | Self::EventStream(_))
    }

    fn observe(&mut self, data: Piece<'_>) {
        match self {
            Self::Json(body) => body.push(data),
            Self::Sse(scanner) => scanner.observe(data.bytes()),
            Self::EventStream(scanner) => scanner.observe(data.bytes()),
            Self::Counted | Self::Unreadable | Self::NoRoom => {}
        }
    }

    /// Bytes held for reading usage at the end.
    pub(super) fn held(&self) -> usize {
        match self {
            Self::Json(body) => body.held(),
            Self::Sse(scanner) => scanner.held(),
            Self::EventStream(scanner) => scanner.held(),
            Self::Counted | Self::Unreadable | Self::NoRoom => 0,
        }
    }

    fn finish(self) -> Ending {
        let usage = match self {
            Self::Json(body) => body.usage(),
            Self::Sse(scanner) => return scanner.finish(),
            Self::EventStream(scanner) => return scanner.finish(),
            Self::Counted | Self::Unreadable | Self::NoRoom => None,
        };
        Ending {
            usage,
            exception: None,
            complete: false,
        }
    }
}

/// A frame as it came (a handle, kept without copying) or as decoded.
#[derive(Clone, Copy)]
enum Piece<'a> {
    Frame(&'a Bytes),
    Decoded(&'a [u8]),
}

impl Piece<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Frame(b) => b,
            Self::Decoded(d) => d,
        }
    }

    fn to_bytes(self) -> Bytes {
        match self {
            Self::Frame(b) => b.clone(),
            Self::Decoded(d) => Bytes::copy_from_slice(d),
        }
    }
}

/// A plain JSON body while it is small, then only its last bytes. Most
/// answers are one frame, kept as a handle without copying; later frames
/// are copied: a handle keeps the whole buffer the frame was read into
/// alive, and a body trickled a byte per frame kept a read buffer per
/// byte (about 4 KiB each).
#[derive(Debug, Default)]
pub struct JsonBody {
    first: Option<Bytes>,
    more: Vec<u8>,
    size: usize,
    /// Past [`WHOLE_JSON_BODY`]: what is kept of it.
    tail: Option<Box<LargeBody>>,
}

impl JsonBody {
    fn push(&mut self, data: Piece<'_>) {
        self.size = self.size.saturating_add(data.bytes().len());
        if self.tail.is_none() && self.size <= WHOLE_JSON_BODY {
            match &self.first {
                None => self.first = Some(data.to_bytes()),
                Some(_) => self.more.extend_from_slice(data.bytes()),
            }
            return;
        }
        let (first, more) = (&mut self.first, &mut self.more);
        let large = self.tail.get_or_insert_with(|| {
            let mut large = Box::<LargeBody>::default();
            if let Some(first) = first.take() {
                large.push(&first);
            }
            large.push(&std::mem::take(more));
            large
        });
        large.push(data.bytes());
    }

    /// Bytes copied into usage snippets, for the same tests.
    #[cfg(test)]
    pub(super) fn copied(&self) -> usize {
        self.tail.as_ref().map_or(0, |t| t.copied())
    }

    /// Bytes held (of the first frame, its length: the buffer it was
    /// read into may be larger).
    pub(super) fn held(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len)
            + self.more.capacity()
            + self.tail.as_ref().map_or(0, |t| t.held())
    }

    fn usage(self) -> Option<Usage> {
        if let Some(large) = self.tail {
            return large.usage();
        }
        match self.first {
            None => None,
            Some(one) if self.more.is_empty() => Envelope::usage(&one),
            Some(one) => {
                let mut all = BytesMut::with_capacity(self.size);
                all.extend_from_slice(&one);
                all.extend_from_slice(&self.more);
                Envelope::usage(&all)
            }
        }
    }
}

/// What is kept of a body too large to keep whole: its last [`JSON_TAIL`]
/// bytes, and the text after each of its last `"usage"` keys. Usage is
/// last in most answers, but Converse writes `metrics` and a guardrail's
/// `trace` after it, and the trace holds a copy of the answer: a long
/// answer puts its usage out of the tail's reach.
#[derive(Debug, Default)]
pub struct LargeBody {
    /// Up to twice [`JSON_TAIL`] between trims.
    tail: Vec<u8>,
    /// The end of the previous frame, for a key cut between two frames.
    overlap: Vec<u8>,
    /// Text from a `"usage"` key on (and the byte before it), up to
    /// [`SNIPPET`] bytes: the newest last, some still filling.
    snippets: VecDeque<Vec<u8>>,
    /// Bytes copied into snippets, for the tests of what a body may cost.
    #[cfg(test)]
    copied: usize,
}

/// Text kept after a `"usage"` key: a usage object is far shorter.
const SNIPPET: usize = 2 * 1024;
/// Snippets kept: the body's last keys.
const SNIPPETS: usize = 16;
/// A key and the byte before it.
const OVERLAP: usize = USAGE_KEY.len() + 1;

impl LargeBody {
    fn push(&mut self, data: &[u8]) {
        keep_end(&mut self.tail, data);
        for s in self.snippets.iter_mut().filter(|s| s.len() < SNIPPET) {
            let need = SNIPPET - s.len();
            let more = &data[..need.min(data.len())];
            s.extend_from_slice(more);
            #[cfg(test)]
            {
                self.copied += more.len();
            }
        }
        // A key cut by the frame boundary: looked for where the previous
        // frame's last bytes meet this one's first, not in a copy of the
        // whole frame.
        let mut edge = std::mem::take(&mut self.overlap);
        let cut = edge.len();
        edge.extend_from_slice(&data[..data.len().min(USAGE_KEY.len() - 1)]);
        for at in USAGE_FINDER.find_iter(&edge) {
            // Wholly before the cut, it was found with the previous frame.
            if at < cut && at + USAGE_KEY.len() > cut {
                self.keep(&edge[at.saturating_sub(1)..cut], data);
            }
        }
        // Only the frame's last keys can outlive it: a body writing the
        // key every few bytes (a hostile or broken upstream) would
        // otherwise cost a snippet's copy per key, ~256 bytes per byte.
        let mut last = [0usize; SNIPPETS];
        let mut found = 0usize;
        for at in USAGE_FINDER.find_iter(data) {
            last[found % SNIPPETS] = at;
            found += 1;
        }
        for i in found.saturating_sub(SNIPPETS)..found {
            let at = last[i % SNIPPETS];
            match at.checked_sub(1) {
                Some(start) => self.keep(&[], &data[start..]),
                // The byte before it ended the previous frame.
                None => self.keep(&edge[cut.saturating_sub(1)..cut], data),
            }
        }
        edge.truncate(cut);
        edge.extend_from_slice(&data[data.len().saturating_sub(OVERLAP)..]);
        edge.drain(..edge.len().saturating_sub(OVERLAP));
        self.overlap = edge;
    }

    /// Keeps a snippet: `head`, then `rest` up to [`SNIPPET`] bytes in all
    /// (the next frames fill it further).
    fn keep(&mut self, head: &[u8], rest: &[u8]) {
        let mut snippet = match self.snippets.len() {
            SNIPPETS => self.snippets.pop_front().unwrap_or_default(),
            _ => Vec::with_capacity(SNIPPET),
        };
        snippet.clear();
        snippet.extend_from_slice(head);
        let room = SNIPPET.saturating_sub(snippet.len());
        snippet.extend_from_slice(&rest[..rest.len().min(room)]);
        #[cfg(test)]
        {
            self.copied += snippet.len();
        }
        self.snippets.push_back(snippet);
    }

    #[cfg(test)]
    fn copied(&self) -> usize {
        self.copied
    }

    fn held(&self) -> usize {
        self.tail.capacity()
            + self.overlap.capacity()
            + self.snippets.iter().map(Vec::capacity).sum::<usize>()
    }

    /// The tail's usage, else the newest snippet's with token counts.
    fn usage(self) -> Option<Usage> {
        Envelope::usage_near_end(&self.tail).or_else(|| {
            self.snippets
                .iter()
                .rev()
                .find_map(|s| Envelope::usage_near_end(s))
        })
    }
}

/// Appends `data` to `tail`, keeping its last [`JSON_TAIL`] bytes (trimmed
/// once it holds twice that, so each byte moves about once).
fn keep_end(tail: &mut Vec<u8>, data: &[u8]) {
    let data = &data[data.len().saturating_sub(JSON_TAIL)..];
    if tail.len() + data.len() > 2 * JSON_TAIL {
        let drop = (tail.len() + data.len())
            .saturating_sub(JSON_TAIL)
            .min(tail.len());
        tail.drain(..drop);
    }
    tail.extend_from_slice(data);
}

/// Watches one response body.
#[derive(Debug)]
pub struct UsageTap {
    pub(super) recorder: Arc<UsageRecorder>,
    pub(super) model: Arc<ModelCounters>,
    /// For streams: what to observe at the first chunk.
    pub(super) first_chunk: Option<(Operation, Instant)>,
    pub(super) operation: Operation,
    /// Why the answer ended before its end, when the proxy saw it end so.
    pub(super) cut: Option<&'static str>,
    /// The client went away before the answer's end.
    pub(super) client_left: bool,
    pub(super) parser: Parser,
    /// Undoes a gzip/deflate `content-encoding` for the parser (only).
    /// Boxed: its state is large and compressed answers are rare.
    pub(super) inflater: Option<Box<Inflater>>,
    /// What the tap holds (its parser's buffers, a decoder), drawn from
    /// the budget all taps share.
    pub(super) share: Share,
}

impl UsageTap {
    pub fn observe(&mut self, data: &Bytes) {
        if let Some((operation, started)) = self.first_chunk.take() {
            self.recorder.first_token(operation, started);
        }
        let parser = &mut self.parser;
        match &mut self.inflater {
            None => parser.observe(Piece::Frame(data)),
            Some(inflater) => {
                if !inflater.feed(data, &mut |d| parser.observe(Piece::Decoded(d))) {
                    // Nothing more can be read: its decoder and what the
                    // parser kept are let go, and it ends as unreadable.
                    self.parser = Parser::Unreadable;
                    self.inflater = None;
                }
            }
        }
        // Checked after the frame is taken in: at most one frame per
        // thread running a tap passes the budget, for as long as this.
        self.fit();
    }

    /// Makes the tap's share cover what it holds, or stops its reading.
    pub(super) fn fit(&mut self) {
        if !self.share.cover(self.held()) {
            tracing::debug!(
                operation = self.operation.as_str(),
                "no token usage: the usage taps' memory budget is full"
            );
            self.parser = Parser::NoRoom;
            self.inflater = None;
            self.share.clear();
        }
    }

    /// Bytes held for reading usage: the parser's, and a decoder's.
    pub fn held(&self) -> usize {
        self.parser.held() + self.inflater.as_ref().map_or(0, |i| i.held())
    }

    /// The answer will not end as it should: `why` is counted as its
    /// error unless Bedrock said why itself.
    pub fn cut_off(&mut self, why: &'static str) {
        self.cut = Some(why);
    }

    /// The client went away before the answer's end: what it held so far
    /// is still counted, and a missing usage is put down to that.
    pub fn client_left(&mut self) {
        self.client_left = true;
    }

    /// The stream ended (or was dropped): record what was found.
    pub fn finish(self) {
        let unreadable = matches!(self.parser, Parser::Unreadable);
        let no_room = matches!(self.parser, Parser::NoRoom);
        let counted = matches!(self.parser, Parser::Counted);
        let ending = self.parser.finish();
        let complete = ending.complete;
        let found = ending.usage.is_some();
        if let Some(usage) = ending.usage {
            UsageRecorder::record(&self.model, usage);
        }
        let failed = ending.exception.or(self.cut);
        if let Some(exception) = failed {
            self.recorder.stream_error(self.operation, exception);
        }
        if !(found || counted) {
            let why = if unreadable {
                UNREADABLE
            } else if failed.is_some() || (self.client_left && !complete) {
                CUT_OFF
            } else if no_room {
                OVER_BUDGET
            } else {
                NOT_REPORTED
            };
            self.recorder.without_usage(self.operation, why);
        }
    }
}

/// Why an answer's tokens were not counted (`answers_without_usage_total`):
/// the answer reached its end and held none (an OpenAI-style stream without
/// `stream_options.include_usage`, a model that reports none, a usage out
/// of the tap's reach in a very large body),
const NOT_REPORTED: &str = "not_reported";
/// it did not reach its end (an error, a break, a stall, a client gone),
const CUT_OFF: &str = "cut_off";
/// the taps' shared memory budget had no room for what it needed,
const OVER_BUDGET: &str = "over_budget";
/// or the tap could not read it (a coding it cannot undo, a corrupt or
/// oversized compressed body).
const UNREADABLE: &str = "unreadable";
