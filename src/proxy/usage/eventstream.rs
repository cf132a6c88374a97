//! Usage in an `application/vnd.amazon.eventstream` response: the
//! `metadata` event of ConverseStream, or the last `chunk` of
//! InvokeModelWithResponseStream. Messages are framed by
//! aws-smithy-eventstream's decoder, one at a time.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::json::{Envelope, Usage};

/// Most bytes held for one unfinished message; past it the response is not
/// read for usage any more (Bedrock's events are far smaller).
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// Decodes messages as frames arrive.
#[derive(Debug, Default)]
pub struct EventScanner {
    decoder: MessageFrameDecoder,
    pending: BytesMut,
    /// The stream stopped making sense (or grew too large): ignore the rest.
    broken: bool,
    /// InvokeModelWithResponseStream reports usage in its last chunk.
    last_chunk: Option<Bytes>,
    usage: Option<Usage>,
}

impl EventScanner {
    pub fn observe(&mut self, data: &[u8]) {
        if self.broken {
            return;
        }
        self.pending.extend_from_slice(data);
        loop {
            match self.decoder.decode_frame(&mut self.pending) {
                Ok(DecodedFrame::Complete(message)) => self.inspect(message),
                Ok(DecodedFrame::Incomplete) => break,
                Err(_) => {
                    self.stop();
                    return;
                }
            }
        }
        if self.pending.len() > MAX_PENDING {
            self.stop();
        }
    }

    pub fn finish(self) -> Option<Usage> {
        self.usage
            .or_else(|| self.last_chunk.and_then(|c| chunk_usage(&c)))
    }

    fn stop(&mut self) {
        self.broken = true;
        self.pending = BytesMut::new();
    }

    fn inspect(&mut self, message: Message) {
        let event_type = message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == ":event-type")
            .and_then(|h| h.value().as_string().ok());
        match event_type.map(|s| s.as_str()) {
            // ConverseStream: {"usage": {...}, "metrics": {...}}
            Some("metadata") => {
                if let Some(u) = Envelope::usage(message.payload()) {
                    self.usage = Some(u);
                }
            }
            // InvokeModelWithResponseStream: {"bytes": base64(model JSON)}.
            Some("chunk") => self.last_chunk = Some(message.payload().clone()),
            _ => {}
        }
    }
}

/// Usage in an InvokeModelWithResponseStream chunk's decoded bytes.
fn chunk_usage(payload: &[u8]) -> Option<Usage> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Chunk {
        bytes: String,
    }
    let chunk: Chunk = serde_json::from_slice(payload).ok()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(chunk.bytes)
        .ok()?;
    Envelope::usage(&decoded)
}
