//! The bounded `model` label: an allow-list, or the first N models that
//! got a successful answer; everything else is `other`, so a client cannot
//! grow the series count, and a label value is never longer than
//! [`MAX_MODEL_LABEL_LEN`].
//!
//! Each label's token counters are resolved once and shared, so counting
//! a known model's usage hashes no label values. Looking a model up reads
//! an immutable map through arc-swap: no lock, no allocation. Only a model
//! not seen yet, while slots remain, costs a copy of its name, and it takes
//! a slot only once its request succeeded ([`ModelLabels::resolve`]):
//! requests for models that do not exist do not use up the slots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec};

use crate::proxy::UsageLabels;

/// Longest `model` label value; longer ids are counted as `other`, as
/// are ids with a control character. Model ids and inference-profile
/// ARNs are well under it.
pub const MAX_MODEL_LABEL_LEN: usize = 200;

/// The four token directions, in counter order.
pub const DIRECTIONS: [&str; 4] = ["input", "output", "cache_read", "cache_write"];

/// The token counters of one `model` label, resolved on first use.
#[derive(Debug)]
pub struct ModelCounters {
    label: Arc<str>,
    tokens: IntCounterVec,
    by_direction: [OnceLock<IntCounter>; 4],
}

impl ModelCounters {
    fn new(label: &str, tokens: &IntCounterVec) -> Arc<Self> {
        Arc::new(Self {
            label: Arc::from(label),
            tokens: tokens.clone(),
            by_direction: Default::default(),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The counter of direction `i` of [`DIRECTIONS`].
    pub fn tokens(&self, i: usize) -> &IntCounter {
        self.by_direction[i].get_or_init(|| {
            self.tokens
                .with_label_values(&[&*self.label, DIRECTIONS[i]])
        })
    }
}

/// A request's model, before its answer decides whether it gets a slot.
#[derive(Debug, Clone)]
pub enum ModelRef {
    /// Already a label (or `other`).
    Known(Arc<ModelCounters>),
    /// Not seen yet; becomes a label if the request succeeds and a slot is left.
    Pending(Box<str>),
}

/// foldhash instead of SipHash: every successful request looks its model
/// up here, and SipHash was most of that lookup. Flooding is not a concern:
/// the map holds at most the label limit, and the seed is per process.
type Seen = HashMap<Box<str>, Arc<ModelCounters>, foldhash::fast::RandomState>;

/// Bounded `model` label values.
#[derive(Debug)]
pub struct ModelLabels {
    /// Allow-list mode: every allowed model, resolved up front.
    allow: Option<Seen>,
    /// First-seen mode: the models that have a slot (copied on write).
    seen: ArcSwap<Seen>,
    /// Serialises slot claims.
    claim: Mutex<()>,
    limit: usize,
    other: Arc<ModelCounters>,
    tokens: IntCounterVec,
}

impl ModelLabels {
    /// The label policy over `tokens` (labels `model`, `direction`), or
    /// `None` when usage metrics are off.
    pub fn new(policy: &UsageLabels, tokens: &IntCounterVec) -> Option<Self> {
        let (allow, limit) = match policy {
            UsageLabels::Off => return None,
            UsageLabels::FirstSeen(limit) => (None, *limit),
            UsageLabels::AllowList(models) => {
                let allowed = models
                    .iter()
                    .filter(|m| m.len() <= MAX_MODEL_LABEL_LEN)
                    .map(|m| (Box::from(m.as_str()), ModelCounters::new(m, tokens)))
                    .collect();
                (Some(allowed), 0)
            }
        };
        Some(Self {
            allow,
            seen: ArcSwap::from_pointee(Seen::default()),
            claim: Mutex::new(()),
            limit,
            other: ModelCounters::new("other", tokens),
            tokens: tokens.clone(),
        })
    }

    /// What `model` would be counted as, without claiming a slot.
    pub fn lookup(&self, model: &str) -> ModelRef {
        if model.len() > MAX_MODEL_LABEL_LEN {
            return ModelRef::Known(self.other.clone());
        }
        if let Some(allow) = &self.allow {
            return ModelRef::Known(allow.get(model).unwrap_or(&self.other).clone());
        }
        let seen = self.seen.load();
        match seen.get(model) {
            Some(known) => ModelRef::Known(known.clone()),
            // Checked only here: the map holds no such id, so a known
            // model's lookup pays nothing for it.
            None if seen.len() >= self.limit || model.chars().any(char::is_control) => {
                ModelRef::Known(self.other.clone())
            }
            None => ModelRef::Pending(model.into()),
        }
    }

    /// The counters of a request that succeeded: a pending model takes a
    /// slot if one is left, else it is `other`.
    pub fn resolve(&self, model: ModelRef) -> Arc<ModelCounters> {
        let name = match model {
            ModelRef::Known(counters) => return counters,
            ModelRef::Pending(name) => name,
        };
        let Ok(_claiming) = self.claim.lock() else {
            return self.other.clone();
        };
        let seen = self.seen.load();
        if let Some(known) = seen.get(&name) {
            return known.clone();
        }
        if seen.len() >= self.limit {
            return self.other.clone();
        }
        let counters = ModelCounters::new(&name, &self.tokens);
        let mut next = Seen::clone(&seen);
        next.insert(name, counters.clone());
        self.seen.store(Arc::new(next));
        counters
    }

    /// Lookup and resolve at once, for tests of the policy.
    #[cfg(test)]
    pub fn label(&self, model: &str) -> Arc<str> {
        self.resolve(self.lookup(model)).label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn tokens() -> IntCounterVec {
        IntCounterVec::new(Opts::new("t", "t"), &["model", "direction"]).unwrap()
    }

    #[test]
    fn labels_are_bounded_by_the_limit_or_the_allow_list() {
        let first = ModelLabels::new(&UsageLabels::FirstSeen(1), &tokens()).unwrap();
        assert_eq!(&*first.label("a"), "a");
        assert_eq!(&*first.label("b"), "other");
        assert_eq!(&*first.label("a"), "a");
        let allow = ModelLabels::new(&UsageLabels::AllowList(vec!["a".into()]), &tokens()).unwrap();
        assert_eq!(&*allow.label("a"), "a");
        assert_eq!(&*allow.label("b"), "other");
        assert!(ModelLabels::new(&UsageLabels::Off, &tokens()).is_none());
    }

    #[test]
    fn only_resolved_models_take_slots_and_long_ids_are_other() {
        let labels = ModelLabels::new(&UsageLabels::FirstSeen(1), &tokens()).unwrap();
        // Looked up (requested) but never resolved (the request failed).
        for m in ["does-not-exist", "neither"] {
            assert!(matches!(labels.lookup(m), ModelRef::Pending(_)));
        }
        assert_eq!(&*labels.label("real"), "real");
        assert_eq!(&*labels.label("does-not-exist"), "other");
        let long = "m".repeat(MAX_MODEL_LABEL_LEN + 1);
        let fresh = ModelLabels::new(&UsageLabels::FirstSeen(5), &tokens()).unwrap();
        assert_eq!(&*fresh.label(&long), "other");
        assert_eq!(
            &*fresh.label(&long[..MAX_MODEL_LABEL_LEN]),
            &long[..MAX_MODEL_LABEL_LEN]
        );
    }

    #[test]
    fn ids_with_control_characters_are_other() {
        // A percent-encoded NUL in the path, or an escape in a JSON body,
        // decodes to a control character: no dashboard should show one.
        let labels = ModelLabels::new(&UsageLabels::FirstSeen(5), &tokens()).unwrap();
        for id in [
            "a\0b",
            "line\nbreak",
            "tab\tbed",
            "c1\u{85}control",
            "\u{7f}",
        ] {
            assert_eq!(&*labels.label(id), "other", "{id:?}");
        }
        assert_eq!(
            &*labels.label("anthropic.claude-3-5-sonnet-20240620-v1:0"),
            "anthropic.claude-3-5-sonnet-20240620-v1:0"
        );
        assert_eq!(&*labels.label("modèle-ü"), "modèle-ü");
    }

    #[test]
    fn counters_of_one_label_are_shared() {
        let t = tokens();
        let labels = ModelLabels::new(&UsageLabels::FirstSeen(2), &t).unwrap();
        labels.resolve(labels.lookup("a")).tokens(0).inc_by(3);
        labels.resolve(labels.lookup("a")).tokens(0).inc_by(4);
        assert_eq!(t.with_label_values(&["a", "input"]).get(), 7);
    }
}
