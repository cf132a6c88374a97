//! The cell the refresher writes and every request reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::{ArcSwapOption, Guard};
use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::identity::Identity;
use tokio::sync::{watch, Notify};

/// Credentials as held by the cell, ready for signing.
#[derive(Debug)]
pub struct HeldCredentials {
    /// The signer's view of the credentials, built once per refresh rather
    /// than once per request.
    identity: Identity,
    credentials: Credentials,
    /// When the credentials were stored.
    pub obtained: SystemTime,
    /// Which source produced them (`web-identity`, `static`).
    pub source: &'static str,
    /// Position in the cell's sequence of stores (set by the cell).
    generation: u64,
}

impl HeldCredentials {
    pub fn new(credentials: Credentials, obtained: SystemTime, source: &'static str) -> Self {
        Self {
            identity: Identity::from(credentials.clone()),
            credentials,
            obtained,
            source,
            generation: 0,
        }
    }

    /// Which store of the cell these credentials came from; a request signed
    /// with generation `n` can wait for `n + 1` when Bedrock rejects it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// `None` for credentials that never expire (static keys).
    pub fn expiry(&self) -> Option<SystemTime> {
        self.credentials.expiry()
    }

    pub fn is_usable_at(&self, now: SystemTime) -> bool {
        self.expiry().is_none_or(|e| now < e)
    }
}

/// Why the cell cannot sign right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// No credentials have been obtained yet (cold start, or every attempt failed).
    NotYetObtained,
    /// The last credentials expired and no refresh has succeeded since.
    Expired,
}

impl Unusable {
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotYetObtained => "no credentials have been obtained yet",
            Self::Expired => "the held credentials have expired and refreshing them keeps failing",
        }
    }
}

/// Lock-free holder of the current credentials plus the last refresh error,
/// which readiness reports.
///
/// It is also where the data plane and the refresher meet without knowing
/// each other: the proxy can ask for an early refresh (when Bedrock says the
/// credentials expired) and wait for the next generation to be stored.
#[derive(Debug)]
pub struct CredentialCell {
    current: ArcSwapOption<HeldCredentials>,
    last_error: ArcSwapOption<String>,
    /// Counts stores, so a waiter can tell "newer than what I signed with".
    generation: watch::Sender<u64>,
    /// Wakes the refresher ahead of its schedule (Bedrock rejected the
    /// credentials); not during a failure's backoff.
    refresh_requested: Notify,
    /// Wakes a failing refresher before its backoff ends (a new token).
    retry_requested: Notify,
    /// STS answered the last attempt with throttling: the refresher waits
    /// its backoff out whatever asks, so nobody should wait for it.
    throttled: watch::Sender<bool>,
    /// A refresh attempt is under way (from its start until its outcome
    /// is stored or recorded): a request Bedrock rejected while refreshes
    /// are failing waits for it, its credentials may be moments off.
    attempting: AtomicBool,
    /// How many refresh attempts have failed: until one has, a request
    /// finding no credentials knows the first ones are still on their way;
    /// and one waiting for a refresh it asked for stops when an attempt
    /// fails after it asked.
    failures: watch::Sender<u64>,
}

impl Default for CredentialCell {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            last_error: ArcSwapOption::empty(),
            generation: watch::Sender::new(0),
            refresh_requested: Notify::new(),
            retry_requested: Notify::new(),
            throttled: watch::Sender::new(false),
            attempting: AtomicBool::new(false),
            failures: watch::Sender::new(0),
        }
    }
}

impl CredentialCell {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the held credentials and clears the last error.
    pub fn store(&self, mut held: HeldCredentials) {
        // One writer (the refresher), so reading then bumping does not race.
        let next = self.generation() + 1;
        held.generation = next;
        self.current.store(Some(Arc::new(held)));
        self.last_error.store(None);
        self.attempting.store(false, Ordering::SeqCst);
        self.generation.send_replace(next);
    }

    /// How many times credentials have been stored.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Asks the refresher to refresh now (coalesced: many requests, one
    /// refresh). A refresher waiting out a failure's backoff does not
    /// listen: every request Bedrock rejects would ask, and STS, already
    /// failing, would be called at the minimum interval instead.
    pub fn request_refresh(&self) {
        self.refresh_requested.notify_one();
    }

    /// Resolves when someone asked for an early refresh.
    pub async fn refresh_requested(&self) {
        self.refresh_requested.notified().await;
    }

    /// Asks a failing refresher to try again without waiting its backoff
    /// out: something it lacked (the token) has changed.
    pub fn request_retry(&self) {
        self.retry_requested.notify_one();
    }

    /// Resolves when someone asked a failing refresher to try again.
    pub async fn retry_requested(&self) {
        self.retry_requested.notified().await;
    }

    /// Forgets a request for an early refresh nobody waited on: made
    /// against credentials just replaced, it would call STS again for
    /// nothing.
    pub fn discard_refresh_request(&self) {
        let _ = futures::FutureExt::now_or_never(self.refresh_requested.notified());
    }

    /// Forgets a request to retry: credentials were just stored.
    pub fn discard_retry_request(&self) {
        let _ = futures::FutureExt::now_or_never(self.retry_requested.notified());
    }

    /// Records whether STS is throttling the refresher.
    pub fn set_throttled(&self, throttled: bool) {
        self.throttled
            .send_if_modified(|t| std::mem::replace(t, throttled) != throttled);
    }

    /// Whether STS is throttling the refresher: an early refresh would not
    /// come before its backoff ends.
    pub fn is_throttled(&self) -> bool {
        *self.throttled.borrow()
    }

    /// Resolves once STS is throttling the refresher (at once if it is).
    pub async fn throttled(&self) {
        let mut rx = self.throttled.subscribe();
        let _ = rx.wait_for(|t| *t).await;
    }

    /// Waits until credentials newer than generation `seen` are stored.
    /// Returns `false` if the cell is gone (never, in practice).
    pub async fn wait_newer_than(&self, seen: u64) -> bool {
        let mut rx = self.generation.subscribe();
        let newer = rx.wait_for(|g| *g > seen).await.is_ok();
        newer
    }

    /// Records why the last refresh failed; the held credentials stay.
    pub fn record_failure(&self, summary: String) {
        self.last_error.store(Some(Arc::new(summary)));
        // Before the count: a waiter that reads the count, then finds no
        // attempt under way, has seen this failure.
        self.attempting.store(false, Ordering::SeqCst);
        self.failures.send_modify(|n| *n += 1);
    }

    /// A refresh attempt starts; its stored credentials or recorded
    /// failure ends it.
    pub fn begin_attempt(&self) {
        self.attempting.store(true, Ordering::SeqCst);
    }

    /// Whether a refresh attempt is under way.
    pub fn is_attempting(&self) -> bool {
        self.attempting.load(Ordering::SeqCst)
    }

    /// How many refresh attempts have failed so far.
    pub fn failures(&self) -> u64 {
        *self.failures.borrow()
    }

    /// Resolves once more than `seen` attempts have failed (at once if
    /// they have).
    pub async fn failed_since(&self, seen: u64) {
        let mut rx = self.failures.subscribe();
        let _ = rx.wait_for(|n| *n > seen).await;
    }

    /// Resolves once a refresh has failed (at once if one has).
    pub async fn failed_once(&self) {
        self.failed_since(0).await;
    }

    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    /// The held credentials, whatever their expiry.
    pub fn load(&self) -> Guard<Option<Arc<HeldCredentials>>> {
        self.current.load()
    }

    /// Runs `f` with credentials that can sign a request at `now`.
    pub fn with_usable<R>(
        &self,
        now: SystemTime,
        f: impl FnOnce(&HeldCredentials) -> R,
    ) -> Result<R, Unusable> {
        match self.current.load().as_deref() {
            None => Err(Unusable::NotYetObtained),
            Some(held) if !held.is_usable_at(now) => Err(Unusable::Expired),
            Some(held) => Ok(f(held)),
        }
    }

    /// Credentials that can sign a request at `now`.
    ///
    /// The returned guard is cheap and must not be held across an await.
    pub fn usable(&self, now: SystemTime) -> Result<Guard<Option<Arc<HeldCredentials>>>, Unusable> {
        let guard = self.current.load();
        match guard.as_ref() {
            None => Err(Unusable::NotYetObtained),
            Some(held) if !held.is_usable_at(now) => Err(Unusable::Expired),
            Some(_) => Ok(guard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn usable_until_expiry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cell = CredentialCell::new();
        assert_eq!(cell.usable(t0).err(), Some(Unusable::NotYetObtained));
        let creds = Credentials::new(
            "AKID",
            "secret",
            None,
            Some(t0 + Duration::from_secs(10)),
            "t",
        );
        cell.store(HeldCredentials::new(creds, t0, "test"));
        assert!(cell.usable(t0 + Duration::from_secs(9)).is_ok());
        assert_eq!(
            cell.usable(t0 + Duration::from_secs(10)).err(),
            Some(Unusable::Expired)
        );
    }

    #[tokio::test]
    async fn failures_are_counted_for_waiters_that_asked_before_them() {
        let cell = CredentialCell::new();
        let seen = cell.failures();
        let waiting = cell.failed_since(seen);
        tokio::pin!(waiting);
        assert!(futures::FutureExt::now_or_never(waiting.as_mut()).is_none());
        cell.record_failure("boom".into());
        assert!(futures::FutureExt::now_or_never(waiting).is_some());
        assert_eq!(cell.failures(), seen + 1);
        // A failure from before the asking does not end a later wait.
        assert!(futures::FutureExt::now_or_never(cell.failed_since(seen + 1)).is_none());
        assert!(futures::FutureExt::now_or_never(cell.failed_once()).is_some());
    }

    #[test]
    fn a_failure_keeps_the_credentials_and_a_success_clears_the_error() {
        let t0 = SystemTime::UNIX_EPOCH;
        let cell = CredentialCell::new();
        cell.store(HeldCredentials::new(
            Credentials::new("A", "s", None, None, "t"),
            t0,
            "static",
        ));
        cell.record_failure("boom".into());
        assert!(cell.usable(t0).is_ok());
        assert_eq!(
            cell.last_error().as_deref().map(String::as_str),
            Some("boom")
        );
        cell.store(HeldCredentials::new(
            Credentials::new("B", "s", None, None, "t"),
            t0,
            "static",
        ));
        assert!(cell.last_error().is_none());
    }
}
