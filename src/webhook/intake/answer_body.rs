//! An answer's body: handed to the connection a chunk at a time, holding
//! its room in the text budget until the connection has taken the last of
//! it.

use axum::body::{Body, Bytes};

use super::text_budget::Room;

/// An answer is handed to the connection this much at a time, so what it
/// has not taken yet stays in the answer, counted.
const ANSWER_CHUNK: usize = 64 * 1024;

/// The body of `answer`, its `room` going with its bytes: chunks handed to
/// the connection share their allocation, and the last one may sit in its
/// buffer after the body is done.
pub(super) fn with_room(answer: Vec<u8>, room: Room) -> Body {
    let rest = Bytes::from_owner(Answer {
        bytes: answer,
        _room: room,
    });
    Body::new(AnswerBody { rest })
}

/// An answer's bytes, with their room in the budget.
struct Answer {
    bytes: Vec<u8>,
    _room: Room,
}

impl AsRef<[u8]> for Answer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// An answer given out a chunk at a time.
struct AnswerBody {
    rest: Bytes,
}

impl http_body::Body for AnswerBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = self.rest.len().min(ANSWER_CHUNK);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}
