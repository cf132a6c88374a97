//! The hash of a canonical request, reusing the previous one's work.
//!
//! Under load a proxy signs thousands of requests a second, and most of
//! them share all of their canonical request but the last line: the same
//! method, path and headers, the same `x-amz-date` within one second, the
//! same session token (most of the bytes). Only the payload hash differs.
//! So each thread keeps the bytes of the last canonical request it hashed
//! without its payload line, and the SHA-256 state after them. When the
//! next request's bytes are equal, the state is reused and only the
//! payload line is hashed: 2 or 3 SHA-256 blocks instead of about 17 with
//! a session token. Comparing the bytes costs far less than hashing them.
//!
//! The state is SHA-256 over exactly the bytes it is stored with, so a hit
//! hashes the same input as a miss; no key or credential is cached beyond
//! what the bytes hold. Requests with a signed header that changes per
//! request always miss, at the cost of one comparison that stops at that
//! header's line; the AWS SDKs' `amz-sdk-invocation-id` would be one, and
//! is forwarded unsigned for that reason (`canonical.rs`).
//!
//! Each thread keeps its last prefix (and the one before, in the second
//! buffer) for as long as it runs, which for a runtime's worker is the
//! life of the process: the session token of the last request it signed
//! stays in memory, as it does in the credential cell, until a later
//! request overwrites it. Prefixes over [`MAX_CACHED`] are not kept, so
//! the two buffers stay small whatever headers a client sends.

use std::cell::RefCell;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::canonical::Request;

/// The longest prefix kept: several times a request with a session token
/// and a dozen headers (about 1.3 KB).
const MAX_CACHED: usize = 8 * 1024;

/// One thread's last canonical request and the state after it.
struct Last {
    /// The canonical request without its payload line. It holds the
    /// session token: wiped when the thread ends or a longer prefix than
    /// [`MAX_CACHED`] passed through. (An allocation left behind when a
    /// buffer grows is not wiped; nor are hyper's buffers that send the
    /// token.)
    bytes: Zeroizing<Vec<u8>>,
    /// Where the next request is written before the comparison.
    scratch: Zeroizing<Vec<u8>>,
    /// SHA-256 after exactly `bytes` (wiped on drop: `sha2`'s `zeroize`).
    state: Sha256,
}

thread_local! {
    static LAST: RefCell<Option<Last>> = const { RefCell::new(None) };
}

/// SHA-256 of `request`'s canonical form.
pub fn hash(request: &Request<'_>) -> [u8; 32] {
    let reused = LAST.try_with(|cell| {
        // Never contended (one thread, no re-entry); a failed borrow falls
        // back to hashing without the cache rather than panicking.
        let mut last = cell.try_borrow_mut().ok()?;
        let last = last.get_or_insert_with(|| Last {
            bytes: Zeroizing::new(Vec::with_capacity(2048)),
            scratch: Zeroizing::new(Vec::with_capacity(2048)),
            state: Sha256::new(),
        });
        last.scratch.clear();
        request.write_prefix(&mut last.scratch);
        let mut state = if last.scratch[..] == last.bytes[..] {
            last.state.clone()
        } else if last.scratch.len() > MAX_CACHED {
            let state = Sha256::new_with_prefix(&last.scratch[..]);
            // Wipe it and give the memory back.
            last.scratch.zeroize();
            last.scratch.shrink_to(2048);
            state
        } else {
            // The bytes and their state are replaced together.
            std::mem::swap(&mut last.bytes, &mut last.scratch);
            last.state = Sha256::new_with_prefix(&last.bytes[..]);
            last.state.clone()
        };
        state.update(request.payload_sha256_hex.as_bytes());
        Some(state.finalize().into())
    });
    match reused {
        Ok(Some(hash)) => hash,
        // The thread is exiting, or the cache is in use: hash it all.
        _ => whole(request),
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

    fn cached_prefix() -> Option<Vec<u8>> {
        LAST.with(|cell| cell.borrow().as_ref().map(|l| l.bytes.to_vec()))
    }

    #[test]
    fn hits_and_misses_hash_the_whole_request() {
        let uri: Uri = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
            .parse()
            .unwrap();
        let other: Uri = "https://bedrock-runtime.us-east-1.amazonaws.com/model/n/converse"
            .parse()
            .unwrap();
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
        // Miss, hit with another payload, another path, another second,
        // back to the first: each must equal hashing the whole request.
        for (uri, signed, payload) in [
            (&uri, &a, &p1),
            (&uri, &a, &p2),
            (&uri, &a, &p2),
            (&other, &a, &p1),
            (&other, &b, &p1),
            (&uri, &a, &p1),
            (&uri, &a, &p2),
        ] {
            let r = request(uri, signed, payload.as_str());
            assert_eq!(hash(&r), whole(&r));
            let mut prefix = Vec::new();
            r.write_prefix(&mut prefix);
            assert_eq!(
                cached_prefix(),
                Some(prefix),
                "the cache holds this request"
            );
        }
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
        let mut prefix = Vec::new();
        short.write_prefix(&mut prefix);
        LAST.with(|cell| {
            let _busy = cell.borrow();
            assert_eq!(hash(&long), whole(&long));
        });
        assert_eq!(cached_prefix(), Some(prefix.clone()));

        // Too long to keep: hashed, not kept, its buffer wiped and shrunk.
        assert_eq!(hash(&long), whole(&long));
        assert_eq!(cached_prefix(), Some(prefix));
        LAST.with(|cell| {
            let last = cell.borrow();
            let last = last.as_ref().unwrap();
            assert!(last.scratch.is_empty());
            assert!(last.scratch.capacity() < MAX_CACHED);
        });
        assert_eq!(hash(&short), whole(&short));
    }
}
