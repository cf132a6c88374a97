//! The injected sidecar's webhook-wide defaults (the chart sets them);
//! every one can be overridden per pod by an annotation.

use super::types::{
    Audience, ImageRef, LogLevel, PullPolicy, Quantity, SidecarMode, TokenExpiration,
};
use crate::config::aws::Region;
use crate::telemetry::LogFormat;

/// Resource requests and limits of the sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    pub cpu_request: Option<Quantity>,
    pub memory_request: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
}

/// A request above its limit, which the API server would refuse.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAboveLimit<'a> {
    /// `cpu` or `memory`.
    pub resource: &'static str,
    pub request: &'a str,
    pub limit: &'a str,
}

impl Resources {
    /// Every request above its limit.
    pub fn problems(&self) -> Vec<RequestAboveLimit<'_>> {
        [
            ("cpu", &self.cpu_request, &self.cpu_limit),
            ("memory", &self.memory_request, &self.memory_limit),
        ]
        .into_iter()
        .filter_map(|(resource, request, limit)| match (request, limit) {
            (Some(r), Some(l)) if r.value() > l.value() => Some(RequestAboveLimit {
                resource,
                request: r.as_str(),
                limit: l.as_str(),
            }),
            _ => None,
        })
        .collect()
    }
}

/// Webhook-wide defaults of the injected sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarDefaults {
    pub image: ImageRef,
    /// `None` leaves `imagePullPolicy` to the API server's defaulting.
    pub image_pull_policy: Option<PullPolicy>,
    /// `None`: pods must name their region by annotation.
    pub region: Option<Region>,
    pub mode: SidecarMode,
    pub audience: Audience,
    pub token_expiration: TokenExpiration,
    pub resources: Resources,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// UID for the sidecar unless the pod's containers share another non-root UID.
    pub run_as_user: i64,
}
