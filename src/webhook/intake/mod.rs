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

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Request, StatusCode};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;

mod answer_body;
mod text_budget;

use super::fair_share::{Holder, Phase};
use super::parse_cost;
use super::turns::{self, Turns};
use crate::metrics::budgets::Budget;
use crate::metrics::WebhookMetrics;
use crate::server::Connection;
use text_budget::{Room, TextBudget};

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
    /// Bytes of review text (and answers), drawn as they arrive, shared
    /// among peers.
    text: TextBudget,
    /// Bytes of parsed pods, drawn once a review's text is in. Apart from
    /// the text's budget, so that reviews holding text and waiting for
    /// this wait only for reviews already past parsing, which hold
    /// nothing they wait on: a flood of large reviews cannot deadlock.
    parsed: Arc<Turns>,
    parsed_capacity: usize,
}

impl Budget for TextBudget {
    fn held(&self) -> usize {
        TextBudget::held(self)
    }

    fn total(&self) -> usize {
        self.capacity()
    }
}

/// The parsed pods' budget, as the metrics read it.
struct ParsedBudget {
    turns: Arc<Turns>,
    capacity: usize,
}

impl Budget for ParsedBudget {
    fn held(&self) -> usize {
        self.capacity.saturating_sub(self.turns.free())
    }

    fn total(&self) -> usize {
        self.capacity
    }
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
            text: TextBudget::new(budget),
            parsed: Turns::new(parsed),
            parsed_capacity: parsed,
        }
    }

    /// Counts the holds taken for another peer in `metrics`, and shows
    /// there how full both budgets are.
    pub fn metered(mut self, metrics: &WebhookMetrics) -> Self {
        self.text.counting(metrics.reviews_closed_for_room.clone());
        metrics
            .budgets
            .watch("review_text", Arc::new(self.text.clone()));
        metrics.budgets.watch(
            "parsed_reviews",
            Arc::new(ParsedBudget {
                turns: self.parsed.clone(),
                capacity: self.parsed_capacity,
            }),
        );
        self
    }

    /// Bytes of the text budget held now: review text and answers not
    /// taken yet.
    pub fn held(&self) -> usize {
        self.text.held()
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
        let connection = request.extensions().get::<Connection>();
        let mut text = self.text.room(connection);
        // While its body arrives a review may be closed for a peer with
        // fewer connections at a full listener; once whole, never.
        let receiving = connection.and_then(Connection::receiving_body);
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
                .text
                .reserve(data.len(), deadline, text.holder())
                .await?;
            text.add(share);
            bytes.extend_from_slice(&data);
        }
        drop(receiving);
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
                .text
                .reserve(extra, Instant::now() + BUDGET_WAIT, room.holder())
                .await?;
            room.add(more);
        }
        room.phase(Phase::Answering);
        Ok(answer_body::with_room(answer, room))
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
    use tokio::sync::OwnedSemaphorePermit;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn the_metrics_read_both_budgets_as_reviews_hold_them() {
        let metrics = WebhookMetrics::new();
        let intake = Intake::new(ReviewTiming::default(), MAX_REVIEW_BYTES).metered(&metrics);
        let gauge = |which: &str, budget: &str| {
            let series = format!(
                "bedrock_broker_webhook_memory_budget_{which}_bytes{{budget=\"{budget}\"}} "
            );
            let text = metrics.render();
            text.lines()
                .find_map(|l| l.strip_prefix(&series).map(str::to_owned))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        let parsed = (MAX_REVIEW_BYTES * PARSED_PER_TEXT).to_string();
        assert_eq!(gauge("limit", "parsed_reviews"), parsed);
        assert_eq!(gauge("limit", "review_text"), MAX_REVIEW_BYTES.to_string());

        let room = intake.parsed.ask(None, 1000).await.expect("room at once");
        let text = held(&intake, 300);
        assert_eq!(gauge("used", "parsed_reviews"), "1000");
        assert_eq!(gauge("used", "review_text"), "300");
        drop((room, text));
        assert_eq!(gauge("used", "parsed_reviews"), "0");
        assert_eq!(gauge("used", "review_text"), "0");
    }

    /// `bytes` of the intake's text budget, taken as a review would hold them.
    fn held(intake: &Intake, bytes: u32) -> Option<OwnedSemaphorePermit> {
        intake
            .text
            .budget
            .clone()
            .try_acquire_many_owned(bytes)
            .ok()
    }

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
        let review = held(&intake, 1 << 20);
        let first = intake
            .answer(received(review), vec![b'x'; 5 << 20])
            .await
            .expect("room");
        assert_eq!(
            intake.text.budget.available_permits(),
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
        assert_eq!(intake.text.budget.available_permits(), MAX_REVIEW_BYTES);
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
                    text: Room::new(Some(intake.text.holders.enter(&pod))),
                    _parsed: None,
                },
                vec![b'x'; MAX_REVIEW_BYTES],
            )
            .await
            .expect("room");
        assert_eq!(intake.held(), MAX_REVIEW_BYTES);
        tokio::time::advance(TAKE_AFTER).await;
        let api_server = Connection::new([10, 0, 0, 2].into(), CancellationToken::new());
        let entry = intake.text.holders.enter(&api_server);
        let deadline = Instant::now() + Duration::from_secs(10);
        let review = intake.text.reserve(4096, deadline, Some(&entry));
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
        let holder = intake.text.holders.enter(&connection);
        let deadline = Instant::now() + Duration::from_secs(60);
        let permit = intake
            .text
            .reserve(bytes, deadline, Some(&holder))
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
        let entry = intake.text.holders.enter(&api_server);
        let review =
            intake
                .text
                .reserve(4096, Instant::now() + Duration::from_secs(10), Some(&entry));
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
                let entry = intake.text.holders.enter(&api_server);
                let deadline = Instant::now() + Duration::from_secs(10);
                intake.text.reserve(4 << 20, deadline, Some(&entry)).await
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
        let review = held(&intake, 2 << 20);
        let _everything_else =
            held(&intake, (MAX_REVIEW_BYTES - (2 << 20)) as u32).expect("the rest");
        // A review waiting for more room than there is: first in line.
        let queued = tokio::spawn(intake.text.budget.clone().acquire_many_owned(3 << 20));
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
