//! The model answers as STS does, and the fleet's properties hold (small
//! fleets in virtual time: seconds of real time). docs/fleet.md has the
//! full-size runs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::kubelet::Kubelet;
use super::scenario::sidecar_config;
use super::sts_model::StsModel;
use super::*;
use crate::clock::{Clock, TokioClock};
use crate::config::aws::SessionName;
use crate::credentials::{
    sts, CredentialMode, CredentialSource, ErrorClass, SigV4Source, WebIdentitySource,
};

const MINUTE: Duration = Duration::from_secs(60);

fn latency() -> Latency {
    Latency {
        min: Duration::from_millis(20),
        mean_extra: Duration::from_millis(30),
    }
}

/// One production web-identity source talking to `model`.
fn source(model: &Arc<StsModel>, clock: &TokioClock, token_ttl: Duration) -> WebIdentitySource {
    let config = sidecar_config(Duration::from_secs(900)).unwrap();
    let (CredentialMode::SigV4(SigV4Source::WebIdentity(w)), Some(region)) =
        (&config.mode, &config.region)
    else {
        panic!("web identity expected")
    };
    let client = sts::client_over(&config, region, None, model.http_client());
    let kubelet = Kubelet {
        token_ttl,
        watch_interval: Duration::from_secs(1),
    };
    let mut w = w.clone();
    w.session_name = SessionName::for_pod(Some("fleet"), Some("pod-7"));
    WebIdentitySource::new(w, config.session.clone(), client)
        .with_token(kubelet.issue(7, clock.now()))
}

fn model(quota: f64, faults: Vec<Fault>) -> (Arc<StsModel>, TokioClock) {
    let clock = TokioClock::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30));
    let quota = Quota {
        per_second: quota,
        burst: quota,
    };
    (
        StsModel::new(clock.clone(), quota, latency(), faults, 3),
        clock,
    )
}

#[tokio::test(start_paused = true)]
async fn credentials_live_as_long_as_requested_and_the_quota_throttles_like_sts() {
    let (model, clock) = model(1.0, vec![]);
    let source = source(&model, &clock, Duration::from_secs(3600));
    let fetched = source.fetch().await.unwrap();
    let lifetime = fetched
        .credentials
        .expiry()
        .unwrap()
        .duration_since(clock.now())
        .unwrap();
    assert!((899..=900).contains(&lifetime.as_secs()), "{lifetime:?}");
    // The bucket holds one call a second and is empty now.
    let throttled = source.fetch().await.unwrap_err();
    assert_eq!(throttled.code(), "Throttling");
    assert_eq!(throttled.class(), ErrorClass::Transient);
    assert!(matches!(
        throttled,
        crate::credentials::SourceError::Service { status: 400, .. }
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(source.fetch().await.is_ok());
    let outcomes: Vec<_> = model.calls().iter().map(|c| (c.pod, c.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            (7, Outcome::Issued),
            (7, Outcome::Throttled),
            (7, Outcome::Issued)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn faults_and_expired_tokens_are_classified_by_the_production_code() {
    let window = |from: u64, kind| Fault {
        from: Duration::from_secs(from),
        until: Duration::from_secs(from + 10),
        kind,
    };
    let faults = vec![
        window(10, FaultKind::Refused),
        window(30, FaultKind::Unavailable),
        window(50, FaultKind::Denied),
    ];
    let start = tokio::time::Instant::now();
    let (model, clock) = model(100.0, faults);
    // A ten-minute token the kubelet never gets to rotate here.
    let source = source(&model, &clock, Duration::from_secs(600));
    let mut seen = Vec::new();
    for at in [15, 35, 55, 700] {
        tokio::time::sleep_until(start + Duration::from_secs(at)).await;
        let e = source.fetch().await.unwrap_err();
        seen.push((e.code().to_owned(), e.class()));
    }
    use ErrorClass::*;
    let expected = [
        ("TransportError", Transient),
        ("ServiceUnavailable", Transient),
        ("AccessDenied", Fatal),
        ("ExpiredTokenException", Token),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(c, k)| ((*c).to_owned(), *k))
        .collect();
    assert_eq!(seen, expected);
}

/// A named scenario at full quota.
fn named(name: &str, pods: u32, lifetime: Duration) -> Scenario {
    let policy = crate::credentials::RefreshPolicy::default();
    Scenario::named(name, pods, lifetime, policy).unwrap()
}

/// A named scenario whose quota keeps a 10,000-pod fleet's ratio to the
/// published one, so a small fleet meets the same pressure.
fn small(name: &str, pods: u32, lifetime: Duration) -> Scenario {
    named(name, pods, lifetime).with_quota_scaled_from(10_000)
}

#[test]
fn runs_replay_exactly() {
    let mut s = small("outage", 40, Duration::from_secs(900));
    s.run_for = 20 * MINUTE;
    let a = simulate(&s).unwrap();
    let b = simulate(&s).unwrap();
    let key = |r: &Run| r.calls.iter().map(|c| (c.at_ms, c.pod)).collect::<Vec<_>>();
    assert!(!a.calls.is_empty());
    assert_eq!(key(&a), key(&b));
}

/// Steady state: pods started over hours call STS at no more than 3 N /
/// (lifetime x fraction) per second, over five-minute windows (windows
/// this long keep a 200-pod fleet's Poisson noise out of the bound).
#[test]
fn steady_state_stays_under_three_times_the_nominal_rate() {
    let lifetime = Duration::from_secs(3600);
    let mut s = small("steady", 200, lifetime);
    s.start_within = 4 * 60 * MINUTE;
    s.measure_from = s.start_within;
    s.run_for = s.start_within + 2 * lifetime;
    let run = simulate(&s).unwrap();
    let bins = report::per_second(&run, s.measure_from.as_secs(), s.run_for.as_secs(), |_| {
        true
    });
    let peak = report::rates(&bins, 300).peak_window;
    let bound = 3.0 * f64::from(s.pods) / (lifetime.as_secs_f64() * s.policy.fraction);
    assert!(peak <= bound, "peak {peak:.3}/s over bound {bound:.3}/s");
    assert!(peak > 0.0);
}

/// Peak calls per second over `window`-second averages in `[from, to)`.
fn peak(run: &Run, from: Duration, to: Duration, window: usize) -> f64 {
    let bins = report::per_second(run, from.as_secs(), to.as_secs(), |_| true);
    report::rates(&bins, window).peak_window
}

/// Mass restart: every pod needs credentials at once, but pods started in
/// the same second spread their refreshes over at least a tenth of the
/// lifetime, and the second lifetime's peak stays within three times the
/// steady-state mean.
#[test]
fn a_mass_restart_spreads_its_refreshes() {
    let lifetime = Duration::from_secs(900);
    let mut s = named("mass-restart", 300, lifetime);
    s.start_within = Duration::from_secs(10);
    let run = simulate(&s).unwrap();
    let spread = report::cohort_spread(&run, 10).unwrap();
    assert!(
        spread >= 0.10,
        "same-second pods refresh within {:.1} % of the lifetime",
        spread * 100.0
    );
    let second = peak(&run, lifetime, 2 * lifetime, 60);
    let bound = 3.0 * report::steady_mean(&run);
    assert!(
        second <= bound,
        "second-lifetime peak {second:.2}/s over {bound:.2}/s"
    );
    // With STS fine, a cold start takes one round trip.
    let ready = report::availability(&run).time_to_ready;
    assert!(report::quantile(&ready, 1.0) < 1.0, "{:?}", ready.last());
}

/// STS answers 5xx for a quarter of the lifetime from the first refresh
/// wave on, so every pod's first refresh fails: nobody loses credentials,
/// and after recovery the retries stay under the quota.
#[test]
fn an_outage_shorter_than_the_remaining_life_costs_nothing() {
    let lifetime = Duration::from_secs(3600);
    let mut s = small("outage", 300, lifetime);
    let fault = s.faults[0];
    s.run_for = fault.until + 15 * MINUTE;
    let run = simulate(&s).unwrap();
    let summary = Summary::of(&run);
    let a = &summary.availability;
    assert_eq!((a.max_lost, a.lost_pod_seconds), (0, 0.0));
    assert_eq!(summary.failed_requests(), 0.0);
    assert!(
        summary.failed > s.pods as usize,
        "the outage must hit every pod"
    );
    let after = peak(&run, fault.until, s.run_for, 1);
    let quota = s.quota.per_second;
    assert!(after <= quota, "{after}/s after recovery, quota {quota}/s");
    assert_eq!(summary.throttled, 0);
    // Pods holding credentials retry up to --refresh-max-backoff apart.
    let fresh = summary.recovery.unwrap();
    assert!(
        fresh <= s.policy.backoff_cap.as_secs_f64() + 5.0,
        "{fresh} s"
    );
}

/// STS answers 5xx from the first refresh wave until after every pod's
/// credentials have expired. Pods started together share their expiry, and
/// hurrying retries as it nears (a quarter of the life left) once brought
/// them to STS in the same seconds, a call a second each at the end: four
/// times the quota for the whole account, as the fleet expired. The
/// hurry follows the jitter now, and no retry comes sooner than the
/// cadence of a pod holding nothing.
#[test]
fn an_outage_outlasting_the_credentials_brings_no_storm_at_expiry() {
    let lifetime = Duration::from_secs(3600);
    let s = small("long-outage", 300, lifetime);
    let fault = s.faults[0];
    let run = simulate(&s).unwrap();
    let quota = s.quota.per_second;
    let during = peak(&run, fault.from, fault.until, 10);
    assert!(
        during <= 2.0 * quota,
        "{during:.1}/s during the outage, quota {quota}/s"
    );
    let expired: std::collections::HashMap<u32, u64> = run
        .changes
        .iter()
        .filter(|c| c.state == Signing::Expired)
        .map(|c| (c.pod, c.at_ms))
        .collect();
    assert_eq!(
        expired.len(),
        s.pods as usize,
        "the outage must outlast every pod's credentials"
    );
    let mut last_minute: Vec<usize> = expired
        .iter()
        .map(|(pod, at)| {
            run.calls
                .iter()
                .filter(|c| c.pod == *pod && c.at_ms + 60_000 >= *at && c.at_ms < *at)
                .count()
        })
        .collect();
    last_minute.sort_unstable();
    let median = last_minute[last_minute.len() / 2];
    assert!(
        median <= 5,
        "{median} calls a pod in the minute before its credentials expired"
    );
}

/// Pods that start while STS is unreachable are ready within the
/// cold-start backoff cap of its return, and the fleet's retries exceed
/// the quota for seconds at most.
#[test]
fn cold_starts_recover_fast_without_flooding_sts() {
    let mut s = small("cold-start-outage", 300, Duration::from_secs(900));
    // Two minutes bring every pod to the cap; what follows is the point.
    s.faults[0].until = 2 * MINUTE;
    let fault = s.faults[0];
    s.run_for = fault.until + 2 * MINUTE;
    let run = simulate(&s).unwrap();
    let summary = Summary::of(&run);
    assert_eq!(summary.availability.never_ready, 0);
    let last_ready = summary.recovery.unwrap();
    let cap = s.policy.cold_start_backoff_cap.as_secs_f64();
    assert!(
        last_ready <= cap + 2.0,
        "last pod ready {last_ready} s after recovery"
    );
    let over = summary.seconds_over_quota;
    assert!(over <= 5, "{over} s over quota");
}

/// The most calls one pod made in any ten seconds.
fn busiest_pod(run: &Run) -> usize {
    let mut by_pod: std::collections::HashMap<u32, Vec<u64>> = Default::default();
    for c in &run.calls {
        by_pod.entry(c.pod).or_default().push(c.at_ms);
    }
    let in_ten_seconds = |times: &Vec<u64>| {
        let within = |a: u64| times.iter().filter(|&&b| b >= a && b < a + 10_000).count();
        times.iter().map(|&a| within(a)).max().unwrap_or(0)
    };
    by_pod.values().map(in_ten_seconds).max().unwrap_or(0)
}

/// A quota below a mass restart's demand: throttled pods back off (never
/// more than a few calls a pod in any ten seconds, and the fleet within a
/// few times the quota) and all get credentials.
#[test]
fn throttled_pods_back_off_and_all_get_credentials() {
    // The scenario's quota is already 60 % of the restart's demand.
    let mut s = named("throttling", 400, Duration::from_secs(900));
    s.run_for = 5 * MINUTE;
    let run = simulate(&s).unwrap();
    let summary = Summary::of(&run);
    assert!(summary.throttled > 0, "the quota must bite");
    assert_eq!(summary.availability.never_ready, 0);
    let slowest = report::quantile(&summary.availability.time_to_ready, 1.0);
    assert!(slowest <= 180.0, "last pod ready after {slowest} s");
    let busiest = busiest_pod(&run);
    assert!(busiest <= 4, "a pod called STS {busiest} times in 10 s");
    let offered = peak(&run, Duration::ZERO, s.run_for, 10);
    let quota = s.quota.per_second;
    assert!(offered <= 5.0 * quota, "{offered}/s against {quota}/s");
}

/// A bad IAM change denies every pod for a whole lifetime, then is fixed.
/// Nothing can succeed meanwhile, so the fleet must not hammer STS (and
/// throttle everyone else in the account); the fix must still be picked up
/// within minutes.
#[test]
fn a_fleet_wide_access_denied_is_retried_slowly_and_the_fix_picked_up() {
    let mut s = small("fatal", 300, Duration::from_secs(900));
    let fault = s.faults[0];
    s.run_for = fault.until + 7 * MINUTE;
    let run = simulate(&s).unwrap();
    let during = peak(&run, fault.from, fault.until, 10);
    let quota = s.quota.per_second;
    assert!(during <= quota, "{during}/s while denied, quota {quota}/s");
    let summary = Summary::of(&run);
    assert_eq!(summary.throttled, 0);
    let fixed = summary.recovery.unwrap();
    let cap = s.policy.backoff_cap.as_secs_f64();
    assert!(
        fixed <= cap + 10.0,
        "last pod fresh {fixed} s after the fix"
    );
}

/// The kubelet rotates every pod's token at 80 % of its ten-minute life;
/// pods started together rotate together, yet their STS calls after the
/// first lifetime stay within three times the steady-state mean.
#[test]
fn token_rotations_do_not_bring_back_refresh_waves() {
    let lifetime = Duration::from_secs(900);
    let mut s = named("token-rotation", 300, lifetime);
    s.start_within = Duration::from_secs(10);
    s.token_ttl = Duration::from_secs(600);
    s.run_for = 3 * lifetime;
    let run = simulate(&s).unwrap();
    let settled = peak(&run, lifetime, s.run_for, 60);
    let bound = 3.0 * report::steady_mean(&run);
    assert!(
        settled <= bound,
        "{settled:.2}/s after the first lifetime, bound {bound:.2}/s"
    );
    let summary = Summary::of(&run);
    assert_eq!(summary.failed, 0, "every call carried a valid token");
}
