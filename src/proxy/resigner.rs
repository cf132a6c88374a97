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
    /// Bytes of the message being received so far.
    received: usize,
    /// Its first four bytes, while they come in.
    prefix: [u8; 4],
    /// The length it declares, once they are in.
    declared: Option<usize>,
    signer: ChainSigner,
    ended: bool,
}

/// The longest message whose buffer a stream keeps for the next one (at
/// most twice this, as it grew): a larger one's is given back, so what a
/// stream holds between messages stays under what the budget leaves
/// uncounted.
pub(super) const KEPT_CAPACITY: usize = 4 * 1024;

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
            received: 0,
            prefix: [0; 4],
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

    /// Whether a message is partly received.
    pub(super) fn mid_message(&self) -> bool {
        self.received > 0
    }

    /// The length the message being received declares, once its first
    /// four bytes are in.
    pub(super) fn declared(&self) -> Option<usize> {
        self.declared
    }

    /// How many of the next `available` bytes belong to the message being
    /// received: up to its end, or, before its length is known, up to
    /// the end of the length. Feeding [`Resigner::push_piece`] no more
    /// than this completes at most one message a call, and tells its
    /// length before any of its body is held.
    pub(super) fn piece_len(&self, available: usize) -> usize {
        let end = self.declared.unwrap_or(4);
        end.saturating_sub(self.received)
            .min(available)
            .max(1.min(available))
    }

    /// Takes the next bytes from the client, in any pieces; returns the
    /// signed envelopes of the messages they complete (empty when none is
    /// complete yet). The stream feeds [`Resigner::push_piece`] itself.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn push(&mut self, mut data: &[u8]) -> Result<Bytes, StreamError> {
        let mut out = BytesMut::new();
        while !data.is_empty() {
            let (piece, rest) = data.split_at(self.piece_len(data.len()));
            if let Some(envelope) = self.push_piece(piece)? {
                out.extend_from_slice(&envelope);
            }
            data = rest;
        }
        Ok(out.freeze())
    }

    /// Takes bytes of the message being received, at most
    /// [`Resigner::piece_len`] of them; returns its signed envelope when
    /// they complete it.
    pub(super) fn push_piece(&mut self, piece: &[u8]) -> Result<Option<Bytes>, StreamError> {
        if self.declared.is_none() {
            // A message's first four bytes declare its length: one too
            // large is refused before it is received, and a frame that
            // completes it is not let through past the limit.
            let at = self.received;
            self.prefix[at..at + piece.len()].copy_from_slice(piece);
            if at + piece.len() == 4 {
                let declared = u32::from_be_bytes(self.prefix) as usize;
                if declared > self.max_message_bytes {
                    return Err(StreamError::TooLarge(self.max_message_bytes));
                }
                self.declared = Some(declared.max(4));
            }
        }
        self.pending.extend_from_slice(piece);
        self.received += piece.len();
        let DecodedFrame::Complete(message) = self.decoder.decode_frame(&mut self.pending)? else {
            if self.declared == Some(self.received) {
                return Err(StreamError::ShortLength(self.received));
            }
            return Ok(None);
        };
        let declared = self.declared.take().unwrap_or(0);
        self.received = 0;
        // The message's bytes were copied out, and nothing of the next one
        // is in (a piece ends where its message does): a large one's buffer
        // goes before its signed copies are made. Judged by the message's
        // length: taking it out moved the buffer's start, and `capacity()`
        // counts from there, not the allocation.
        if declared > KEPT_CAPACITY {
            self.pending = BytesMut::new();
        }
        if self.ended {
            return Err(StreamError::AfterEnd);
        }
        let inner = unwrap_envelope(message)?;
        self.ended = inner.is_none();
        let envelope = self.signer.sign(inner.as_ref())?;
        drop(inner);
        let mut out = BytesMut::new();
        write_message_to(&envelope, &mut out).map_err(StreamError::Encode)?;
        Ok(Some(out.freeze()))
    }

    /// At the end of the client's body: the end-of-stream envelope, unless
    /// the client already ended the stream itself.
    pub(super) fn finish(&mut self) -> Result<Option<Bytes>, StreamError> {
        if self.received > 0 {
            return Err(StreamError::Truncated(self.received));
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
