//! The clock of the files a server re-reads while it runs (its serving
//! certificate, the sidecars' trust bundle): a tick every interval, the
//! first one interval after start, until shutdown.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub struct Every {
    ticker: Interval,
    shutdown: CancellationToken,
}

impl Every {
    pub fn new(interval: Duration, shutdown: CancellationToken) -> Self {
        // The files were read at start: the first look is one interval on.
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        // A slow read (a stalled volume) delays the next look, never
        // crowds several in.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { ticker, shutdown }
    }

    /// Waits for the next tick: `false` once shutdown has begun.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.ticker.tick() => true,
            _ = self.shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_an_interval_apart_until_shutdown() {
        let shutdown = CancellationToken::new();
        let start = Instant::now();
        let mut every = Every::new(Duration::from_secs(10), shutdown.clone());
        assert!(every.tick().await);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(every.tick().await);
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        shutdown.cancel();
        assert!(!every.tick().await);
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }
}
