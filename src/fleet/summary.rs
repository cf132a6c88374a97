//! One line per run: the numbers docs/fleet.md tabulates.

use std::fmt::Write as _;

use super::report::{self, Availability, Rates};
use super::scenario::Run;
use super::sts_model::Outcome;

/// Window for the smoothed peak rate, in seconds.
pub const RATE_WINDOW: usize = 10;

/// A run, summarised.
#[derive(Debug, Clone)]
pub struct Summary {
    pub name: &'static str,
    pub pods: u32,
    pub calls: usize,
    pub throttled: usize,
    /// Calls that failed for another reason (faults, expired tokens).
    pub failed: usize,
    /// Calls per second over the whole run.
    pub rates: Rates,
    /// Peak 10-second average from the end of the first lifetime on (from
    /// the end of a day of starts, in steady state).
    pub peak_settled: f64,
    /// Smallest spread of the first refresh among pods started in the same
    /// second (cohorts of 10 or more), as a fraction of the lifetime.
    pub cohort_spread: Option<f64>,
    pub quota: f64,
    pub availability: Availability,
    /// Seconds from the (last) fault's end until every pod it hit was fresh.
    pub recovery: Option<f64>,
    /// Peak calls per second after the (last) fault ended.
    pub peak_after_fault: Option<f64>,
    /// Seconds in which more calls reached STS (refused connections do not)
    /// than its quota refills.
    pub seconds_over_quota: usize,
}

impl Summary {
    pub fn of(run: &Run) -> Self {
        let s = &run.scenario;
        let end = s.run_for.as_secs();
        let all = report::per_second(run, 0, end, |_| true);
        let settled = report::per_second(run, s.measure_from.as_secs(), end, |_| true);
        let count = |o: Outcome| run.calls.iter().filter(|c| c.outcome == o).count();
        let throttled = count(Outcome::Throttled);
        let issued = count(Outcome::Issued);
        let peak_after_fault = s
            .faults
            .iter()
            .map(|f| f.until.as_secs())
            .max()
            .map(|until| {
                let bins = report::per_second(run, until, end, |_| true);
                report::rates(&bins, RATE_WINDOW).peak
            });
        Self {
            name: s.name,
            pods: s.pods,
            calls: run.calls.len(),
            throttled,
            failed: run.calls.len() - throttled - issued,
            rates: report::rates(&all, RATE_WINDOW),
            peak_settled: report::rates(&settled, RATE_WINDOW).peak_window,
            cohort_spread: s
                .faults
                .is_empty()
                .then(|| report::cohort_spread(run, 10))
                .flatten(),
            quota: s.quota.per_second,
            availability: report::availability(run),
            recovery: report::recovery(run),
            peak_after_fault,
            seconds_over_quota: report::per_second(run, 0, end, |o| o != Outcome::Refused)
                .iter()
                .filter(|&&n| f64::from(n) > s.quota.per_second)
                .count(),
        }
    }

    /// Requests that would have failed: app traffic on pods whose
    /// credentials expired (not-yet-ready pods receive none).
    pub fn failed_requests(&self) -> f64 {
        self.availability.lost_pod_seconds * report::APP_REQUESTS_PER_SECOND
    }
}

fn or_dash(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}{unit}"))
}

/// A markdown table of `rows`.
pub fn markdown(rows: &[Summary]) -> String {
    let mut out = String::from(
        "| scenario | pods | STS calls | calls/s peak / p99 / mean | peak 10 s avg: all / settled | same-second cohort spread | quota/s | seconds over quota | throttled | other failed calls | most pods not ready / lost creds | failed requests | time to ready p50 / p99 / max | last pod fresh after fault | peak calls/s after fault |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let a = &r.availability;
        let ready = |q| report::quantile(&a.time_to_ready, q);
        let never = if a.never_ready > 0 {
            format!(" ({} never)", a.never_ready)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} / {:.0} / {:.1} | {:.1} / {:.1} | {} | {:.0} | {} | {} | {} | {} / {} | {:.0} | {:.1} / {:.1} / {:.1} s{} | {} | {} |",
            r.name,
            r.pods,
            r.calls,
            r.rates.peak,
            r.rates.p99,
            r.rates.mean,
            r.rates.peak_window,
            r.peak_settled,
            r.cohort_spread.map_or_else(|| "-".to_owned(), |f| format!("{:.1} %", f * 100.0)),
            r.quota,
            r.seconds_over_quota,
            r.throttled,
            r.failed,
            a.max_not_ready,
            a.max_lost,
            r.failed_requests(),
            ready(0.5),
            ready(0.99),
            ready(1.0),
            never,
            or_dash(r.recovery, " s"),
            or_dash(r.peak_after_fault, ""),
        );
    }
    out
}
