//! The request side of InvokeModelWithBidirectionalStream: the client's
//! event stream, re-signed message by message on its way to Bedrock.
//!
//! The request itself is signed with the payload hash
//! `STREAMING-AWS4-HMAC-SHA256-EVENTS`; its signature seeds a chain in which
//! every message is wrapped in an envelope carrying `:date` and
//! `:chunk-signature`, each signature covering the previous one. The stream
//! ends with an envelope around an empty payload. aws-sigv4 does the signing
//! and aws-smithy-eventstream the framing; this module only keeps the chain.
//!
//! Clients may send bare messages (no AWS code at all) or messages already
//! wrapped and signed with throwaway credentials (an AWS SDK pointed at the
//! proxy): the envelope is taken off and the message inside re-signed.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sigv4::event_stream::{sign_empty_message, sign_message};
use aws_sigv4::sign::v4::SigningParams;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::event_stream::Message;
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::OwnedSemaphorePermit;

use super::error::ProxyError;
use super::gate::BodyBudget;
pub(super) use super::resigner::Resigner;
use super::resigner::{MAX_EVENT_STREAM_MESSAGE, SIGNING_COPIES};
use super::response_body::SharedHold;
use super::BoxError;
use crate::clock::SharedClock;

/// The payload hash of a request whose body is a signed event stream.
pub const STREAMING_PAYLOAD: &str = "STREAMING-AWS4-HMAC-SHA256-EVENTS";

/// The envelope header holding a message's signature.
pub(super) const CHUNK_SIGNATURE: &str = ":chunk-signature";

/// Why the client's event stream could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("could not read the client's event stream: {0}")]
    Read(BoxError),
    #[error("the client's event stream is malformed: {0}")]
    Malformed(#[from] aws_smithy_eventstream::error::Error),
    #[error("the client's event stream is malformed: a signed envelope holds {0} bytes after its message")]
    TrailingBytes(usize),
    #[error("an event-stream message from the client exceeds {0} bytes (the event-stream encoding's 16 MiB of payload, --max-body-bytes, or a third of --request-body-budget: signing a message holds it three times over)")]
    TooLarge(usize),
    #[error("cannot sign an event-stream message: {0}")]
    Sign(String),
    #[error("cannot encode a signed event-stream message: {0}")]
    Encode(aws_smithy_eventstream::error::Error),
    #[error("the client sent more messages after ending its event stream")]
    AfterEnd,
    #[error("the client's body ended inside an event-stream message ({0} bytes left over)")]
    Truncated(usize),
    #[error("the client's event stream is malformed: a message declares {0} bytes, too few for its own framing")]
    ShortLength(usize),
    #[error("bedrock-broker is busy (no room for an event-stream message in --request-body-budget); retry shortly")]
    Overloaded,
    #[error("the client sent nothing for {} after Bedrock's answer ended (--body-read-timeout)", humantime::format_duration(*.0))]
    Stalled(Duration),
    #[error("the answer was given up (the client left, or it was cut off): Bedrock's stream is ended too")]
    Abandoned,
    #[error("the client sent nothing for {} inside an event-stream message (--body-read-timeout)", humantime::format_duration(*.0))]
    StalledInMessage(Duration),
}

impl StreamError {
    /// How the request is answered when this cut it off before Bedrock's
    /// response headers: the client's fault, never a 5xx from Bedrock.
    fn proxy_error(&self) -> ProxyError {
        match self {
            // nginx's "client closed request": not an error of ours or Bedrock's.
            Self::Read(_) | Self::Abandoned => ProxyError::ClientClosed(self.to_string()),
            Self::Stalled(d) | Self::StalledInMessage(d) => ProxyError::BodyReadTimeout(*d),
            Self::Sign(_) | Self::Encode(_) => ProxyError::SigningFailed(self.to_string()),
            Self::Overloaded => ProxyError::Overloaded(
                "no room for an event-stream message in --request-body-budget",
            ),
            _ => ProxyError::InvalidEventStream(self.to_string()),
        }
    }
}

/// Why the re-signed body stopped early, for the request's answer when
/// Bedrock had not sent its response headers yet.
#[derive(Debug, Clone, Default)]
pub struct Aborted(Arc<OnceLock<ProxyError>>);

impl Aborted {
    pub fn reason(&self) -> Option<ProxyError> {
        self.0.get().cloned()
    }
}

/// Signs messages in one chain: same credentials, scope and running
/// signature for the life of the stream, the time of each message from the
/// clock.
pub struct ChainSigner {
    identity: Identity,
    region: String,
    name: String,
    clock: SharedClock,
    last_signature: String,
}

impl std::fmt::Debug for ChainSigner {
    // The identity holds the secret key: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainSigner")
            .field("region", &self.region)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ChainSigner {
    /// `seed` is the signature of the request that opened the stream.
    pub fn new(
        identity: Identity,
        region: impl Into<String>,
        name: impl Into<String>,
        clock: SharedClock,
        seed: String,
    ) -> Self {
        Self {
            identity,
            region: region.into(),
            name: name.into(),
            clock,
            last_signature: seed,
        }
    }

    /// Wraps `message` in a signed envelope, or ends the chain when `None`.
    pub(super) fn sign(&mut self, message: Option<&Message>) -> Result<Message, StreamError> {
        let params = SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(&self.name)
            .time(self.clock.now())
            .settings(())
            .build()
            .map_err(|e| StreamError::Sign(e.to_string()))?;
        let signed = match message {
            Some(message) => sign_message(message, &self.last_signature, &params),
            None => sign_empty_message(&self.last_signature, &params),
        }
        .map_err(|e| StreamError::Sign(e.to_string()))?;
        let (envelope, signature) = signed.into_parts();
        self.last_signature = signature;
        Ok(envelope)
    }
}

/// One stream's re-signing, between polls.
struct State<B> {
    client: B,
    resigner: Resigner,
    /// What the client sent and the resigner has not taken yet.
    rest: Bytes,
    aborted: Aborted,
    done: bool,
    budget: BodyBudget,
    /// The budget the message being received holds, or the envelope last
    /// given out.
    held: Option<OwnedSemaphorePermit>,
    /// The request is in flight while its messages are still sent,
    /// whether or not Bedrock has ended its answer.
    occupancy: Arc<SharedHold>,
    /// The silence allowed once the answer has ended.
    patience: Duration,
}

/// The body sent upstream: the client's body, re-signed as it arrives. A
/// message is forwarded as soon as its last byte is in; nothing waits for
/// the end of the body. If it has to stop early, [`Aborted`] says why.
///
/// The bytes of an unfinished message are held, drawn from `budget` as
/// they arrive and given back as messages complete: without it, six
/// streams each holding most of a 24 MiB message took 224 MB beside the
/// budget.
pub fn resigned<B>(
    client: B,
    signer: ChainSigner,
    max_message_bytes: usize,
    budget: BodyBudget,
    occupancy: Arc<SharedHold>,
    patience: Duration,
) -> (UnsyncBoxBody<Bytes, StreamError>, Aborted)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let aborted = Aborted::default();
    // A message the whole budget cannot sign would wait for room that
    // never comes.
    let max_message_bytes = max_message_bytes
        .min(budget.total() / SIGNING_COPIES)
        .min(MAX_EVENT_STREAM_MESSAGE);
    let state = State {
        client,
        resigner: Resigner::new(signer, max_message_bytes),
        rest: Bytes::new(),
        aborted: aborted.clone(),
        done: false,
        budget,
        held: None,
        occupancy,
        patience,
    };
    let frames = futures::stream::unfold(state, |mut state| async move {
        loop {
            if state.done {
                return None;
            }
            // Polled again: the envelope given out last time is on its way
            // (hyper asks for more once it is); what stays held is the
            // message being received.
            let keep = state.charge();
            release(&mut state.held, keep);
            if state.rest.is_empty() {
                let mid_message = state.resigner.mid_message();
                let next = next_frame(
                    &mut state.client,
                    &state.occupancy,
                    state.patience,
                    mid_message,
                );
                match next.await {
                    // Trailers (and empty frames) mean nothing in an event stream.
                    Ok(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) if !data.is_empty() => state.rest = data,
                        _ => continue,
                    },
                    Ok(Some(Err(e))) => {
                        let e = StreamError::Read(e.into());
                        return Some((state.fail(e), state));
                    }
                    Ok(None) => {
                        state.done = true;
                        match state.resigner.finish() {
                            Ok(Some(end)) => return Some((Ok(Frame::data(end)), state)),
                            Ok(None) => return None,
                            Err(e) => return Some((state.fail(e), state)),
                        }
                    }
                    Err(e) => return Some((state.fail(e), state)),
                }
            }
            // One message at a time: its whole charge is held from its
            // length on, never a part of it while waiting for the rest.
            let piece = state
                .rest
                .split_to(state.resigner.piece_len(state.rest.len()));
            let want = state.charge_with(piece.len());
            let room = tokio::select! {
                biased;
                () = state.occupancy.abandoned() => Err(StreamError::Abandoned),
                room = hold(&state.budget, &mut state.held, want) => room,
            };
            let next = match room.and_then(|()| state.resigner.push_piece(&piece)) {
                Ok(None) => continue,
                Ok(Some(envelope)) => {
                    // Held until hyper asks for more, once it has sent it.
                    release(&mut state.held, counted(envelope.len()));
                    Ok(Frame::data(envelope))
                }
                Err(e) => state.fail(e),
            };
            return Some((next, state));
        }
    });
    (StreamBody::new(frames).boxed_unsync(), aborted)
}

impl<B> State<B> {
    /// What the message being received holds of the budget: signing it
    /// takes its declared length three times over (before that is known,
    /// its buffer, which a small message's leaves to the next).
    fn charge(&self) -> usize {
        self.charge_with(0)
    }

    /// The same, with `more` of its bytes in.
    fn charge_with(&self, more: usize) -> usize {
        let buffer = self.resigner.buffered().max(self.resigner.pending() + more);
        match self.resigner.declared() {
            Some(length) => counted((SIGNING_COPIES * length).max(buffer)),
            None => counted(buffer),
        }
    }

    /// Ends the stream on `e`, saying why.
    fn fail(&mut self, e: StreamError) -> Result<Frame<Bytes>, StreamError> {
        // The response may already be streaming: all that can be done then
        // is to abort the upstream request and say why here. A client
        // hanging up is ordinary (a call ended).
        match e {
            StreamError::Read(_) | StreamError::Stalled(_) | StreamError::Abandoned => {
                tracing::debug!(error = %e, "bidirectional stream ended by the client")
            }
            _ => tracing::warn!(error = %e, "bidirectional stream aborted"),
        }
        let _ = self.aborted.0.set(e.proxy_error());
        self.done = true;
        Err(e)
    }
}

/// The client's next frame. While Bedrock answers, the client may be
/// silent as long as it likes (Bedrock ends a session it finds idle); once
/// the answer has ended (the response let go of its share of the hold),
/// nothing else would end a stream the client leaves open, and its slot
/// in `--max-requests` with it: a whole `patience` of silence after the
/// end is seen does then (the end is seen at most `patience` after it
/// came, so the cut comes between one and two `patience`s after it).
/// Inside a message (`mid_message`), a `patience` of silence is never the
/// session's: the message holds its room in the budget, and a client that
/// sent a few bytes of a large one would keep it from everyone else.
async fn next_frame<B: Body + Unpin>(
    client: &mut B,
    occupancy: &Arc<SharedHold>,
    patience: Duration,
    mid_message: bool,
) -> Result<Option<Result<Frame<B::Data>, B::Error>>, StreamError> {
    let mut answer_over = false;
    loop {
        let waited = tokio::select! {
            biased;
            () = occupancy.abandoned() => return Err(StreamError::Abandoned),
            waited = tokio::time::timeout(patience, client.frame()) => waited,
        };
        match waited {
            Ok(frame) => return Ok(frame),
            Err(_) if mid_message => return Err(StreamError::StalledInMessage(patience)),
            Err(_) if answer_over => return Err(StreamError::Stalled(patience)),
            Err(_) => answer_over = occupancy.only_the_body_holds(),
        }
    }
}

/// What a message may hold outside the budget: an audio session's
/// messages (a few KiB, signing one holds under 16 KiB) then never wait
/// for, or lose to, room that large bodies hold. One message at a time a
/// stream, at most `--max-requests` streams: 8 MiB for the default 512.
const UNCOUNTED: usize = 16 * 1024;

/// The part of `bytes` drawn from the budget.
fn counted(bytes: usize) -> usize {
    if bytes <= UNCOUNTED {
        0
    } else {
        bytes
    }
}

/// Makes `held` cover `bytes`, drawing the difference from `budget`.
async fn hold(
    budget: &BodyBudget,
    held: &mut Option<OwnedSemaphorePermit>,
    bytes: usize,
) -> Result<(), StreamError> {
    let have = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
    if bytes <= have {
        return Ok(());
    }
    let more = budget
        .reserve(bytes - have)
        .await
        .map_err(|_| StreamError::Overloaded)?;
    match held.as_mut() {
        Some(h) => h.merge(more),
        None => *held = Some(more),
    }
    Ok(())
}

/// Gives back what `held` has beyond `bytes`.
fn release(held: &mut Option<OwnedSemaphorePermit>, bytes: usize) {
    if let Some(h) = held.as_mut() {
        let extra = h.num_permits().saturating_sub(bytes);
        if extra > 0 {
            drop(h.split(extra));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::resigner::KEPT_CAPACITY;
    use super::*;
    use crate::clock::Clock;
    use crate::proxy::response_body::Occupancy;
    use aws_credential_types::Credentials;
    use aws_smithy_eventstream::frame::{read_message_from, write_message_to};
    use aws_smithy_types::event_stream::{Header, HeaderValue};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[derive(Debug)]
    struct Fixed(SystemTime);
    impl Clock for Fixed {
        fn now(&self) -> SystemTime {
            self.0
        }
    }

    fn signer(seed: &str) -> ChainSigner {
        let creds = Credentials::new("AKID", "secret", None, None, "test");
        ChainSigner::new(
            Identity::from(creds),
            "us-east-1",
            "bedrock",
            Arc::new(Fixed(UNIX_EPOCH + Duration::from_secs(1_800_000_000))),
            seed.to_owned(),
        )
    }

    fn chunk(text: &str) -> Message {
        Message::new(Bytes::from(format!(r#"{{"bytes":"{text}"}}"#)))
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String("chunk".into()),
            ))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ))
    }

    fn encode(message: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        write_message_to(message, &mut out).unwrap();
        out
    }

    fn decode_all(mut bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            out.push(read_message_from(&bytes[..len]).unwrap());
            bytes = &bytes[len..];
        }
        out
    }

    fn signature_of(envelope: &Message) -> String {
        let h = envelope
            .headers()
            .iter()
            .find(|h| h.name().as_str() == CHUNK_SIGNATURE)
            .unwrap();
        match h.value() {
            HeaderValue::ByteArray(b) => hex::encode(b),
            other => panic!("{other:?}"),
        }
    }

    /// A gate whose body budget is `bytes`.
    fn gate_with_budget(bytes: usize) -> crate::proxy::gate::GateState {
        crate::proxy::gate::GateState::new(crate::proxy::config::Gate {
            allowed_hosts: Vec::new(),
            token: None,
            body_read_timeout: Duration::from_secs(1),
            body_min_rate: None,
            body_budget: bytes,
            body_budget_wait: Duration::from_millis(10),
            max_requests: 4,
        })
    }

    /// A hold on nothing, for tests of other things.
    fn unheld() -> Arc<SharedHold> {
        let gauge = prometheus::IntGauge::new("in_flight", "test").unwrap();
        Occupancy::new(crate::proxy::response_body::InFlight::new(&gauge), None).share()
    }

    type ClientFrames =
        futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, std::convert::Infallible>>;

    /// A client's stream re-signed with a share of `occupancy`, and the
    /// sender of the client's frames.
    fn shared_stream(
        occupancy: &mut Occupancy,
        patience: Duration,
    ) -> (UnsyncBoxBody<Bytes, StreamError>, ClientFrames) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (body, _) = resigned(
            http_body_util::StreamBody::new(rx),
            signer("s"),
            1 << 20,
            gate_with_budget(1 << 20).body_budget(),
            occupancy.share(),
            patience,
        );
        (body, tx)
    }

    #[tokio::test]
    async fn the_request_is_in_flight_while_its_messages_are_still_sent() {
        use crate::proxy::response_body::InFlight;

        let gauge = prometheus::IntGauge::new("in_flight", "test").unwrap();
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let slot = slots.clone().try_acquire_owned().unwrap();
        let mut occupancy = Occupancy::new(InFlight::new(&gauge), Some(slot));
        let (mut body, tx) = shared_stream(&mut occupancy, Duration::from_secs(30));
        // Bedrock ended its answer: the response lets go of its share.
        drop(occupancy);
        assert_eq!(gauge.get(), 1);
        assert!(slots.clone().try_acquire_owned().is_err());
        tx.unbounded_send(Ok(Frame::data(Bytes::from(encode(&chunk("late"))))))
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok(), "still forwarded");
        drop(tx);
        while let Some(frame) = body.frame().await {
            frame.unwrap();
        }
        drop(body);
        assert_eq!(gauge.get(), 0);
        assert!(slots.try_acquire_owned().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_may_wait_while_bedrock_answers_not_after() {
        use crate::proxy::response_body::InFlight;

        let gauge = prometheus::IntGauge::new("in_flight", "test").unwrap();
        let mut occupancy = Occupancy::new(InFlight::new(&gauge), None);
        let patience = Duration::from_secs(30);
        let (mut body, _tx) = shared_stream(&mut occupancy, patience);
        // Bedrock still answering: any silence is the session's own.
        let waited = tokio::time::timeout(patience * 3, body.frame()).await;
        assert!(waited.is_err(), "still waiting for the client");
        // The answer ended: a whole `patience` of silence once that is
        // seen ends the stream, however long the client was silent before.
        drop(occupancy);
        let ended = tokio::time::Instant::now();
        assert!(matches!(
            body.frame().await,
            Some(Err(StreamError::Stalled(d))) if d == patience
        ));
        let cut = ended.elapsed();
        assert!(cut >= patience && cut <= patience * 2, "{cut:?}");
        drop(body);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_answer_ends_the_input_and_its_hold() {
        use crate::proxy::response_body::InFlight;

        // The answer cut off (--stream-idle-timeout) or its client gone:
        // the input went on being signed and sent to Bedrock, its stream
        // and the request's slot held, for as long as the client sent.
        let gauge = prometheus::IntGauge::new("in_flight", "test").unwrap();
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let slot = slots.clone().try_acquire_owned().unwrap();
        let mut occupancy = Occupancy::new(InFlight::new(&gauge), Some(slot));
        let (mut body, tx) = shared_stream(&mut occupancy, Duration::from_secs(30));
        tx.unbounded_send(Ok(Frame::data(Bytes::from(encode(&chunk("one"))))))
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());

        occupancy.abandon();
        drop(occupancy);
        // The client still sending changes nothing: the input ends in an
        // error, which resets Bedrock's stream.
        tx.unbounded_send(Ok(Frame::data(Bytes::from(encode(&chunk("two"))))))
            .unwrap();
        assert!(matches!(
            body.frame().await,
            Some(Err(StreamError::Abandoned))
        ));
        // The hold goes with the input (Bedrock's stream), not before.
        assert_eq!(gauge.get(), 1);
        assert!(slots.clone().try_acquire_owned().is_err());
        assert!(body.frame().await.is_none());
        assert_eq!(gauge.get(), 0);
        assert!(slots.clone().try_acquire_owned().is_ok());
    }

    type Frames =
        futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, std::convert::Infallible>>;

    fn send(tx: &Frames, bytes: &[u8]) {
        tx.unbounded_send(Ok(Frame::data(Bytes::copy_from_slice(bytes))))
            .unwrap();
    }

    /// A client's stream re-signed against `budget`, and its sender.
    fn budgeted_stream(
        seed: &str,
        max_message_bytes: usize,
        budget: BodyBudget,
    ) -> (UnsyncBoxBody<Bytes, StreamError>, Aborted, Frames) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (body, aborted) = resigned(
            http_body_util::StreamBody::new(rx),
            signer(seed),
            max_message_bytes,
            budget,
            unheld(),
            Duration::from_secs(30),
        );
        (body, aborted, tx)
    }

    const MIB: usize = 1 << 20;

    #[tokio::test(start_paused = true)]
    async fn a_message_holds_what_signing_it_takes_from_its_length_on() {
        let gate = gate_with_budget(5 * MIB);
        let budget = gate.body_budget();
        let message = encode(&chunk(&"x".repeat(MIB)));
        let charge = SIGNING_COPIES * message.len();

        // Stream A has sent the first 100 KiB of its message: the whole
        // charge is held from its length on, not a part of it per frame
        // (streams holding parts of what they need while waiting for the
        // rest reset one another's sessions with room to spare).
        let (mut body_a, _, tx_a) = budgeted_stream("a", 8 * MIB, gate.body_budget());
        let a = tokio::spawn(async move {
            let mut frames = 0;
            while let Some(frame) = body_a.frame().await {
                frame?;
                frames += 1;
            }
            Ok::<_, StreamError>(frames)
        });
        send(&tx_a, &message[..100 * 1024]);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(budget.reserve(5 * MIB - charge + 1).await.is_err());
        drop(budget.reserve(5 * MIB - charge).await.unwrap());

        // Stream B needs the same: it waits for A's room, then is refused
        // (the wait is short here), holding nothing meanwhile.
        let (mut body_b, aborted_b, tx_b) = budgeted_stream("b", 8 * MIB, gate.body_budget());
        send(&tx_b, &message[..MIB]);
        assert!(matches!(
            body_b.frame().await,
            Some(Err(StreamError::Overloaded))
        ));
        assert_eq!(
            aborted_b.reason().map(|e| e.code().name),
            Some("overloaded")
        );

        // A's message completes: its room is given back.
        send(&tx_a, &message[100 * 1024..]);
        drop(tx_a);
        assert_eq!(
            a.await.unwrap().unwrap(),
            2,
            "the message and the end envelope"
        );
        drop(budget.reserve(5 * MIB).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_as_large_as_allowed_fits_beside_the_next_bytes() {
        // The largest message the budget allows, with the next message's
        // first bytes in the same frame: asking for room for both at once
        // asked for more than the whole budget.
        let gate = gate_with_budget(3 * MIB);
        let (mut body, _, tx) = budgeted_stream("m", 8 * MIB, gate.body_budget());
        let mut text = "x".repeat(MIB - 200);
        let largest = loop {
            let m = encode(&chunk(&text));
            if m.len() >= MIB {
                break m;
            }
            text.push('x');
        };
        assert!(
            largest.len() <= MIB && largest.len() > MIB - 8,
            "{}",
            largest.len()
        );
        let next = encode(&chunk("next"));
        let mut frame = largest.clone();
        frame.extend_from_slice(&next[..10]);
        send(&tx, &frame);
        assert!(body.frame().await.unwrap().is_ok(), "the largest message");
        send(&tx, &next[10..]);
        assert!(body.frame().await.unwrap().is_ok(), "and the next");
    }

    #[tokio::test(start_paused = true)]
    async fn small_messages_do_not_wait_for_room_large_bodies_hold() {
        // Another request holds the whole budget: a voice session's next
        // audio chunk was refused (the session reset) after the wait.
        let gate = gate_with_budget(MIB);
        let all = gate.body_budget().reserve(MIB).await.unwrap();
        let (mut body, _, tx) = budgeted_stream("s", 8 * MIB, gate.body_budget());
        for i in 0..3 {
            send(
                &tx,
                &encode(&chunk(&format!("audio {i} {}", "z".repeat(3000)))),
            );
            assert!(body.frame().await.unwrap().is_ok(), "chunk {i} forwarded");
        }
        drop(all);
    }

    #[tokio::test(start_paused = true)]
    async fn an_envelope_given_out_holds_the_budget_until_the_next_poll() {
        let gate = gate_with_budget(4 * MIB);
        let budget = gate.body_budget();
        let (mut body, _, tx) = budgeted_stream("g", 8 * MIB, gate.body_budget());
        send(&tx, &encode(&chunk(&"x".repeat(MIB + MIB / 8))));
        let envelope = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(envelope.len() > MIB);
        // Hyper has the envelope and sends it before asking for more.
        assert!(budget.reserve(4 * MIB - envelope.len() + 1).await.is_err());
        // Asking for more: it has gone out.
        let waiting = tokio::time::timeout(Duration::from_millis(10), body.frame()).await;
        assert!(waiting.is_err(), "the client has sent nothing more");
        drop(budget.reserve(4 * MIB).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_the_budget_cannot_sign_is_refused_at_its_length() {
        // A third of the budget: signing holds a message three times over.
        let gate = gate_with_budget(3 * MIB);
        let (mut body, aborted, tx) = budgeted_stream("l", 8 * MIB, gate.body_budget());
        let message = encode(&chunk(&"x".repeat(2 * MIB)));
        send(&tx, &message[..4096]);
        assert!(matches!(
            body.frame().await,
            Some(Err(StreamError::TooLarge(limit))) if limit == MIB
        ));
        assert_eq!(
            aborted.reason().map(|e| e.code().name),
            Some("invalid_event_stream")
        );
    }

    #[test]
    fn a_length_too_short_for_its_own_framing_is_refused() {
        // A length under the prelude's 12 bytes: the decoder, waiting for a
        // prelude, would never see the message end.
        for length in [0u32, 4, 11] {
            let mut r = Resigner::new(signer("seed"), MIB);
            let mut bytes = length.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0; 20]);
            assert!(
                matches!(r.push(&bytes), Err(StreamError::ShortLength(_))),
                "{length}"
            );
        }
    }

    #[test]
    fn a_frame_completing_a_message_past_the_limit_is_refused() {
        // Over HTTP/2 a 113,407-byte message passed a 100,000-byte limit:
        // only what was left pending after a frame was checked.
        let message = encode(&chunk(&"x".repeat(113_000)));
        assert!(message.len() > 100_000);
        let mut r = Resigner::new(signer("seed"), 100_000);
        assert!(matches!(
            r.push(&message[..16_384]),
            Err(StreamError::TooLarge(100_000))
        ));
        let mut whole = Resigner::new(signer("seed"), 100_000);
        assert!(matches!(
            whole.push(&message),
            Err(StreamError::TooLarge(100_000))
        ));
    }

    #[test]
    fn a_large_message_does_not_leave_its_buffer_behind() {
        let message = encode(&chunk(&"x".repeat(1 << 20)));
        let mut r = Resigner::new(signer("seed"), 2 << 20);
        let mut most = 0;
        for piece in message.chunks(64 * 1024) {
            r.push(piece).unwrap();
            most = most.max(r.buffered());
        }
        assert!(most >= 1 << 19, "the message was held: {most}");
        assert_eq!(r.pending(), 0);
        assert!(r.buffered() <= KEPT_CAPACITY, "{}", r.buffered());
        // A message just short of what its buffer grew to: taking it out
        // left `capacity()` (counted from the buffer's new start) small
        // while the whole allocation stayed, 16 MiB for a 16 MiB message.
        let message = encode(&chunk(&"x".repeat(40 * 1024 - 200)));
        let mut r = Resigner::new(signer("seed"), 2 << 20);
        for piece in message.chunks(1000) {
            r.push(piece).unwrap();
        }
        let next = encode(&chunk("next"));
        r.push(&next[..20]).unwrap();
        assert!(
            r.buffered() <= 2 * KEPT_CAPACITY,
            "the 40 KiB message's buffer was kept: {}",
            r.buffered()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_silent_inside_a_message_lets_go_of_its_room() {
        // Five bytes of a 16 MiB message held three times that of the
        // budget for as long as the client stayed silent (Bedrock still
        // answering): every other body got 503.
        use crate::proxy::response_body::InFlight;

        let gate = gate_with_budget(8 * MIB);
        let budget = gate.body_budget();
        let gauge = prometheus::IntGauge::new("in_flight", "test").unwrap();
        let mut occupancy = Occupancy::new(InFlight::new(&gauge), None);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let patience = Duration::from_secs(30);
        let (mut body, aborted) = resigned(
            http_body_util::StreamBody::new(rx),
            signer("q"),
            8 * MIB,
            gate.body_budget(),
            occupancy.share(),
            patience,
        );
        let message = encode(&chunk(&"x".repeat(2 * MIB)));
        send(&tx, &message[..5]);
        let started = tokio::time::Instant::now();
        assert!(matches!(
            body.frame().await,
            Some(Err(StreamError::StalledInMessage(d))) if d == patience
        ));
        assert_eq!(started.elapsed(), patience);
        assert_eq!(
            aborted.reason().map(|e| e.code().name),
            Some("body_read_timeout")
        );
        drop(body);
        drop(budget.reserve(8 * MIB).await.unwrap());
        drop(occupancy);
    }

    #[test]
    fn bare_and_wrapped_messages_sign_alike_and_the_chain_continues() {
        let first = chunk("a");
        let second = chunk("b");

        // Bare messages, split at an awkward byte boundary.
        let mut bare = Resigner::new(signer("seed"), 1 << 20);
        let bytes = [encode(&first), encode(&second)].concat();
        let mut out = bare.push(&bytes[..5]).unwrap().to_vec();
        out.extend_from_slice(&bare.push(&bytes[5..]).unwrap());
        out.extend_from_slice(&bare.finish().unwrap().unwrap());
        let bare_out = decode_all(&out);

        // The same messages inside envelopes signed by someone else, ended
        // by the client's own empty envelope.
        let mut theirs = signer("client-seed");
        let mut wrapped_in = Vec::new();
        for m in [&first, &second] {
            wrapped_in.extend(encode(&theirs.sign(Some(m)).unwrap()));
        }
        wrapped_in.extend(encode(&theirs.sign(None).unwrap()));
        let mut wrapped = Resigner::new(signer("seed"), 1 << 20);
        let out = wrapped.push(&wrapped_in).unwrap();
        assert_eq!(wrapped.finish().unwrap(), None, "no second end envelope");
        let wrapped_out = decode_all(&out);

        assert_eq!(bare_out.len(), 3);
        assert_eq!(bare_out, wrapped_out);
        assert_eq!(
            read_message_from(bare_out[0].payload().clone()).unwrap(),
            first
        );
        assert!(bare_out[2].payload().is_empty());
        // Each signature covers the previous: all differ, and the first is
        // not what the client's own chain produced.
        let sigs: Vec<String> = bare_out.iter().map(signature_of).collect();
        assert_ne!(sigs[0], sigs[1]);
        assert_ne!(sigs[1], sigs[2]);
        let client_first = signature_of(&decode_all(&wrapped_in)[0]);
        assert_ne!(sigs[0], client_first);
    }

    // Signatures computed by the fake Bedrock's own Python verifier
    // (tests/fakes/fake_aws/eventstream_signing.py, EventStreamVerifier) for the same inputs:
    // secret "secret", us-east-1/bedrock, 2027-01-15T08:00:00Z, seed "seed".
    #[test]
    fn the_chain_matches_an_independent_implementation() {
        let inner = encode(&chunk("x"));
        assert_eq!(
            hex::encode(&inner),
            "000000470000002a544a92e60b3a6576656e742d747970650700056368756e6b0d3a6d6573736167652d\
             747970650700056576656e747b226279746573223a2278227dce826254"
        );
        let mut r = Resigner::new(signer("seed"), 1 << 20);
        let mut out = r.push(&inner).unwrap().to_vec();
        out.extend_from_slice(&r.finish().unwrap().unwrap());
        let sigs: Vec<String> = decode_all(&out).iter().map(signature_of).collect();
        assert_eq!(
            sigs,
            [
                "41441f8ad99985928b64a627191bcabb4a6ba2e97fbc809803d60504afc15c47",
                "a1c9aba1db9f6e8d30647710e5ccf0cbf33aa6d58ec8b1b6b3d7da0663926018",
            ]
        );
    }

    #[test]
    fn a_length_prefix_is_not_trusted_beyond_the_limit() {
        let mut r = Resigner::new(signer("seed"), 64);
        // A prelude claiming a 1 GiB message, then more bytes than the limit.
        let mut bytes = (1u32 << 30).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&[0; 100]);
        assert!(matches!(r.push(&bytes), Err(StreamError::TooLarge(64))));
    }

    #[test]
    fn an_envelope_must_hold_exactly_one_message() {
        let mut payload = encode(&chunk("x"));
        payload.extend_from_slice(b"extra");
        let envelope = Message::new(Bytes::from(payload)).add_header(Header::new(
            CHUNK_SIGNATURE,
            HeaderValue::ByteArray(Bytes::from_static(&[0; 32])),
        ));
        let mut r = Resigner::new(signer("seed"), 1 << 20);
        assert!(matches!(
            r.push(&encode(&envelope)),
            Err(StreamError::TrailingBytes(5))
        ));
    }

    #[test]
    fn client_faults_are_answered_as_such() {
        let e = StreamError::AfterEnd.proxy_error();
        assert_eq!(
            (e.status().as_u16(), e.code().name),
            (400, "invalid_event_stream")
        );
        let e = StreamError::TooLarge(1).proxy_error();
        assert_eq!(e.status().as_u16(), 400);
    }

    #[test]
    fn messages_after_the_end_and_truncated_bodies_are_errors() {
        let mut theirs = signer("c");
        let end = encode(&theirs.sign(None).unwrap());
        let mut r = Resigner::new(signer("seed"), 1 << 20);
        r.push(&end).unwrap();
        assert!(matches!(
            r.push(&encode(&chunk("late"))),
            Err(StreamError::AfterEnd)
        ));

        let mut r = Resigner::new(signer("seed"), 1 << 20);
        let whole = encode(&chunk("x"));
        assert!(r.push(&whole[..whole.len() - 1]).unwrap().is_empty());
        assert!(matches!(r.finish(), Err(StreamError::Truncated(_))));
    }

    #[test]
    fn a_corrupted_message_is_refused() {
        let mut bytes = encode(&chunk("x"));
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // breaks the message CRC
        let mut r = Resigner::new(signer("seed"), 1 << 20);
        assert!(matches!(r.push(&bytes), Err(StreamError::Malformed(_))));
    }

    #[test]
    fn debug_hides_the_credentials() {
        let shown = format!("{:?}", signer("seed"));
        assert!(!shown.contains("secret"), "{shown}");
        assert!(!shown.contains("seed"), "{shown}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Any bytes, split anywhere: the resigner never panics, never
            /// holds more than its limit, and everything it emits is a
            /// well-formed signed envelope.
            #[test]
            fn any_client_bytes_are_refused_or_resigned_within_bounds(
                chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..8),
            ) {
                let mut r = Resigner::new(signer("seed"), 4096);
                for chunk in &chunks {
                    match r.push(chunk) {
                        Ok(out) => {
                            prop_assert!(r.pending() <= 4096);
                            for message in decode_all(&out) {
                                prop_assert!(message.headers().iter().any(|h| h.name().as_str() == CHUNK_SIGNATURE));
                            }
                        }
                        Err(_) => return Ok(()),
                    }
                }
                let _ = r.finish();
            }

            /// Real messages split at any boundaries come out re-signed, in
            /// order, one envelope each, plus the end of the stream.
            #[test]
            fn real_messages_survive_any_split(
                texts in prop::collection::vec("[a-z]{0,40}", 1..6),
                cut in any::<prop::sample::Index>(),
            ) {
                let bytes: Vec<u8> = texts.iter().flat_map(|t| encode(&chunk(t))).collect();
                let at = cut.index(bytes.len() + 1);
                let mut r = Resigner::new(signer("seed"), 1 << 20);
                let mut out = r.push(&bytes[..at]).unwrap().to_vec();
                out.extend_from_slice(&r.push(&bytes[at..]).unwrap());
                out.extend_from_slice(&r.finish().unwrap().unwrap());
                let envelopes = decode_all(&out);
                prop_assert_eq!(envelopes.len(), texts.len() + 1);
                for (envelope, text) in envelopes.iter().zip(&texts) {
                    let inner = read_message_from(envelope.payload().clone()).unwrap();
                    prop_assert_eq!(inner, chunk(text));
                }
            }
        }
    }
}
