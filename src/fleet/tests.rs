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

fn small(name: &str, pods: u32, lifetime: Duration) -> Scenario {
    Scenario::named(
        name,
        pods,
        lifetime,
        crate::credentials::RefreshPolicy::default(),
    )
    .unwrap()
    .with_quota_scaled_from(10_000)
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
    let mut s = small("mass-restart", 300, lifetime);
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
}
