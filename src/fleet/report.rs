//! What a run means: STS call rates, throttling, pods without credentials,
//! time to ready, recovery after faults; one markdown row per run.

use std::collections::HashMap;
use std::time::Duration;

use super::pod::Signing;
use super::scenario::Run;
use super::sts_model::Outcome;

/// Requests each pod's app sends per second, for "requests that would have
/// failed" (pods that held credentials and lost them).
pub const APP_REQUESTS_PER_SECOND: f64 = 1.0;

/// Calls per one-second bin over `[from, to)` seconds.
pub fn per_second(run: &Run, from: u64, to: u64, keep: impl Fn(Outcome) -> bool) -> Vec<u32> {
    let mut bins = vec![0u32; to.saturating_sub(from) as usize];
    for c in run.calls.iter().filter(|c| keep(c.outcome)) {
        let s = c.at_ms / 1000;
        if (from..to).contains(&s) {
            bins[(s - from) as usize] += 1;
        }
    }
    bins
}

/// Peak, 99th percentile and mean of per-second counts, and the peak of
/// their average over `window` seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub peak: f64,
    pub p99: f64,
    pub mean: f64,
    pub peak_window: f64,
}

pub fn rates(bins: &[u32], window: usize) -> Rates {
    if bins.is_empty() {
        return Rates::default();
    }
    let mut sorted = bins.to_vec();
    sorted.sort_unstable();
    let p99 = sorted[((sorted.len() - 1) as f64 * 0.99).round() as usize];
    let total: u64 = bins.iter().map(|&b| u64::from(b)).sum();
    let window = window.clamp(1, bins.len());
    let mut sum: u64 = bins[..window].iter().map(|&b| u64::from(b)).sum();
    let mut best = sum;
    for i in window..bins.len() {
        sum = sum + u64::from(bins[i]) - u64::from(bins[i - window]);
        best = best.max(sum);
    }
    Rates {
        peak: f64::from(sorted[sorted.len() - 1]),
        p99: f64::from(p99),
        mean: total as f64 / bins.len() as f64,
        peak_window: best as f64 / window as f64,
    }
}

/// How pods fared: readiness, lost credentials, concurrent counts.
#[derive(Debug, Clone, Default)]
pub struct Availability {
    /// Seconds from start to the first usable credentials, per ready pod.
    pub time_to_ready: Vec<f64>,
    pub never_ready: u32,
    /// Most pods at once that had credentials and lost them.
    pub max_lost: u32,
    /// Most pods at once not yet ready.
    pub max_not_ready: u32,
    /// Pod-seconds spent with expired credentials, and the longest stretch.
    pub lost_pod_seconds: f64,
    pub longest_lost: f64,
}

pub fn availability(run: &Run) -> Availability {
    let end_ms = run.scenario.run_for.as_millis() as u64;
    let mut changes = run.changes.clone();
    changes.sort_by_key(|c| c.at_ms);
    let mut a = Availability::default();
    let mut state: HashMap<u32, (Signing, u64)> = HashMap::new();
    let mut started: HashMap<u32, u64> = HashMap::new();
    let (mut lost, mut not_ready) = (0u32, 0u32);
    let close = |a: &mut Availability, previous: Signing, since: u64, at: u64| {
        if previous == Signing::Expired {
            let secs = (at - since) as f64 / 1000.0;
            a.lost_pod_seconds += secs;
            a.longest_lost = a.longest_lost.max(secs);
        }
    };
    for c in &changes {
        if let Some((previous, since)) = state.insert(c.pod, (c.state, c.at_ms)) {
            close(&mut a, previous, since, c.at_ms);
            match previous {
                Signing::NotYet => not_ready -= 1,
                Signing::Expired => lost -= 1,
                Signing::Usable => {}
            }
        }
        match c.state {
            Signing::NotYet => {
                not_ready += 1;
                started.insert(c.pod, c.at_ms);
            }
            Signing::Expired => lost += 1,
            Signing::Usable => {
                if let Some(start) = started.remove(&c.pod) {
                    a.time_to_ready.push((c.at_ms - start) as f64 / 1000.0);
                }
            }
        }
        a.max_lost = a.max_lost.max(lost);
        a.max_not_ready = a.max_not_ready.max(not_ready);
    }
    for (previous, since) in state.values() {
        close(&mut a, *previous, *since, end_ms);
    }
    a.never_ready = started.len() as u32;
    a.time_to_ready.sort_by(f64::total_cmp);
    a
}

/// The `q` quantile of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// For the pods a fault made fail: seconds from the fault's end until the
/// last of them held credentials issued after it (`None` without faults).
pub fn recovery(run: &Run) -> Option<f64> {
    let fault = run.scenario.faults.iter().max_by_key(|f| f.until)?;
    let (from, until) = (
        fault.from.as_millis() as u64,
        fault.until.as_millis() as u64,
    );
    let mut hit: HashMap<u32, Option<u64>> = HashMap::new();
    for c in &run.calls {
        if (from..until).contains(&c.at_ms) && c.outcome != Outcome::Issued {
            hit.entry(c.pod).or_insert(None);
        }
    }
    for c in &run.calls {
        if c.at_ms >= until && c.outcome == Outcome::Issued {
            if let Some(first @ None) = hit.get_mut(&c.pod) {
                *first = Some(c.at_ms);
            }
        }
    }
    let last = hit.values().map(|t| t.unwrap_or(u64::MAX)).max()?;
    Some(last.saturating_sub(until) as f64 / 1000.0)
}

/// The earliest moment each pod's credentials were refreshed (its second
/// issued call), by pod, for cohort spreads.
pub fn first_refresh(run: &Run) -> HashMap<u32, u64> {
    let mut issued: HashMap<u32, u32> = HashMap::new();
    let mut first = HashMap::new();
    for c in run.calls.iter().filter(|c| c.outcome == Outcome::Issued) {
        let n = issued.entry(c.pod).or_insert(0);
        *n += 1;
        if *n == 2 {
            first.insert(c.pod, c.at_ms);
        }
    }
    first
}

/// Smallest spread (max - min) of the first refresh among pods started in
/// the same second, over cohorts of at least `min_cohort` pods, as a
/// fraction of the lifetime.
pub fn cohort_spread(run: &Run, min_cohort: usize) -> Option<f64> {
    let refreshed = first_refresh(run);
    let mut cohorts: HashMap<u64, Vec<u64>> = HashMap::new();
    for c in run.changes.iter().filter(|c| c.state == Signing::NotYet) {
        if let Some(&at) = refreshed.get(&c.pod) {
            cohorts.entry(c.at_ms / 1000).or_default().push(at);
        }
    }
    let lifetime = run.scenario.lifetime.as_millis() as f64;
    cohorts
        .values()
        .filter(|times| times.len() >= min_cohort)
        .map(|times| {
            let (min, max) = times
                .iter()
                .fold((u64::MAX, 0), |(lo, hi), &t| (lo.min(t), hi.max(t)));
            (max - min) as f64 / lifetime
        })
        .min_by(f64::total_cmp)
}

/// Mean STS calls per second of `pods` in steady state under the run's
/// policy: one call per refresh interval, averaged over the jitter.
pub fn steady_mean(run: &Run) -> f64 {
    let s = &run.scenario;
    let steps = 1000;
    let mean: Duration = (0..steps)
        .map(|i| {
            s.policy
                .refresh_after(s.lifetime, (f64::from(i) + 0.5) / f64::from(steps))
        })
        .sum::<Duration>()
        / steps;
    f64::from(s.pods) / mean.as_secs_f64()
}

/// Most pods not yet ready and most pods with lost credentials within each
/// `bin`-second interval of the run, for plots.
pub fn without_credentials(run: &Run, bin: u64) -> Vec<(u32, u32)> {
    let bin_ms = bin.max(1) * 1000;
    let bins = run.scenario.run_for.as_millis() as u64 / bin_ms;
    let mut out = vec![(0u32, 0u32); bins as usize + 1];
    let mut changes = run.changes.clone();
    changes.sort_by_key(|c| c.at_ms);
    let mut state: HashMap<u32, Signing> = HashMap::new();
    let (mut not_ready, mut lost) = (0u32, 0u32);
    let mut next = 0usize;
    for (i, slot) in out.iter_mut().enumerate() {
        let end = (i as u64 + 1) * bin_ms;
        // The counts at the bin's start, raised by every change inside it.
        let mut peak = (not_ready, lost);
        while next < changes.len() && changes[next].at_ms < end {
            let c = changes[next];
            next += 1;
            match state.insert(c.pod, c.state) {
                Some(Signing::NotYet) => not_ready -= 1,
                Some(Signing::Expired) => lost -= 1,
                _ => {}
            }
            match c.state {
                Signing::NotYet => not_ready += 1,
                Signing::Expired => lost += 1,
                Signing::Usable => {}
            }
            peak = (peak.0.max(not_ready), peak.1.max(lost));
        }
        *slot = peak;
    }
    out
}
