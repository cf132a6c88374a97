//! The bounded `model` label: an allow-list, or the first N models seen;
//! everything else is `other`, so a client cannot grow the series count.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::proxy::UsageLabels;

/// Bounded `model` label values: an allow-list, or the first `limit` models
/// seen; everything else is `other`.
#[derive(Debug)]
pub struct ModelLabels {
    allow: Option<HashSet<String>>,
    seen: Mutex<HashSet<Arc<str>>>,
    limit: usize,
    other: Arc<str>,
}

impl ModelLabels {
    /// The label policy, or `None` when usage metrics are off.
    pub fn new(policy: &UsageLabels) -> Option<Self> {
        let (allow, limit) = match policy {
            UsageLabels::Off => return None,
            UsageLabels::FirstSeen(limit) => (None, *limit),
            UsageLabels::AllowList(models) => {
                (Some(models.iter().cloned().collect()), models.len())
            }
        };
        Some(Self {
            allow,
            seen: Mutex::new(HashSet::new()),
            limit,
            other: Arc::from("other"),
        })
    }

    pub fn label(&self, model: &str) -> Arc<str> {
        if let Some(allow) = &self.allow {
            if !allow.contains(model) {
                return self.other.clone();
            }
        }
        let Ok(mut seen) = self.seen.lock() else {
            return self.other.clone();
        };
        if let Some(known) = seen.get(model) {
            return known.clone();
        }
        if seen.len() >= self.limit {
            return self.other.clone();
        }
        let label: Arc<str> = Arc::from(model);
        seen.insert(label.clone());
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_by_the_limit_or_the_allow_list() {
        let first = ModelLabels::new(&UsageLabels::FirstSeen(1)).unwrap();
        assert_eq!(&*first.label("a"), "a");
        assert_eq!(&*first.label("b"), "other");
        assert_eq!(&*first.label("a"), "a");
        let allow = ModelLabels::new(&UsageLabels::AllowList(vec!["a".into()])).unwrap();
        assert_eq!(&*allow.label("a"), "a");
        assert_eq!(&*allow.label("b"), "other");
        assert!(ModelLabels::new(&UsageLabels::Off).is_none());
    }
}
