//! The hash of a canonical request, reusing a recent one's work.
//!
//! Under load a proxy signs thousands of requests a second, and most of
//! them share all of their canonical request but the last line: the same
//! method, path and headers, the same `x-amz-date` within one second, the
//! same session token (most of the bytes). Only the payload hash differs.
//! So each thread keeps the bytes of the last canonical requests it
//! hashed without their payload line, and the SHA-256 state after each.
//! When the next request's bytes equal one of them, its state is reused
//! and only the payload line is hashed: 2 or 3 SHA-256 blocks instead of
//! about 17 with a session token. Comparing the bytes costs far less than hashing them.
//!
//! The state is SHA-256 over exactly the bytes it is stored with, so a hit
//! hashes the same input as a miss; no key or credential is cached beyond
//! what the bytes hold. Requests with a signed header that changes per
//! request always miss, at the cost of one comparison that stops at that
//! header's line; the AWS SDKs' `amz-sdk-invocation-id` would be one, and
//! is forwarded unsigned for that reason (`canonical.rs`).
//!
//! Each thread keeps its last [`ENTRIES`] prefixes, the one used last
//! first, so that requests alternating between a few models or operations
//! (a chat model and an embedding model, `converse` and
//! `converse-stream`) hit as one model's requests do; a new prefix
//! replaces the one used longest ago. They live for as long as the thread
//! runs, which for a runtime's worker is the life of the process: the
//! session token of the requests it signed stays in memory, as it does in
//! the credential cell, until later requests replace them (after a
//! credential refresh, within a second under load; an idle sidecar keeps
//! them). Prefixes over [`MAX_CACHED`] are not kept, so the buffers stay
//! small whatever headers a client sends.

use std::cell::RefCell;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::canonical::Request;

/// The longest prefix kept: several times a request with a session token
/// and a dozen headers (about 1.3 KB).
const MAX_CACHED: usize = 8 * 1024;

/// How many prefixes each thread keeps. A miss compares against each
/// (most stop at the length, the rest at the first line that differs), so
/// a few cost little more than one.
const ENTRIES: usize = 4;

/// One canonical request without its payload line, and the state after it.
struct Entry {
    /// It holds the session token: wiped when the thread ends. (An
    /// allocation left behind when a buffer grows is not wiped; nor are
    /// hyper's buffers that send the token.)
    bytes: Zeroizing<Vec<u8>>,
    /// SHA-256 after exactly `bytes` (wiped on drop: `sha2`'s `zeroize`).
    state: Sha256,
}

/// One thread's recent prefixes.
struct Recent {
    /// The prefix used last first; at most [`ENTRIES`].
    entries: Vec<Entry>,
    /// Where the next request is written before the comparison; wiped
    /// when a prefix longer than [`MAX_CACHED`] passed through.
    scratch: Zeroizing<Vec<u8>>,
}

thread_local! {
    static RECENT: RefCell<Option<Recent>> = const { RefCell::new(None) };
}

/// Whether a hash reused a kept state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Hit,
    /// Hashed whole, and kept.
    Miss,
    /// Hashed whole, not kept (too long, or the cache was unavailable).
    Uncached,
}

/// SHA-256 of `request`'s canonical form.
pub fn hash(request: &Request<'_>) -> [u8; 32] {
    hash_counted(request).0
}

fn hash_counted(request: &Request<'_>) -> ([u8; 32], Outcome) {
    let reused = RECENT.try_with(|cell| {
        // Never contended (one thread, no re-entry); a failed borrow falls
        // back to hashing without the cache rather than panicking.
        let mut recent = cell.try_borrow_mut().ok()?;
        let recent = recent.get_or_insert_with(|| Recent {
            entries: Vec::with_capacity(ENTRIES),
            scratch: Zeroizing::new(Vec::with_capacity(2048)),
        });
        recent.scratch.clear();
        request.write_prefix(&mut recent.scratch);
        let (mut state, outcome) = recent.state_after_scratch();
        state.update(request.payload_sha256_hex.as_bytes());
        Some((state.finalize().into(), outcome))
    });
    match reused {
        Ok(Some(done)) => done,
        // The thread is exiting, or the cache is in use: hash it all.
        _ => (whole(request), Outcome::Uncached),
    }
}

impl Recent {
    /// SHA-256 after the prefix in `scratch`: a kept one, or computed
    /// (and kept in place of the one used longest ago).
    fn state_after_scratch(&mut self) -> (Sha256, Outcome) {
        let scratch = &self.scratch[..];
        if let Some(i) = self.entries.iter().position(|e| e.bytes[..] == *scratch) {
            self.entries[..=i].rotate_right(1);
            return (self.entries[0].state.clone(), Outcome::Hit);
        }
        if scratch.len() > MAX_CACHED {
            let state = Sha256::new_with_prefix(scratch);
            // Wipe it and give the memory back.
            self.scratch.zeroize();
            self.scratch.shrink_to(2048);
            return (state, Outcome::Uncached);
        }
        let state = Sha256::new_with_prefix(scratch);
        // The scratch becomes the newest entry; the oldest one's buffer (a
        // new one until there are enough) the next scratch, overwritten
        // before it is read.
        let spare = match self.entries.len() < ENTRIES {
            true => None,
            false => self.entries.pop().map(|oldest| oldest.bytes),
        };
        let spare = spare.unwrap_or_else(|| Zeroizing::new(Vec::with_capacity(2048)));
        let bytes = std::mem::replace(&mut self.scratch, spare);
        self.entries.insert(
            0,
            Entry {
                bytes,
                state: state.clone(),
            },
        );
        (state, Outcome::Miss)
    }
}

/// SHA-256 of the whole canonical request, without the cache.
fn whole(request: &Request<'_>) -> [u8; 32] {
    let mut bytes = Zeroizing::new(Vec::with_capacity(2048));
    request.write(&mut bytes);
    Sha256::digest(&bytes[..]).into()
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue, Method, Uri};

    use super::*;
    use crate::proxy::signer::canonical::SignedHeaders;

    /// The prefixes kept, the one used last first.
    fn cached_prefixes() -> Vec<Vec<u8>> {
        RECENT.with(|cell| {
            cell.borrow()
                .as_ref()
                .map(|r| r.entries.iter().map(|e| e.bytes.to_vec()).collect())
                .unwrap_or_default()
        })
    }

    fn prefix_of(request: &Request<'_>) -> Vec<u8> {
        let mut prefix = Vec::new();
        request.write_prefix(&mut prefix);
        prefix
    }

    fn model(name: &str) -> Uri {
        format!("https://bedrock-runtime.us-east-1.amazonaws.com/model/{name}/converse")
            .parse()
            .unwrap()
    }

    #[test]
    fn hits_and_misses_hash_the_whole_request() {
        let (uri, other) = (model("m"), model("n"));
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let token = "t".repeat(700);
        let a = SignedHeaders::new(&headers, "h", "20261201T000000Z", Some(&token));
        let b = SignedHeaders::new(&headers, "h", "20261201T000001Z", Some(&token));
        let (p1, p2) = ("1".repeat(64), "2".repeat(64));
        let request = |uri, signed, payload| Request {
            method: &Method::POST,
            uri,
            signed,
            payload_sha256_hex: payload,
        };
        use Outcome::{Hit, Miss};
        // Miss, hit with another payload, another path, another second,
        // back to the first: each must equal hashing the whole request.
        for (uri, signed, payload, expected) in [
            (&uri, &a, &p1, Miss),
            (&uri, &a, &p2, Hit),
            (&uri, &a, &p2, Hit),
            (&other, &a, &p1, Miss),
            (&other, &b, &p1, Miss),
            (&uri, &a, &p1, Hit),
            (&uri, &a, &p2, Hit),
        ] {
            let r = request(uri, signed, payload.as_str());
            let (hash, outcome) = hash_counted(&r);
            assert_eq!(hash, whole(&r));
            assert_eq!(outcome, expected);
            assert_eq!(
                cached_prefixes().first(),
                Some(&prefix_of(&r)),
                "the cache holds this request first"
            );
        }
    }

    #[test]
    fn requests_alternating_between_models_hit() {
        let names: Vec<String> = (0..=ENTRIES).map(|i| format!("model-{i}")).collect();
        let uris: Vec<Uri> = names.iter().map(|n| model(n)).collect();
        let headers = HeaderMap::new();
        let token = "t".repeat(700);
        let signed = SignedHeaders::new(&headers, "h", "20261201T000000Z", Some(&token));
        let payload = "0".repeat(64);
        let request = |uri| Request {
            method: &Method::POST,
            uri,
            signed: &signed,
            payload_sha256_hex: &payload,
        };
        // The first `models` of them in turn, `rounds` times.
        let outcomes = |models: usize, rounds: usize| -> Vec<Outcome> {
            let mut seen = Vec::new();
            for _ in 0..rounds {
                for uri in &uris[..models] {
                    let r = request(uri);
                    let (hash, outcome) = hash_counted(&r);
                    assert_eq!(hash, whole(&r));
                    seen.push(outcome);
                }
            }
            seen
        };

        // As many models as entries: each misses once, then always hits.
        let first = outcomes(ENTRIES, 3);
        assert!(first[..ENTRIES].iter().all(|o| *o == Outcome::Miss));
        assert!(first[ENTRIES..].iter().all(|o| *o == Outcome::Hit));
        assert_eq!(cached_prefixes().len(), ENTRIES);

        // One more in rotation: each replaces the one used longest ago,
        // which is the next one wanted, so all miss; never more are kept.
        let more = outcomes(ENTRIES + 1, 2);
        assert_eq!(more[0], Outcome::Hit);
        assert!(more[ENTRIES..].iter().all(|o| *o == Outcome::Miss));
        assert_eq!(cached_prefixes().len(), ENTRIES);
        let kept: Vec<Vec<u8>> = uris[1..]
            .iter()
            .rev()
            .map(|u| prefix_of(&request(u)))
            .collect();
        assert_eq!(cached_prefixes(), kept, "the last ones used, last first");
    }

    #[test]
    fn a_busy_cache_and_a_long_prefix_hash_the_whole_request() {
        let uri: Uri = "http://127.0.0.1:9000/model/m/converse".parse().unwrap();
        let headers = HeaderMap::new();
        let short = "s".repeat(100);
        let long = "l".repeat(MAX_CACHED + 1);
        let payload = "0".repeat(64);
        let signed = |token| SignedHeaders::new(&headers, "h", "20261201T000000Z", Some(token));
        let (short, long) = (signed(&short), signed(&long));
        let request = |signed| Request {
            method: &Method::POST,
            uri: &uri,
            signed,
            payload_sha256_hex: &payload,
        };
        let (short, long) = (request(&short), request(&long));

        // Cached, then a request while the cache is borrowed: no panic,
        // the right hash, the cache untouched.
        assert_eq!(hash(&short), whole(&short));
        let kept = cached_prefixes();
        assert_eq!(kept.first(), Some(&prefix_of(&short)));
        RECENT.with(|cell| {
            let _busy = cell.borrow();
            assert_eq!(hash_counted(&long), (whole(&long), Outcome::Uncached));
        });
        assert_eq!(cached_prefixes(), kept);

        // Too long to keep: hashed, not kept, its buffer wiped and shrunk.
        assert_eq!(hash_counted(&long), (whole(&long), Outcome::Uncached));
        assert_eq!(cached_prefixes(), kept);
        RECENT.with(|cell| {
            let recent = cell.borrow();
            let recent = recent.as_ref().unwrap();
            assert!(recent.scratch.is_empty());
            assert!(recent.scratch.capacity() < MAX_CACHED);
        });
        assert_eq!(hash_counted(&short), (whole(&short), Outcome::Hit));
    }
}
