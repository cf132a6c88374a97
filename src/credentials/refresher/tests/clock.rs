//! The refresher and the clocks: this node's against STS's (skew,
//! credentials that arrive expired) and the wall clock against the
//! monotonic one (a suspend).

use super::*;

#[tokio::test(start_paused = true)]
async fn the_skew_is_measured_from_refused_answers_too() {
    // A chained role with the node 400 s ahead: its signed AssumeRole is
    // refused ("Signature expired") every time, and only the refusals'
    // Date can say why.
    let h = start_ahead(vec![Err("SignatureDoesNotMatch")], Duration::from_secs(400));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.call_offsets().len(), 1);
    assert_eq!(h.metrics.credentials.clock_skew.get(), 400.0);
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn credentials_that_arrive_expired_do_not_make_it_spin() {
    let h = start(vec![Ok(Duration::ZERO); 1000]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = h.call_offsets();
    assert!(calls.len() <= 11, "{} STS calls in 10 s", calls.len());
    let gaps: Vec<_> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_secs(1)),
        "{gaps:?}"
    );
    assert!(h.cell.usable(h.clock.now()).is_err());
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn credentials_that_arrive_expired_never_replace_usable_ones() {
    let mut script = vec![Ok(Duration::from_secs(40))];
    script.extend(std::iter::repeat_n(Ok(Duration::ZERO), 10));
    let h = start(script);
    tokio::time::sleep(Duration::from_millis(20_500)).await;
    let held = h.key();
    assert_eq!(held.as_deref(), Some("AKID40"));
    assert!(h.cell.usable(h.clock.now()).is_ok());
    let error = h.cell.last_error().unwrap();
    assert!(error.contains("expired"), "{error}");
    let m = &h.metrics.credentials;
    assert_eq!(m.refresh_errors.with_label_values(&["fatal"]).get(), 1);
    assert_eq!(m.refreshes.with_label_values(&["success"]).get(), 1);
    h.shutdown.cancel();
}

/// The same finding as it happens: a node clock two hours ahead receives
/// one-hour credentials that are an hour past expiry. The skew is exported.

#[tokio::test(start_paused = true)]
async fn a_node_clock_far_ahead_is_measured_and_does_not_make_it_spin() {
    let h = start_ahead(
        vec![Ok(Duration::from_secs(3600)); 100],
        Duration::from_secs(7200),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(h.call_offsets().len() <= 11, "{:?}", h.call_offsets());
    assert_eq!(h.metrics.credentials.clock_skew.get(), 7200.0);
    let error = h.cell.last_error().unwrap();
    assert!(error.contains("3600 s before they arrived"), "{error}");
    assert!(
        h.cell.load().is_none(),
        "expired credentials are never stored"
    );
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_suspend_that_outlives_the_credentials_is_noticed_by_the_wall_clock() {
    // A suspended VM or laptop: on resume the wall clock has moved on and
    // the monotonic one has not, so a schedule kept by the monotonic clock
    // alone left expired credentials in place (503s) for up to half their
    // lifetime.
    let h = start(vec![
        Ok(Duration::from_secs(3600)),
        Ok(Duration::from_secs(3600)),
    ]);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.call_offsets().len(), 1);
    h.clock.jump(Duration::from_secs(4000));
    assert!(h.cell.usable(h.clock.now()).is_err());
    tokio::time::sleep(WALL_CLOCK_CHECK + Duration::from_secs(1)).await;
    assert_eq!(h.call_offsets().len(), 2, "{:?}", h.call_offsets());
    assert!(h.cell.usable(h.clock.now()).is_ok());
    h.shutdown.cancel();
}
