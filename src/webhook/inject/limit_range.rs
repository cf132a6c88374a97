//! Fitting the sidecar's resources to its namespace's LimitRanges.
//!
//! The LimitRanger admission plugin fills a container's unset requests and
//! limits from a LimitRange's `defaultRequest` and `default`, then refuses
//! a container below `min`, above `max` (or without a limit under a `max`),
//! or past `maxLimitRequestRatio`. It re-runs after a webhook changes the
//! pod, so its defaults reach the sidecar, but its checks then refuse the
//! whole pod with a message that does not name the container. So the
//! sidecar is fitted here, the way LimitRanger would want it, for cpu and
//! memory of `type: Container` items:
//!
//! - no limit: the LimitRange's `default`, else its `max` (a limit is
//!   required under a max), else request × `maxLimitRequestRatio` (a ratio
//!   requires a limit too, and this is the most it allows); applied here
//!   rather than left to LimitRanger, so the body budget derived from the
//!   memory limit counts it;
//! - below `min`: raised to it; above `max`: lowered to it;
//! - a limit/request ratio above `maxLimitRequestRatio`: the request is
//!   raised to limit / ratio;
//! - a request left above its limit: lowered to the limit.
//!
//! Every change is reported as an admission warning. `type: Pod` items
//! (bounds on the sum of a pod's containers) are left to the API server.

use k8s_openapi::api::core::v1::{LimitRange, LimitRangeItem};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use super::quantity::{Quantity, Resource};
use super::spec::Resources;

/// One bound of one resource from a `type: Container` item.
fn bound(
    item: &LimitRangeItem,
    list: fn(&LimitRangeItem) -> Option<&std::collections::BTreeMap<String, K8sQuantity>>,
    r: Resource,
) -> Option<Quantity> {
    let raw = list(item)?.get(r.as_str())?;
    Quantity::parse(raw.0.trim()).ok()
}

/// An item's `maxLimitRequestRatio` for `r` (a plain number), if positive.
fn ratio(item: &LimitRangeItem, r: Resource) -> Option<f64> {
    item.max_limit_request_ratio
        .as_ref()
        .and_then(|m| m.get(r.as_str()))
        .and_then(|q| Quantity::parse(q.0.trim()).ok())
        .map(|q| q.value())
        .filter(|v| *v > 0.0)
}

/// The `type: Container` items of every LimitRange.
fn container_items(limit_ranges: &[LimitRange]) -> impl Iterator<Item = &LimitRangeItem> {
    limit_ranges
        .iter()
        .filter_map(|lr| lr.spec.as_ref())
        .flat_map(|spec| spec.limits.iter())
        .filter(|item| item.type_ == "Container")
}

/// The sidecar's resources fitted to `limit_ranges`, and what changed.
pub fn fit(resources: &Resources, limit_ranges: &[LimitRange]) -> (Resources, Vec<String>) {
    let items: Vec<&LimitRangeItem> = container_items(limit_ranges).collect();
    let mut fitted = resources.clone();
    let mut changes = Vec::new();
    for r in Resource::BOTH {
        let mut fit = Fit {
            r,
            request: fitted.request(r).cloned(),
            limit: fitted.limit(r).cloned(),
            changes: &mut changes,
        };
        fit.default_limit(&items);
        for item in &items {
            fit.bounds(item);
        }
        fit.request_within_limit();
        let (request, limit) = (fit.request, fit.limit);
        match r {
            Resource::Cpu => (fitted.cpu_request, fitted.cpu_limit) = (request, limit),
            Resource::Memory => (fitted.memory_request, fitted.memory_limit) = (request, limit),
        }
    }
    (fitted, changes)
}

/// One resource of the sidecar being fitted.
struct Fit<'c> {
    r: Resource,
    request: Option<Quantity>,
    limit: Option<Quantity>,
    changes: &'c mut Vec<String>,
}

#[derive(Clone, Copy)]
enum Slot {
    Request,
    Limit,
}

impl Fit<'_> {
    fn get(&self, slot: Slot) -> Option<&Quantity> {
        match slot {
            Slot::Request => self.request.as_ref(),
            Slot::Limit => self.limit.as_ref(),
        }
    }

    fn set(&mut self, slot: Slot, to: Quantity, why: &str) {
        let (what, place) = match slot {
            Slot::Request => ("request", &mut self.request),
            Slot::Limit => ("limit", &mut self.limit),
        };
        let from = place.as_ref().map_or("none", Quantity::as_str).to_owned();
        self.changes.push(format!(
            "{} {what} {from} -> {} ({why})",
            self.r.as_str(),
            to.as_str()
        ));
        *place = Some(to);
    }

    fn units(&self, slot: Slot) -> Option<u64> {
        self.get(slot).map(|q| q.units(self.r))
    }

    /// No limit: LimitRanger's `default`, else the `max` (which requires
    /// one), else the most a `maxLimitRequestRatio` allows (it requires one).
    fn default_limit(&mut self, items: &[&LimitRangeItem]) {
        if self.limit.is_some() {
            return;
        }
        let r = self.r;
        let default = items
            .iter()
            .find_map(|i| bound(i, |i| i.default.as_ref(), r));
        let max = items.iter().find_map(|i| bound(i, |i| i.max.as_ref(), r));
        if let Some(d) = default {
            self.set(Slot::Limit, d, "default");
        } else if let Some(m) = max {
            self.set(Slot::Limit, m, "max, which requires a limit");
        } else if let (Some(ratio), Some(request)) = (
            items.iter().filter_map(|i| ratio(i, r)).reduce(f64::min),
            self.units(Slot::Request),
        ) {
            let most = Quantity::from_units(r, (request as f64 * ratio).floor() as u64);
            self.set(
                Slot::Limit,
                most,
                "maxLimitRequestRatio, which requires a limit",
            );
        }
    }

    /// `min`, `max` and `maxLimitRequestRatio` of one item.
    fn bounds(&mut self, item: &LimitRangeItem) {
        let r = self.r;
        if let Some(min) = bound(item, |i| i.min.as_ref(), r) {
            for slot in [Slot::Request, Slot::Limit] {
                if self.units(slot).is_some_and(|u| u < min.units(r)) {
                    self.set(slot, min.clone(), "min");
                }
            }
        }
        if let Some(max) = bound(item, |i| i.max.as_ref(), r) {
            for slot in [Slot::Limit, Slot::Request] {
                if self.units(slot).is_some_and(|u| u > max.units(r)) {
                    self.set(slot, max.clone(), "max");
                }
            }
        }
        if let (Some(ratio), Some(limit), Some(request)) = (
            ratio(item, r),
            self.units(Slot::Limit),
            self.units(Slot::Request),
        ) {
            let least = (limit as f64 / ratio).ceil() as u64;
            if request < least {
                self.set(
                    Slot::Request,
                    Quantity::from_units(r, least),
                    "maxLimitRequestRatio",
                );
            }
        }
    }

    /// A default limit below the request would leave the request above it.
    fn request_within_limit(&mut self) {
        if let (Some(limit), Some(request)) = (self.units(Slot::Limit), self.units(Slot::Request)) {
            if request > limit {
                let to = Quantity::from_units(self.r, limit);
                self.set(Slot::Request, to, "at most the limit");
            }
        }
    }
}
