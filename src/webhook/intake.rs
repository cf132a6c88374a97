//! Receiving an AdmissionReview body: bounded in time (a body that stalls,
//! or that keeps trickling past the deadline, is dropped) and in memory
//! (all reviews in flight share one budget, so a flood of the largest
//! reviews cannot take the webhook over its memory limit while the API
//! server waits on it).
//!
//! The budget is drawn as bytes arrive, not by what a client declares: a
//! peer that declares the largest review and then sends a byte at a time
//! would otherwise hold a whole share for as long as it keeps dripping,
//! and four of them would shut out the API server. Peers sending the
//! whole budget in real bytes would hold it still: a peer short of room
//! takes it from one holding more ([`super::fair_share`]).
//!
//! Once the text is in, what parsing it will take is drawn from room of
//! its own, before it is parsed ([`super::parse_cost`]), handed out to
//! peers in turn ([`super::turns`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Request, StatusCode};
use bytes::BytesMut;
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::fair_share::{Holder, Holders, Phase};
use super::parse_cost;
use super::turns::{self, Turns};
use crate::server::Connection;

/// AdmissionReviews are bounded by the API server's 3 MiB object limit
/// plus the review envelope (old and new object).
pub const MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;

/// Room for parsed pods, in times the budget for review text: text and
/// pods in flight together stay within 5 times the budget (the chart's
/// memory limit: 64 MiB plus 5 times the budget).
pub const PARSED_PER_TEXT: usize = 4;

/// How long a review waits for room in the budget: well inside the API
/// server's 10 s webhook timeout, so it gets our clear answer.
const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// How often a review waiting for room looks again for holds to take.
const TAKE_AGAIN: Duration = Duration::from_millis(100);

/// An answer is handed to the connection this much at a time, so what it
/// has not taken yet stays in the answer, counted.
const ANSWER_CHUNK: usize = 64 * 1024;

/// How long receiving one review body may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewTiming {
    /// Longest silence between two pieces of a body.
    pub silence: Duration,
    /// Longest time for the whole body, however steadily it arrives.
    pub deadline: Duration,
}

impl Default for ReviewTiming {
    fn default() -> Self {
        Self {
            silence: Duration::from_secs(5),
            deadline: Duration::from_secs(10),
        }
    }
}

/// How reviews are received.
#[derive(Debug, Clone)]
pub struct Intake {
    timing: ReviewTiming,
    /// Bytes of review text, drawn as they arrive.
    budget: Arc<Semaphore>,
    /// Bytes of parsed pods, drawn once a review's text is in. Apart from
    /// the text's budget, so that reviews holding text and waiting for
    /// this wait only for reviews already past parsing, which hold
    /// nothing they wait on: a flood of large reviews cannot deadlock.
    parsed: Arc<Turns>,
    parsed_capacity: usize,
    capacity: usize,
    /// Who holds the text budget, so a peer short of room can take it from
    /// one holding more ([`super::fair_share`]).
    holders: Arc<Holders>,
    /// Counts holds taken for another peer.
    closed: Option<IntCounter>,
}

/// A review body, holding its shares of the budgets until dropped: its
/// text, and what parsing it will take.
pub struct Received {
    pub bytes: Bytes,
    /// Why the text is not JSON the estimate could read: the review is
    /// then answered as unreadable, never parsed.
    pub not_json: Option<String>,
    text: Room,
    _parsed: Option<turns::Room>,
}

/// A request's share of the text budget: among the budget's holders, where
/// a peer short of room can take it, when the request came on a
/// connection of the listener's; else its own.
enum Room {
    Held(Holder),
    Own(Option<OwnedSemaphorePermit>),
}

impl Room {
    fn new(holder: Option<Holder>) -> Self {
        holder.map_or(Self::Own(None), Self::Held)
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Held(holder) => holder.bytes(),
            Self::Own(permit) => permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits),
        }
    }

    fn holder(&self) -> Option<&Holder> {
        match self {
            Self::Held(holder) => Some(holder),
            Self::Own(_) => None,
        }
    }

    fn phase(&self, phase: Phase) {
        if let Self::Held(holder) = self {
            holder.phase(phase);
        }
    }

    fn add(&mut self, more: OwnedSemaphorePermit) {
        match self {
            Self::Held(holder) => holder.add(more),
            Self::Own(Some(permit)) => permit.merge(more),
            Self::Own(none) => *none = Some(more),
        }
    }

    /// Gives back all but `bytes`.
    fn keep(&mut self, bytes: usize) {
        match self {
            Self::Held(holder) => holder.keep(bytes),
            Self::Own(Some(permit)) => {
                drop(permit.split(permit.num_permits().saturating_sub(bytes)));
            }
            Self::Own(None) => {}
        }
    }
}

impl Intake {
    /// `budget` is at least one review of the largest size (the
    /// configuration refuses less; raised here for callers that skip it).
    pub fn new(timing: ReviewTiming, budget: usize) -> Self {
        let budget = budget.clamp(MAX_REVIEW_BYTES, Semaphore::MAX_PERMITS);
        let parsed = budget
            .saturating_mul(PARSED_PER_TEXT)
            .min(Semaphore::MAX_PERMITS);
        Self {
            timing,
            budget: Arc::new(Semaphore::new(budget)),
            parsed: Turns::new(parsed),
            parsed_capacity: parsed,
            capacity: budget,
            holders: Arc::default(),
            closed: None,
        }
    }

    /// Counts the holds taken for another peer in `closed`.
    pub fn counting(mut self, closed: IntCounter) -> Self {
        self.closed = Some(closed);
        self
    }

    /// Bytes of the text budget held now: review text and answers not
    /// taken yet.
    pub fn held(&self) -> usize {
        self.capacity - self.budget.available_permits()
    }

    /// Reads a review body, or the status to answer instead.
    pub async fn receive(&self, request: Request<Body>) -> Result<Received, StatusCode> {
        let deadline = Instant::now() + self.timing.deadline;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_REVIEW_BYTES) {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        let limit = declared.unwrap_or(MAX_REVIEW_BYTES);
        let holder = request
            .extensions()
            .get::<Connection>()
            .map(|connection| self.holders.enter(connection));
        let mut text = Room::new(holder);
        let mut body = request.into_body();
        // Untouched capacity costs address space, not memory: only what
        // arrives is resident, and only that is drawn from the budget.
        let mut bytes = BytesMut::with_capacity(declared.unwrap_or(0));
        loop {
            // A frame already waiting would be taken even past the deadline.
            if Instant::now() >= deadline {
                return Err(StatusCode::REQUEST_TIMEOUT);
            }
            let silence = Instant::now() + self.timing.silence;
            let frame = tokio::time::timeout_at(silence.min(deadline), body.frame())
                .await
                .map_err(|_| StatusCode::REQUEST_TIMEOUT)?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|_| StatusCode::BAD_REQUEST)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if bytes.len() + data.len() > limit {
                return Err(StatusCode::PAYLOAD_TOO_LARGE);
            }
            let share = self
                .reserve_text(data.len(), deadline, text.holder())
                .await?;
            text.add(share);
            bytes.extend_from_slice(&data);
        }
        text.phase(Phase::Working);
        // What the pod will take once parsed, drawn before it is: text of
        // a few hundred KB can parse into gigabytes (`parse_cost`). Text
        // the estimate cannot read (a number out of range, a lone
        // surrogate, bytes that are not UTF-8) is answered as unreadable,
        // not parsed: the parse skips such values in fields it ignores, so
        // it would go ahead unpriced. The API server never sends them.
        let mut not_json = None;
        let parsed = match parse_cost::estimate(&bytes) {
            Ok(parsed) if parsed > self.parsed_capacity => {
                tracing::warn!(
                    bytes = bytes.len(),
                    parsed,
                    room = self.parsed_capacity,
                    "review would parse into more than all the room for parsed pods; answering 413"
                );
                return Err(StatusCode::PAYLOAD_TOO_LARGE);
            }
            Ok(parsed) => Some(self.reserve_parsed(&text, parsed, deadline).await?),
            Err(e) => {
                not_json = Some(e.to_string());
                None
            }
        };
        Ok(Received {
            bytes: bytes.freeze(),
            not_json,
            text,
            _parsed: parsed,
        })
    }

    /// Room for a parsed pod of `n` bytes, in turn among peers
    /// ([`super::turns`]), waiting briefly (never past `deadline`).
    async fn reserve_parsed(
        &self,
        text: &Room,
        n: usize,
        deadline: Instant,
    ) -> Result<turns::Room, StatusCode> {
        let peer = text.holder().map(Holder::peer);
        let mut granted = self.parsed.ask(peer, n);
        let until = (Instant::now() + BUDGET_WAIT).min(deadline);
        match tokio::time::timeout_at(until, &mut granted).await {
            Ok(Ok(room)) => Ok(room),
            _ => {
                drop(granted);
                self.parsed.gave_up();
                Err(exhausted())
            }
        }
    }

    /// `n` more bytes of the text budget for the request `holder` stands
    /// for: when there is not enough room, it is taken from busier peers
    /// ([`Holders::take_for`]) or waited for. The wait is the webhook's,
    /// not the peer's (see [`Phase`]).
    async fn reserve_text(
        &self,
        n: usize,
        deadline: Instant,
        holder: Option<&Holder>,
    ) -> Result<OwnedSemaphorePermit, StatusCode> {
        if let Ok(permit) = self.budget.clone().try_acquire_many_owned(permits(n)?) {
            return Ok(permit);
        }
        let Some(holder) = holder else {
            return reserve(&self.budget, n, deadline).await;
        };
        let paused = holder.pause();
        let room = self.wait_or_take(n, deadline, holder).await;
        if let Some(paused) = paused {
            holder.resume(paused);
        }
        room
    }

    async fn wait_or_take(
        &self,
        n: usize,
        deadline: Instant,
        holder: &Holder,
    ) -> Result<OwnedSemaphorePermit, StatusCode> {
        let until = (Instant::now() + BUDGET_WAIT).min(deadline);
        let mut taken: Option<OwnedSemaphorePermit> = None;
        let mut queued_for = n;
        let mut acquire = Box::pin(self.budget.clone().acquire_many_owned(permits(n)?));
        loop {
            if let Some(room) = self.take_for(holder.peer(), n, &mut taken) {
                return Ok(room);
            }
            // In line for what is still missing only: room taken meanwhile
            // (handed over, outside the line) counts.
            let missing =
                n.saturating_sub(taken.as_ref().map_or(0, OwnedSemaphorePermit::num_permits));
            if missing != queued_for {
                acquire = Box::pin(self.budget.clone().acquire_many_owned(permits(missing)?));
                queued_for = missing;
            }
            // Holds not takeable now may be later: asked again while
            // waiting. A take costs the place in line (the line is asked
            // for what is still missing, anew), where the part of the room
            // the old place had been given goes back.
            let next = (Instant::now() + TAKE_AGAIN).min(until);
            match tokio::time::timeout_at(next, &mut acquire).await {
                Ok(Ok(mut permit)) => {
                    if let Some(taken) = taken {
                        permit.merge(taken);
                    }
                    return Ok(permit);
                }
                Err(_) if next < until => {}
                _ => return Err(exhausted()),
            }
        }
    }

    /// Adds to `taken` what busier peers hold ([`Holders::take_for`]) and
    /// what the budget has free, and returns `n` bytes of it once there are
    /// that many.
    fn take_for(
        &self,
        peer: IpAddr,
        n: usize,
        taken: &mut Option<OwnedSemaphorePermit>,
    ) -> Option<OwnedSemaphorePermit> {
        fn add(taken: &mut Option<OwnedSemaphorePermit>, room: OwnedSemaphorePermit) {
            match taken.as_mut() {
                Some(t) => t.merge(room),
                None => *taken = Some(room),
            }
        }
        let have = |t: &Option<OwnedSemaphorePermit>| t.as_ref().map_or(0, |t| t.num_permits());
        let short = n
            .saturating_sub(have(taken))
            .saturating_sub(self.budget.available_permits());
        let (more, closed) = self.holders.take_for(peer, n, short);
        if let Some(counter) = self.closed.as_ref().filter(|_| closed > 0) {
            counter.inc_by(closed as u64);
        }
        if let Some(more) = more {
            add(taken, more);
        }
        let rest = n.saturating_sub(have(taken));
        if rest > 0 {
            add(
                taken,
                self.budget
                    .clone()
                    .try_acquire_many_owned(permits(rest).ok()?)
                    .ok()?,
            );
        }
        let mut room = taken.take()?;
        let excess = room.num_permits().saturating_sub(n);
        if excess > 0 {
            drop(room.split(excess));
        }
        Some(room)
    }
}

impl Intake {
    /// The body of an answer to `received`, holding room for its bytes in
    /// the text budget until the connection has taken the last of them
    /// (or closed). Answers of large pods can be larger than their reviews,
    /// and a peer that sends reviews and never reads the answers held them
    /// all in memory, unpriced; now it holds budget, and the connection's
    /// idle timeout ends the hold. The review's own room is kept for it:
    /// an answer no larger than its review never waits (released and
    /// asked for again, it would queue behind reviews waiting for room,
    /// and a review already worked through could end in 503).
    pub async fn answer(&self, received: Received, answer: Vec<u8>) -> Result<Body, StatusCode> {
        let Received {
            text: mut room,
            _parsed: parsed,
            ..
        } = received;
        drop(parsed);
        let need = answer.len();
        if room.bytes() >= need {
            room.keep(need);
        } else {
            let extra = need - room.bytes();
            let more = self
                .reserve_text(extra, Instant::now() + BUDGET_WAIT, room.holder())
                .await?;
            room.add(more);
        }
        room.phase(Phase::Answering);
        // The room goes with the bytes: chunks handed to the connection
        // share their allocation, and the last one may sit in its buffer
        // after the body is done.
        let rest = Bytes::from_owner(Answer {
            bytes: answer,
            _room: room,
        });
        Ok(Body::new(AnswerBody { rest }))
    }
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

/// `n` as a number of permits; more than a semaphore holds is too large.
fn permits(n: usize) -> Result<u32, StatusCode> {
    u32::try_from(n).map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)
}

/// `n` more bytes of `budget`, waiting briefly (never past `deadline`) for
/// room.
async fn reserve(
    budget: &Arc<Semaphore>,
    n: usize,
    deadline: Instant,
) -> Result<OwnedSemaphorePermit, StatusCode> {
    let acquire = budget.clone().acquire_many_owned(permits(n)?);
    let until = (Instant::now() + BUDGET_WAIT).min(deadline);
    match tokio::time::timeout_at(until, acquire).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(exhausted()),
    }
}

/// No room came in time.
fn exhausted() -> StatusCode {
    tracing::warn!("review budget exhausted; answering 503");
    StatusCode::SERVICE_UNAVAILABLE
}

impl Default for Intake {
    fn default() -> Self {
        Self::new(ReviewTiming::default(), 4 * MAX_REVIEW_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fair_share::TAKE_AFTER;
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn received(held: Option<OwnedSemaphorePermit>) -> Received {
        Received {
            bytes: Bytes::new(),
            not_json: None,
            text: Room::Own(held),
            _parsed: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_holds_its_room_until_it_is_taken() {
        let intake = Intake::new(ReviewTiming::default(), MAX_REVIEW_BYTES);
        let review = intake.budget.clone().try_acquire_many_owned(1 << 20).ok();
        let first = intake
            .answer(received(review), vec![b'x'; 5 << 20])
            .await
            .expect("room");
        assert_eq!(
            intake.budget.available_permits(),
            MAX_REVIEW_BYTES - (5 << 20)
        );
        // A second one does not fit beside it, as a review would not...
        assert_eq!(
            intake
                .answer(received(None), vec![b'y'; 5 << 20])
                .await
                .err(),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        // ...until the first has been taken whole.
        let taken = first.collect().await.expect("a body").to_bytes();
        assert_eq!(taken.len(), 5 << 20);
        drop(taken);
        assert_eq!(intake.budget.available_permits(), MAX_REVIEW_BYTES);
        assert!(intake
            .answer(received(None), vec![b'y'; 5 << 20])
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_not_reading_its_answers_gives_their_room_to_a_peer_holding_less() {
        // Answers of large pods, never read, held the budget until the
        // connection's idle timeout: the API server's reviews got 503.
        let intake = Intake::new(ReviewTiming::default(), MAX_REVIEW_BYTES);
        let pod = Connection::new([10, 0, 0, 1].into(), CancellationToken::new());
        let unread = intake
            .answer(
                Received {
                    bytes: Bytes::new(),
                    not_json: None,
                    text: Room::new(Some(intake.holders.enter(&pod))),
                    _parsed: None,
                },
                vec![b'x'; MAX_REVIEW_BYTES],
            )
            .await
            .expect("room");
        assert_eq!(intake.held(), MAX_REVIEW_BYTES);
        tokio::time::advance(TAKE_AFTER).await;
        let api_server = Connection::new([10, 0, 0, 2].into(), CancellationToken::new());
        let entry = intake.holders.enter(&api_server);
        let deadline = Instant::now() + Duration::from_secs(10);
        let review = intake.reserve_text(4096, deadline, Some(&entry));
        let room = tokio::time::timeout(Duration::from_millis(1), review)
            .await
            .expect("at once")
            .expect("room for the review");
        assert_eq!(room.num_permits(), 4096);
        assert!(pod.is_closing(), "the pod's connection is told to close");
        // The rest of the answer's room went back to the budget; closing
        // the connection drops the answer, as the server does.
        assert_eq!(intake.held(), 4096);
        drop(unread);
        assert_eq!(intake.held(), 4096);
    }

    /// A review from `peer` holding `bytes` of text, let go of when its
    /// connection is closed (as the server drops a closed connection's
    /// request); the connection.
    async fn holding(intake: &Intake, peer: [u8; 4], bytes: usize) -> Connection {
        let close = CancellationToken::new();
        let connection = Connection::new(peer.into(), close.clone());
        let holder = intake.holders.enter(&connection);
        let deadline = Instant::now() + Duration::from_secs(60);
        let permit = intake
            .reserve_text(bytes, deadline, Some(&holder))
            .await
            .expect("room");
        let mut room = Room::new(Some(holder));
        room.add(permit);
        tokio::spawn(async move {
            close.cancelled().await;
            drop(room);
        });
        connection
    }

    #[tokio::test(start_paused = true)]
    async fn room_taken_from_a_pod_goes_to_the_asker_not_the_pods_queue() {
        // Room a closed connection gives back goes to whoever waits first:
        // a pod with a review queued for it took it back, and the API
        // server's review, behind it, found no room a second later.
        let intake = Intake::new(ReviewTiming::default(), MAX_REVIEW_BYTES);
        let pod = [10, 0, 0, 1];
        let held = [
            holding(&intake, pod, 4 << 20).await,
            holding(&intake, pod, 4 << 20).await,
        ];
        let queued = tokio::spawn({
            let intake = intake.clone();
            async move { holding(&intake, pod, 4 << 20).await }
        });
        tokio::task::yield_now().await;
        tokio::time::advance(TAKE_AFTER).await;
        let api_server = Connection::new([10, 0, 0, 2].into(), CancellationToken::new());
        let entry = intake.holders.enter(&api_server);
        let review =
            intake.reserve_text(4096, Instant::now() + Duration::from_secs(10), Some(&entry));
        let room = tokio::time::timeout(Duration::from_millis(1), review)
            .await
            .expect("at once");
        let room = room.expect("room for the review");
        assert_eq!(room.num_permits(), 4096);
        assert_eq!(held.iter().filter(|c| c.is_closing()).count(), 1);
        // The rest of that hold is not enough for the pod's third review.
        tokio::task::yield_now().await;
        assert!(!queued.is_finished());
        queued.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn room_waited_for_and_room_taken_add_up() {
        // Room given to a review waiting in line, and room taken for it,
        // were never put together: holding all it asked for in two parts,
        // it got 503 (and the connection taken from was closed for nothing).
        let intake = Intake::new(ReviewTiming::default(), MAX_REVIEW_BYTES);
        let pod = [10, 0, 0, 1];
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(holding(&intake, pod, 2 << 20).await);
        }
        let answer = tokio::spawn({
            let intake = intake.clone();
            async move {
                let api_server = Connection::new([10, 0, 0, 2].into(), CancellationToken::new());
                let entry = intake.holders.enter(&api_server);
                let deadline = Instant::now() + Duration::from_secs(10);
                intake.reserve_text(4 << 20, deadline, Some(&entry)).await
            }
        });
        tokio::time::advance(Duration::from_millis(200)).await;
        // One of the pod's reviews is answered: its room goes to the line.
        held[0].close();
        tokio::time::advance(TAKE_AFTER).await;
        let room = answer.await.expect("task").expect("room");
        assert_eq!(room.num_permits(), 4 << 20);
        assert_eq!(held[1..].iter().filter(|c| c.is_closing()).count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_no_larger_than_its_review_never_waits() {
        // Reviews queued for room must not take the room a review already
        // worked through had: its answer would end in 503.
        let intake = Intake::new(ReviewTiming::default(), MAX_REVIEW_BYTES);
        let review = intake.budget.clone().try_acquire_many_owned(2 << 20).ok();
        let _everything_else = intake
            .budget
            .clone()
            .try_acquire_many_owned((MAX_REVIEW_BYTES - (2 << 20)) as u32)
            .expect("the rest");
        // A review waiting for more room than there is: first in line.
        let queued = tokio::spawn(intake.budget.clone().acquire_many_owned(3 << 20));
        tokio::task::yield_now().await;
        let body = intake.answer(received(review), vec![b'x'; 1 << 20]);
        let body = tokio::time::timeout(Duration::from_millis(1), body)
            .await
            .expect("no wait")
            .expect("room");
        drop(body);
        assert!(!queued.is_finished(), "still short of room");
        queued.abort();
    }
}
