//! How full the memory budgets are, read when scraped.
//!
//! A budget refuses work once full (a request body is told to retry, an
//! answer's tokens go uncounted), and the counters see that only after
//! it happened. These gauges show how close each budget is before. They
//! are read from the budgets' own counts at scrape time, not set by the
//! requests that take and give room: the data plane pays nothing for
//! them, and what they show is never a sum that drifted.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts, Registry};

use super::registered;

/// What a budget says of itself: read at each scrape.
pub trait Budget: Send + Sync {
    /// Bytes held now.
    fn held(&self) -> usize;
    /// Bytes it may hold at once.
    fn total(&self) -> usize;
}

/// `…memory_budget_used_bytes{budget}` and `…memory_budget_limit_bytes`
/// (the webhook's `…webhook_memory_budget_…`), for the budgets watched
/// with [`BudgetGauges::watch`]. A budget not watched (the usage taps',
/// with usage metrics off) has no series.
#[derive(Clone)]
pub struct BudgetGauges(Arc<Inner>);

struct Inner {
    used: IntGaugeVec,
    limit: IntGaugeVec,
    watched: Mutex<Vec<(&'static str, Arc<dyn Budget>)>>,
}

impl std::fmt::Debug for BudgetGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetGauges").finish_non_exhaustive()
    }
}

impl BudgetGauges {
    /// The gauges named by `used` and `limit`, each with a `budget` label.
    pub(super) fn register(
        registry: &Registry,
        used: Opts,
        limit: Opts,
    ) -> prometheus::Result<Self> {
        let gauges = Self(Arc::new(Inner {
            used: IntGaugeVec::new(used, &["budget"])?,
            limit: IntGaugeVec::new(limit, &["budget"])?,
            watched: Mutex::default(),
        }));
        registered(registry, gauges)
    }

    /// Shows `budget` as `name` from the next scrape on; a budget watched
    /// again under the same name replaces the first.
    pub fn watch(&self, name: &'static str, budget: Arc<dyn Budget>) {
        let mut watched = self
            .0
            .watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        watched.retain(|(n, _)| *n != name);
        watched.push((name, budget));
    }
}

impl Collector for BudgetGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.0
            .used
            .desc()
            .into_iter()
            .chain(self.0.limit.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let watched = self
            .0
            .watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, budget) in watched.iter() {
            self.0
                .used
                .with_label_values(&[name])
                .set(gauge(budget.held()));
            self.0
                .limit
                .with_label_values(&[name])
                .set(gauge(budget.total()));
        }
        drop(watched);
        let mut families = self.0.used.collect();
        families.extend(self.0.limit.collect());
        families
    }
}

fn gauge(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Fixed(AtomicUsize, usize);

    impl Budget for Fixed {
        fn held(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
        fn total(&self) -> usize {
            self.1
        }
    }

    #[test]
    fn a_scrape_reads_what_each_watched_budget_holds_then() {
        let registry = Registry::new();
        let gauges = BudgetGauges::register(
            &registry,
            super::super::opts("memory_budget_used_bytes", "used"),
            super::super::opts("memory_budget_limit_bytes", "limit"),
        )
        .unwrap();
        let text = || super::super::render(&registry);
        assert!(!text().contains("memory_budget_used_bytes{"), "{}", text());

        let bodies = Arc::new(Fixed(AtomicUsize::new(0), 1 << 20));
        gauges.watch("request_bodies", bodies.clone());
        assert!(text()
            .contains("bedrock_broker_memory_budget_used_bytes{budget=\"request_bodies\"} 0\n"));
        assert!(text().contains(
            "bedrock_broker_memory_budget_limit_bytes{budget=\"request_bodies\"} 1048576\n"
        ));

        bodies.0.store(4096, Ordering::Relaxed);
        assert!(text()
            .contains("bedrock_broker_memory_budget_used_bytes{budget=\"request_bodies\"} 4096\n"));

        // Watched again (a second proxy on the same metrics): the new one.
        gauges.watch("request_bodies", Arc::new(Fixed(AtomicUsize::new(7), 9)));
        assert!(
            text().contains("memory_budget_used_bytes{budget=\"request_bodies\"} 7\n"),
            "{}",
            text()
        );
        assert!(text().contains("memory_budget_limit_bytes{budget=\"request_bodies\"} 9\n"));
    }
}
