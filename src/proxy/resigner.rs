//! One bidirectional stream's client messages, from bytes on the wire to
//! signed envelopes: taken apart by aws-smithy-eventstream, unwrapped when
//! an SDK signed them already, re-signed in the stream's chain.

use aws_smithy_eventstream::frame::{
    read_message_from, write_message_to, DecodedFrame, MessageFrameDecoder,
};
use aws_smithy_types::event_stream::Message;
use bytes::{Buf, Bytes, BytesMut};

use super::event_stream::{ChainSigner, StreamError, CHUNK_SIGNATURE};

/// Turns the client's bytes into signed envelopes, whatever the framing of
/// the bytes on the wire.
#[derive(Debug)]
pub(super) struct Resigner {
    decoder: MessageFrameDecoder,
    pending: BytesMut,
    /// Most bytes of one message: the decoder trusts the length prefix,
    /// so without this a bad prefix would make us buffer without bound.
    max_message_bytes: usize,
    /// The length the message being received declares, once seen.
    declared: Option<usize>,
    signer: ChainSigner,
    ended: bool,
}

/// Buffer kept for a stream's unfinished message between messages; more is
/// given back once the message completes.
pub(super) const KEPT_CAPACITY: usize = 64 * 1024;

/// How many times over a message is held while it is signed: the client's
/// bytes (in a buffer that may have doubled as they came) beside the
/// decoder's copy, then the signed copy beside the envelope written out.
pub(super) const SIGNING_COPIES: usize = 3;

/// The largest message AWS's event-stream encoding allows: a 12-byte
/// prelude, 128 KiB of headers, 16 MiB of payload and a 4-byte checksum.
/// Bedrock refuses anything longer; it is refused here before it is held.
pub(super) const MAX_EVENT_STREAM_MESSAGE: usize = 12 + 128 * 1024 + 16 * 1024 * 1024 + 4;

impl Resigner {
    pub(super) fn new(signer: ChainSigner, max_message_bytes: usize) -> Self {
        Self {
            decoder: MessageFrameDecoder::new(),
            pending: BytesMut::new(),
            max_message_bytes,
            declared: None,
            signer,
            ended: false,
        }
    }

    /// Bytes of an unfinished message held.
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Memory the unfinished message's buffer takes.
    pub(super) fn buffered(&self) -> usize {
        self.pending.capacity()
    }

    /// Takes the next bytes from the client; returns the signed envelopes of
    /// the messages they complete (empty when none is complete yet).
    pub(super) fn push(&mut self, data: &[u8]) -> Result<Bytes, StreamError> {
        self.pending.extend_from_slice(data);
        let mut out = BytesMut::new();
        loop {
            // A message's first four bytes declare its length: one too
            // large is refused before it is received, and a frame that
            // completes it is not let through past the limit.
            if self.declared.is_none() && self.pending.len() >= 4 {
                let mut prefix = [0u8; 4];
                prefix.copy_from_slice(&self.pending[..4]);
                let declared = u32::from_be_bytes(prefix) as usize;
                if declared > self.max_message_bytes {
                    return Err(StreamError::TooLarge(self.max_message_bytes));
                }
                self.declared = Some(declared);
            }
            let DecodedFrame::Complete(message) = self.decoder.decode_frame(&mut self.pending)?
            else {
                break;
            };
            // The message's bytes were copied out: a large one's buffer
            // goes before its signed copies are made.
            if self.declared.take().unwrap_or(0) > KEPT_CAPACITY {
                self.pending = BytesMut::from(&self.pending[..]);
            }
            if self.ended {
                return Err(StreamError::AfterEnd);
            }
            let inner = unwrap_envelope(message)?;
            self.ended = inner.is_none();
            let envelope = self.signer.sign(inner.as_ref())?;
            drop(inner);
            write_message_to(&envelope, &mut out).map_err(StreamError::Encode)?;
        }
        if self.pending.len() > self.max_message_bytes {
            return Err(StreamError::TooLarge(self.max_message_bytes));
        }
        // Taking messages out never shrinks the buffer: after a large one
        // it would keep its allocation, outside the budget (drawn by what
        // is pending), for the rest of the stream.
        if self.pending.capacity() > KEPT_CAPACITY
            && self.pending.capacity() > 2 * self.pending.len()
        {
            self.pending = BytesMut::from(&self.pending[..]);
        }
        Ok(out.freeze())
    }

    /// At the end of the client's body: the end-of-stream envelope, unless
    /// the client already ended the stream itself.
    pub(super) fn finish(&mut self) -> Result<Option<Bytes>, StreamError> {
        if !self.pending.is_empty() {
            return Err(StreamError::Truncated(self.pending.len()));
        }
        if self.ended {
            return Ok(None);
        }
        self.ended = true;
        let mut out = BytesMut::new();
        write_message_to(&self.signer.sign(None)?, &mut out).map_err(StreamError::Encode)?;
        Ok(Some(out.freeze()))
    }
}

/// The message a client sent: itself, or what its signed envelope carries.
/// `None` is the client's end-of-stream envelope.
fn unwrap_envelope(message: Message) -> Result<Option<Message>, StreamError> {
    let wrapped = message
        .headers()
        .iter()
        .any(|h| h.name().as_str() == CHUNK_SIGNATURE);
    if !wrapped {
        return Ok(Some(message));
    }
    if message.payload().is_empty() {
        return Ok(None);
    }
    let mut payload = message.payload().clone();
    let inner = read_message_from(&mut payload)?;
    if payload.has_remaining() {
        return Err(StreamError::TrailingBytes(payload.remaining()));
    }
    Ok(Some(inner))
}
