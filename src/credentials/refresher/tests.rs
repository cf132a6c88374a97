use super::*;
use crate::clock::{Clock, TokioClock};
use crate::credentials::{BoxFuture, Fetched};
use crate::metrics::Metrics;
use aws_credential_types::Credentials;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

mod clock;

fn policy() -> RefreshPolicy {
    RefreshPolicy {
        jitter: 0.0,
        backoff_jitter: false,
        ..RefreshPolicy::default()
    }
}

/// A source that plays back a script of results and records call times.
#[derive(Debug)]
struct Scripted {
    clock: TokioClock,
    /// How far the node's clock is ahead of STS's.
    node_ahead: Duration,
    script: Mutex<VecDeque<Result<Duration, &'static str>>>,
    calls: Mutex<Vec<SystemTime>>,
    /// STS's time when it last answered, refusals included.
    answered: Mutex<Option<SystemTime>>,
    /// The credentials last handed out, for `Err(AGAIN)`.
    last: Mutex<Option<Credentials>>,
    /// The cell, for `Err(ASKED)`.
    cell: Mutex<Option<Arc<CredentialCell>>>,
}

/// A script entry: a failure during which a request asks for a refresh
/// (Bedrock rejected its credentials while the attempt ran).
const ASKED: &str = "asked";

/// A script entry: the same credentials as the last fetch, as IMDS and
/// container endpoints hand them out until shortly before they expire.
const AGAIN: &str = "again";

impl CredentialSource for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn last_answer_time(&self) -> Option<SystemTime> {
        *self.answered.lock().unwrap()
    }
    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        let now = self.clock.now();
        let server_now = now - self.node_ahead;
        self.calls.lock().unwrap().push(now);
        *self.answered.lock().unwrap() = Some(server_now);
        let next = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Err("script exhausted"));
        let credentials = match next {
            Ok(lifetime) => Some(Credentials::new(
                format!("AKID{}", lifetime.as_secs()),
                "secret",
                Some("token".into()),
                Some(server_now + lifetime),
                "scripted",
            )),
            Err(AGAIN) => self.last.lock().unwrap().clone(),
            Err(_) => None,
        };
        if let Some(c) = &credentials {
            *self.last.lock().unwrap() = Some(c.clone());
        }
        if next == Err(ASKED) {
            if let Some(cell) = self.cell.lock().unwrap().as_ref() {
                cell.request_refresh();
            }
        }
        Box::pin(async move {
            match (credentials, next) {
                (Some(credentials), _) => Ok(Fetched {
                    credentials,
                    principal: None,
                    token_expiry: TokenExpiry::NoToken,
                    server_time: Some(server_now),
                }),
                (None, Ok(_)) => unreachable!("credentials are made for every Ok"),
                (None, Err(code)) => Err(SourceError::Service {
                    operation: "AssumeRoleWithWebIdentity",
                    code: code.into(),
                    message: "scripted".into(),
                    status: 400,
                    class: ErrorClass::Transient,
                }),
            }
        })
    }
}

struct Harness {
    source: Arc<Scripted>,
    cell: Arc<CredentialCell>,
    metrics: Metrics,
    clock: TokioClock,
    start: SystemTime,
    shutdown: CancellationToken,
}

fn start(script: Vec<Result<Duration, &'static str>>) -> Harness {
    start_ahead(script, Duration::ZERO)
}

/// Starts a refresher on a node whose clock is `node_ahead` of STS's.
fn start_ahead(script: Vec<Result<Duration, &'static str>>, node_ahead: Duration) -> Harness {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = TokioClock::starting_at(start);
    let source = Arc::new(Scripted {
        clock: clock.clone(),
        node_ahead,
        script: Mutex::new(script.into()),
        calls: Mutex::new(Vec::new()),
        answered: Mutex::new(None),
        last: Mutex::new(None),
        cell: Mutex::new(None),
    });
    let cell = Arc::new(CredentialCell::new());
    *source.cell.lock().unwrap() = Some(cell.clone());
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let refresher = Refresher::new(
        source.clone(),
        cell.clone(),
        policy(),
        Arc::new(clock.clone()),
        metrics.credentials.clone(),
    );
    tokio::spawn(refresher.run(shutdown.clone()));
    Harness {
        source,
        cell,
        metrics,
        clock,
        start,
        shutdown,
    }
}

impl Harness {
    fn call_offsets(&self) -> Vec<Duration> {
        self.source
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|t| saturating_sub(*t, self.start))
            .collect()
    }
    fn key(&self) -> Option<String> {
        self.cell
            .load()
            .as_ref()
            .map(|h| h.credentials().access_key_id().to_owned())
    }
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_half_life_while_credentials_keep_arriving() {
    let h = start(vec![
        Ok(Duration::from_secs(3600)),
        Ok(Duration::from_secs(10)),
        Ok(Duration::from_secs(3600)),
    ]);
    tokio::time::sleep(Duration::from_secs(1805)).await;
    assert_eq!(h.key().as_deref(), Some("AKID10"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.key().as_deref(), Some("AKID3600"));
    assert_eq!(
        h.call_offsets(),
        [0, 1800, 1805].map(Duration::from_secs).to_vec()
    );
    let m = &h.metrics.credentials;
    assert_eq!(m.refreshes.with_label_values(&["success"]).get(), 3);
    assert_eq!(
        m.expiry_timestamp.get(),
        unix_seconds(h.clock.now()) - 10.0 + 3600.0
    );
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn keeps_old_credentials_while_sts_fails_then_recovers() {
    let h = start(vec![
        Ok(Duration::from_secs(400)),
        Err("IDPCommunicationError"),
        Err("IDPCommunicationError"),
        Err("Throttling"),
        Ok(Duration::from_secs(400)),
    ]);
    // First refresh due at 200 s; failures back off 2 s, 4 s, then,
    // throttled with 194 s left, a quarter of that (48.5 s).
    tokio::time::sleep(Duration::from_millis(206_500)).await;
    assert_eq!(h.call_offsets().len(), 4);
    let now = h.clock.now();
    assert!(
        h.cell.usable(now).is_ok(),
        "old credentials must stay usable"
    );
    assert!(h.cell.last_error().is_some());
    assert_eq!(h.metrics.credentials.consecutive_failures.get(), 3);
    tokio::time::sleep(Duration::from_millis(48_500)).await;
    assert_eq!(
        h.call_offsets(),
        [0, 200_000, 202_000, 206_000, 254_500].map(Duration::from_millis)
    );
    assert_eq!(h.metrics.credentials.consecutive_failures.get(), 0);
    assert!(h.cell.last_error().is_none());
    assert_eq!(
        h.metrics
            .credentials
            .refresh_errors
            .with_label_values(&["transient"])
            .get(),
        3
    );
    assert_eq!(h.metrics.credentials.refresh_throttled.get(), 1);
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn cold_start_failures_leave_the_cell_empty_until_the_first_success() {
    let h = start(vec![
        Err("IDPCommunicationError"),
        Ok(Duration::from_secs(60)),
    ]);
    // A cold start retries after the base delay, 2 s.
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(h.cell.usable(h.clock.now()).is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.cell.usable(h.clock.now()).is_ok());
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_early_refresh_request_is_honoured_but_rate_limited() {
    let h = start(vec![
        Ok(Duration::from_secs(3600)),
        Ok(Duration::from_secs(3600)),
        Ok(Duration::from_secs(3600)),
    ]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.cell.request_refresh();
    let seen = h.cell.generation();
    assert!(h.cell.wait_newer_than(seen).await);
    // Requested 10 ms after the first fetch: held back to 1 s after it.
    assert_eq!(h.call_offsets(), [0, 1000].map(Duration::from_millis));
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.cell.request_refresh();
    assert!(h.cell.wait_newer_than(seen + 1).await);
    assert_eq!(h.call_offsets(), [0, 1000, 6000].map(Duration::from_millis));
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_lifetime_is_the_credentials_not_the_time_since_a_refresh() {
    // 3600 s credentials, then the same ones again (as IMDS hands them out):
    // expiry minus the last refresh shrinks to 1800 s, the lifetime stays;
    // new ones get theirs.
    let h = start(vec![
        Ok(Duration::from_secs(3600)),
        Err(AGAIN),
        Ok(Duration::from_secs(900)),
    ]);
    let m = &h.metrics.credentials;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(m.lifetime.get(), 3600.0);
    tokio::time::sleep(Duration::from_secs(1800)).await;
    assert_eq!(h.call_offsets().len(), 2);
    assert_eq!(
        m.expiry_timestamp.get() - m.last_refresh_timestamp.get(),
        1800.0
    );
    assert_eq!(m.lifetime.get(), 3600.0);
    tokio::time::sleep(Duration::from_secs(900)).await;
    assert_eq!(h.key().as_deref(), Some("AKID900"));
    assert_eq!(m.lifetime.get(), 900.0);
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn early_refresh_requests_wait_out_a_throttling_backoff() {
    // Bedrock rejecting the held credentials asks for a refresh on every
    // request; STS throttling the account must not be called once a second.
    let mut script = vec![Ok(Duration::from_secs(3600))];
    script.extend(std::iter::repeat_n(Err("Throttling"), 10));
    let h = start(script);
    // The scheduled refresh at half-life (1800 s) is throttled; the backoff
    // is the whole cap at once.
    tokio::time::sleep(Duration::from_secs(1801)).await;
    assert_eq!(h.call_offsets().len(), 2);
    let throttled_at = h.call_offsets()[1];
    for _ in 0..10 {
        h.cell.request_refresh();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let calls = h.call_offsets();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(h.cell.is_throttled(), "the proxy is told not to wait");
    // The backoff still ends the wait.
    tokio::time::sleep(policy().backoff_cap).await;
    let calls = h.call_offsets();
    assert!(
        calls.len() >= 3 && calls[2] >= throttled_at + Duration::from_secs(10),
        "{calls:?}"
    );
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn requests_made_during_a_throttled_wait_are_dropped_once_it_succeeds() {
    let h = start(vec![
        Ok(Duration::from_secs(3600)),
        Err("Throttling"),
        Ok(Duration::from_secs(3600)),
        Ok(Duration::from_secs(3600)),
    ]);
    tokio::time::sleep(Duration::from_secs(1801)).await;
    for _ in 0..3 {
        h.cell.request_refresh();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let seen = h.cell.generation();
    assert!(h.cell.wait_newer_than(seen).await);
    assert!(!h.cell.is_throttled());
    let recovered = h.call_offsets().len();
    assert_eq!(recovered, 3);
    // The requests were about the credentials the success replaced: no
    // second call follows a second later.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.call_offsets().len(), recovered, "{:?}", h.call_offsets());
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn retries_several_times_before_held_credentials_expire() {
    // STS's shortest session, 900 s: refresh at 450 s; as expiry nears the
    // waits shrink to a quarter of the life left, but never below the
    // cold-start cap (30 s): pods sharing an expiry once retried every
    // second at the end, all together.
    let mut script = vec![Ok(Duration::from_secs(900))];
    script.extend(std::iter::repeat_n(Err("InternalFailure"), 40));
    let h = start(script);
    tokio::time::sleep(Duration::from_secs(900)).await;
    let calls = h.call_offsets();
    let last_two_minutes: Vec<_> = calls
        .iter()
        .filter(|t| **t > Duration::from_secs(780) && **t < Duration::from_secs(900))
        .collect();
    assert!(last_two_minutes.len() >= 3, "{calls:?}");
    let closest = calls[1..]
        .windows(2)
        .filter(|w| w[1] > Duration::from_secs(780))
        .map(|w| w[1] - w[0])
        .min();
    assert_eq!(closest, Some(Duration::from_secs(30)), "{calls:?}");
    assert!(h.cell.usable(h.clock.now()).is_err());
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_request_made_during_a_failed_attempt_does_not_cut_its_backoff() {
    // The request was answered by the failure (it stops waiting then):
    // left standing, its ask called STS again a second later, inside the
    // backoff the failure had just set.
    let h = start(vec![Err(ASKED), Ok(Duration::from_secs(3600))]);
    let seen = h.cell.generation();
    assert!(h.cell.wait_newer_than(seen).await);
    assert_eq!(h.call_offsets(), [0, 2000].map(Duration::from_millis));
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn rejections_during_a_failure_backoff_do_not_cut_it() {
    // Bedrock rejecting the held credentials (revoked, say) while STS
    // fails: every request asks, and the asks called STS once a second,
    // whatever the backoff had grown to.
    let mut script = vec![Ok(Duration::from_secs(3600))];
    script.extend(std::iter::repeat_n(Err("InternalFailure"), 10));
    let h = start(script);
    // Failures at 1800, 1802, 1806 and 1814 s; the next waits 16 s.
    tokio::time::sleep(Duration::from_secs(1815)).await;
    assert_eq!(h.call_offsets().len(), 5, "{:?}", h.call_offsets());
    for _ in 0..14 {
        h.cell.request_refresh();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(h.call_offsets().len(), 5, "{:?}", h.call_offsets());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = h.call_offsets();
    assert_eq!(calls.len(), 6, "{calls:?}");
    assert_eq!(calls[5], Duration::from_secs(1830));
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_new_token_during_a_failure_backoff_is_tried_at_once() {
    // The failure may have been the old token's: the new one is tried
    // without waiting the backoff out (only the minimum interval).
    let mut script = vec![Ok(Duration::from_secs(3600))];
    script.extend(std::iter::repeat_n(Err("InternalFailure"), 4));
    script.push(Ok(Duration::from_secs(3600)));
    let h = start(script);
    tokio::time::sleep(Duration::from_secs(1815)).await;
    assert_eq!(h.call_offsets().len(), 5, "{:?}", h.call_offsets());
    let seen = h.cell.generation();
    assert!(crate::credentials::token_watch::on_rotation(&h.cell));
    assert!(h.cell.wait_newer_than(seen).await);
    assert_eq!(h.call_offsets()[5], Duration::from_secs(1815));
    h.shutdown.cancel();
}
