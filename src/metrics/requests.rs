//! `requests_total` children, resolved once per (operation, auth mode,
//! status code) instead of by label strings on every request: a request
//! with a common status code finds its counter by index, without hashing
//! labels or taking the vector's lock. A child is created on first use,
//! so no series is exported before it has counted something.

use std::sync::OnceLock;

use http::StatusCode;
use prometheus::{IntCounter, IntCounterVec};

/// Status codes resolved by index; others take the label path.
const COMMON: [u16; 17] = [
    200, 201, 204, 400, 401, 403, 404, 408, 413, 422, 424, 429, 499, 500, 502, 503, 504,
];
const CODES: usize = COMMON.len();

fn code_index(status: StatusCode) -> Option<usize> {
    COMMON.iter().position(|c| *c == status.as_u16())
}

/// The counters of `requests_total` (labels `operation`, `code`, `auth`).
#[derive(Debug)]
pub struct RequestCounters {
    vec: IntCounterVec,
    auths: usize,
    table: Box<[OnceLock<IntCounter>]>,
}

impl RequestCounters {
    /// For `operations` × `auths` label values, addressed by index.
    pub fn new(vec: &IntCounterVec, operations: usize, auths: usize) -> Self {
        Self {
            vec: vec.clone(),
            auths,
            table: (0..operations * auths * CODES)
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Counts one request; `operation` and `auth` are the label values of
    /// the indexes `op` and `auth_index`.
    pub fn inc(
        &self,
        (op, operation): (usize, &str),
        (auth_index, auth): (usize, &str),
        status: StatusCode,
    ) {
        let slot = code_index(status)
            .map(|c| (op * self.auths + auth_index) * CODES + c)
            .and_then(|i| self.table.get(i));
        match slot {
            Some(slot) => slot
                .get_or_init(|| {
                    self.vec
                        .with_label_values(&[operation, status.as_str(), auth])
                })
                .inc(),
            None => self
                .vec
                .with_label_values(&[operation, status.as_str(), auth])
                .inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    #[test]
    fn counts_under_the_same_labels_either_way() {
        let vec = IntCounterVec::new(Opts::new("r", "r"), &["operation", "code", "auth"]).unwrap();
        let c = RequestCounters::new(&vec, 2, 2);
        for status in [200, 200, 504, 418] {
            c.inc((1, "b"), (1, "y"), StatusCode::from_u16(status).unwrap());
        }
        assert_eq!(vec.with_label_values(&["b", "200", "y"]).get(), 2);
        assert_eq!(vec.with_label_values(&["b", "504", "y"]).get(), 1);
        assert_eq!(vec.with_label_values(&["b", "418", "y"]).get(), 1);
        assert_eq!(vec.with_label_values(&["a", "200", "x"]).get(), 0);
    }
}
