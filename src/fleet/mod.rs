//! Fleet simulation: thousands of sidecars' real credential refreshers,
//! under virtual time, against an in-process STS.
//!
//! Every simulated pod runs the sidecar's own `Refresher`, `RefreshPolicy`,
//! `CredentialCell`, `WebIdentitySource` and aws-sdk-sts client, and the
//! token watch's rotation trigger; only the HTTP connection to STS (an
//! in-process model), the token file (memory) and the kubelet are
//! simulated. Time is tokio's paused clock, so hours pass in seconds.
//! `docs/fleet.md` has the scenarios, their numbers and what they changed.

mod answers;
mod kubelet;
mod pod;
pub mod report;
mod scenario;
mod sts_model;
mod summary;
#[cfg(test)]
mod tests;

pub use pod::{Change, Signing};
pub use scenario::{simulate, Run, Scenario, SimError, NAMES, STS_QUOTA_PER_SECOND};
pub use sts_model::{Call, Fault, FaultKind, Latency, Outcome, Quota};
pub use summary::{markdown, Summary, RATE_WINDOW};
