//! One line per run, in two tables (STS's side, the pods' side): the
//! numbers docs/fleet.md shows.

use std::fmt::Write as _;
use std::time::Duration;

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
    /// Calls per second from the end of the first lifetime on (from the
    /// end of a day of starts, in steady state).
    pub settled: Rates,
    /// Peak 10-second average while the (last) fault lasted.
    pub peak_during_fault: Option<f64>,
    /// Peak calls per second after the (last) fault ended.
    pub peak_after_fault: Option<f64>,
    /// Seconds in which more calls reached STS (refused connections do not)
    /// than its quota refills.
    pub seconds_over_quota: usize,
    pub quota: f64,
    /// Smallest spread of the first refresh among pods started in the same
    /// second (cohorts of 10 or more), as a fraction of the lifetime.
    pub cohort_spread: Option<f64>,
    pub availability: Availability,
    /// Seconds from the (last) fault's end until every pod it hit was fresh.
    pub recovery: Option<f64>,
}

impl Summary {
    pub fn of(run: &Run) -> Self {
        let s = &run.scenario;
        let end = s.run_for.as_secs();
        let all = report::per_second(run, 0, end, |_| true);
        let window = |from: Duration, to: Duration, width| {
            let bins = report::per_second(run, from.as_secs(), to.as_secs(), |_| true);
            report::rates(&bins, width)
        };
        let count = |o: Outcome| run.calls.iter().filter(|c| c.outcome == o).count();
        let (throttled, issued) = (count(Outcome::Throttled), count(Outcome::Issued));
        let fault = s.faults.iter().max_by_key(|f| f.until);
        let reaching = report::per_second(run, 0, end, |o| o != Outcome::Refused);
        Self {
            name: s.name,
            pods: s.pods,
            calls: run.calls.len(),
            throttled,
            failed: run.calls.len() - throttled - issued,
            rates: report::rates(&all, RATE_WINDOW),
            settled: window(s.measure_from, s.run_for, RATE_WINDOW),
            peak_during_fault: fault.map(|f| window(f.from, f.until, RATE_WINDOW).peak_window),
            peak_after_fault: fault.map(|f| window(f.until, s.run_for, 1).peak),
            seconds_over_quota: reaching
                .iter()
                .filter(|&&n| f64::from(n) > s.quota.per_second)
                .count(),
            quota: s.quota.per_second,
            cohort_spread: s
                .faults
                .is_empty()
                .then(|| report::cohort_spread(run, 10))
                .flatten(),
            availability: report::availability(run),
            recovery: report::recovery(run),
        }
    }

    /// Requests that would have failed: app traffic on pods whose
    /// credentials expired (not-yet-ready pods receive none).
    pub fn failed_requests(&self) -> f64 {
        self.availability.lost_pod_seconds * report::APP_REQUESTS_PER_SECOND
    }
}

fn or_dash(v: Option<f64>, format: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), format)
}

/// STS's side: calls, rates, the quota.
pub fn sts_table(rows: &[Summary]) -> String {
    let mut out = String::from(
        "| scenario | pods | STS calls | calls/s peak / p99 / mean | peak 10 s avg | settled: mean / peak 10 s avg | peak 10 s avg during fault | peak calls/s after fault | quota/s | seconds over quota | throttled | other failed calls |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} / {:.0} / {:.1} | {:.1} | {:.2} / {:.1} | {} | {} | {:.0} | {} | {} | {} |",
            r.name,
            r.pods,
            r.calls,
            r.rates.peak,
            r.rates.p99,
            r.rates.mean,
            r.rates.peak_window,
            r.settled.mean,
            r.settled.peak_window,
            or_dash(r.peak_during_fault, |v| format!("{v:.1}")),
            or_dash(r.peak_after_fault, |v| format!("{v:.0}")),
            r.quota,
            r.seconds_over_quota,
            r.throttled,
            r.failed,
        );
    }
    out
}

/// The pods' side: readiness, lost credentials, failed requests, spread.
pub fn pods_table(rows: &[Summary]) -> String {
    let mut out = String::from(
        "| scenario | time to ready p50 / p99 / max | most pods not ready at once | most pods with expired credentials | longest without | failed requests | last pod fresh after fault | same-second cohort spread |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|\n",
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
            "| {} | {:.1} / {:.1} / {:.1} s{} | {} | {} | {:.0} s | {:.0} | {} | {} |",
            r.name,
            ready(0.5),
            ready(0.99),
            ready(1.0),
            never,
            a.max_not_ready,
            a.max_lost,
            a.longest_lost,
            r.failed_requests(),
            or_dash(r.recovery, |v| format!("{v:.0} s")),
            or_dash(r.cohort_spread, |v| format!("{:.1} %", v * 100.0)),
        );
    }
    out
}

/// Both tables.
pub fn markdown(rows: &[Summary]) -> String {
    format!("{}\n{}", sts_table(rows), pods_table(rows))
}
