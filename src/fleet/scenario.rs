//! The named runs: how many pods start when, what STS does meanwhile, and
//! which refresh policy the sidecars run.

use std::time::{Duration, SystemTime};

use super::kubelet::Kubelet;
use super::pod::{Change, Fleet};
use super::sts_model::{Call, Fault, FaultKind, Latency, Quota, StsModel};
use crate::cli::CredentialsArgs;
use crate::clock::TokioClock;
use crate::config::Env;
use crate::credentials::{sts, CredentialMode, CredentialsConfig, RefreshPolicy, SigV4Source};
use crate::metrics::Metrics;

/// STS's published request-rate quota per account and Region (docs/fleet.md).
pub const STS_QUOTA_PER_SECOND: f64 = 600.0;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// One parameterised run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub pods: u32,
    /// Pods start at uniformly random moments in this window.
    pub start_within: Duration,
    /// Simulated time from the first start to the end.
    pub run_for: Duration,
    /// STS call rates are measured from here on.
    pub measure_from: Duration,
    /// Credential lifetime requested from STS (`--session-duration`).
    pub lifetime: Duration,
    /// `expirationSeconds` of the projected token.
    pub token_ttl: Duration,
    pub quota: Quota,
    pub latency: Latency,
    pub faults: Vec<Fault>,
    pub policy: RefreshPolicy,
    pub seed: u64,
}

/// The names `Scenario::named` knows, in the order the docs show them.
pub const NAMES: &[&str] = &[
    "steady",
    "mass-restart",
    "outage",
    "long-outage",
    "throttling",
    "token-rotation",
    "cold-start-outage",
    "fatal",
];

impl Scenario {
    fn base(name: &'static str, pods: u32, lifetime: Duration, policy: RefreshPolicy) -> Self {
        Self {
            name,
            pods,
            start_within: MINUTE,
            run_for: 3 * lifetime,
            measure_from: lifetime,
            lifetime,
            // The injector's default projected token lifetime.
            token_ttl: 24 * HOUR,
            quota: Quota {
                per_second: STS_QUOTA_PER_SECOND,
                burst: STS_QUOTA_PER_SECOND,
            },
            latency: Latency {
                min: Duration::from_millis(20),
                mean_extra: Duration::from_millis(30),
            },
            faults: Vec::new(),
            policy,
            seed: 1,
        }
    }

    /// The first moment a pod started at time zero refreshes: where a fault
    /// catches the whole first refresh wave of a mass restart.
    pub fn first_wave(&self) -> Duration {
        self.policy.refresh_after(self.lifetime, 0.999_999)
    }

    /// A named scenario for `pods` sidecars whose credentials live for
    /// `lifetime` (1 h is STS's default), running `policy`. Fault lengths
    /// scale with the lifetime: the outage lasts a quarter of it (15 min at
    /// 1 h), shorter than the life left at the first refresh wave.
    pub fn named(name: &str, pods: u32, lifetime: Duration, policy: RefreshPolicy) -> Option<Self> {
        let mut s = Self::base("mass-restart", pods, lifetime, policy);
        match name {
            "steady" => {
                s.name = "steady";
                s.start_within = 24 * HOUR;
                s.measure_from = 24 * HOUR;
                s.run_for = 30 * HOUR;
            }
            "mass-restart" => {}
            "outage" => {
                s.name = "outage";
                s.faults = vec![s.fault(s.first_wave(), lifetime / 4, FaultKind::Unavailable)];
            }
            "long-outage" => {
                s.name = "long-outage";
                // From the first refresh wave until every pod's credentials
                // have expired: pods started together meet their expiry
                // together, still failing.
                let from = s.first_wave();
                let until = lifetime + s.start_within + 10 * MINUTE;
                s.faults = vec![s.fault(from, until.saturating_sub(from), FaultKind::Unavailable)];
                s.run_for = until + 15 * MINUTE;
            }
            "throttling" => {
                s.name = "throttling";
                // Below the restart's demand of one call per pod within a minute.
                let demand = f64::from(pods) / s.start_within.as_secs_f64();
                s.quota = Quota {
                    per_second: 0.6 * demand,
                    burst: 0.6 * demand,
                };
                s.run_for = 10 * MINUTE;
            }
            "token-rotation" => {
                s.name = "token-rotation";
                // Kubernetes' default expirationSeconds: rotations every ~48 min.
                s.token_ttl = HOUR;
                s.run_for = 4 * lifetime;
            }
            "cold-start-outage" => {
                s.name = "cold-start-outage";
                s.faults = vec![s.fault(Duration::ZERO, 5 * MINUTE, FaultKind::Refused)];
                s.run_for = 15 * MINUTE;
            }
            "fatal" => {
                s.name = "fatal";
                // A bad IAM change outlives the credentials, then is fixed.
                s.faults = vec![s.fault(s.first_wave(), lifetime, FaultKind::Denied)];
            }
            _ => return None,
        }
        Some(s)
    }

    fn fault(&self, from: Duration, length: Duration, kind: FaultKind) -> Fault {
        Fault {
            from,
            until: from + length,
            kind,
        }
    }

    /// Scales the quota with the fleet, keeping the ratio of a 10,000-pod
    /// fleet to the published quota; small CI fleets then meet the same
    /// pressure as full-size ones.
    pub fn with_quota_scaled_from(mut self, pods_at_full_size: u32) -> Self {
        let factor = f64::from(self.pods) / f64::from(pods_at_full_size);
        self.quota.per_second *= factor;
        self.quota.burst = (self.quota.burst * factor).max(1.0);
        self
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Run {
    pub scenario: Scenario,
    /// Every STS call, in arrival order.
    pub calls: Vec<Call>,
    /// Every change of a pod's ability to sign.
    pub changes: Vec<Change>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot build the simulation runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("the simulated sidecar configuration is invalid: {0}")]
    Config(String),
}

/// Runs `scenario` to the end in virtual time, on this thread.
pub fn simulate(scenario: &Scenario) -> Result<Run, SimError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    runtime.block_on(run(scenario))
}

pub(super) fn sidecar_config(lifetime: Duration) -> Result<CredentialsConfig, SimError> {
    let duration = format!("{}s", lifetime.as_secs());
    let env = Env::from_pairs([
        ("AWS_REGION", "us-east-1"),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/fleet"),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "/var/run/secrets/fleet/token",
        ),
        ("BEDROCK_BROKER_SESSION_DURATION", duration.as_str()),
    ]);
    CredentialsConfig::from_args(&CredentialsArgs::default(), &env)
        .map_err(|e| SimError::Config(e.to_string()))
}

async fn run(s: &Scenario) -> Result<Run, SimError> {
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = TokioClock::starting_at(epoch);
    let model = StsModel::new(clock.clone(), s.quota, s.latency, s.faults.clone(), s.seed);
    let config = sidecar_config(s.lifetime)?;
    let (CredentialMode::SigV4(SigV4Source::WebIdentity(web_identity)), Some(region)) =
        (&config.mode, &config.region)
    else {
        return Err(SimError::Config(
            "not a web identity configuration".to_owned(),
        ));
    };
    let sts = sts::client_over(&config, region, None, model.http_client());
    let kubelet = Kubelet {
        token_ttl: s.token_ttl,
        watch_interval: Duration::from_secs(1),
    };
    let fleet = Fleet::new(
        clock,
        web_identity.clone(),
        config.session.clone(),
        sts,
        s.policy.clone(),
        Metrics::new().credentials,
        kubelet,
        s.seed,
    );
    let mut rng = fastrand::Rng::with_seed(s.seed);
    for pod in 0..s.pods {
        fleet.spawn(pod, s.start_within.mul_f64(rng.f64()));
    }
    tokio::time::sleep(s.run_for).await;
    fleet.shutdown.cancel();
    Ok(Run {
        scenario: s.clone(),
        calls: model.calls(),
        changes: fleet.changes(),
    })
}
