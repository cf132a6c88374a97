//! The query string: its canonical (signed) form, and the one form it is
//! forwarded in.
//!
//! SigV4 decodes each `key=value` pair as a form would and re-encodes it
//! strictly, so `next=http://x:1/` is signed as `next=http%3A%2F%2Fx%3A1%2F`.
//! A server that canonicalises the raw query differently (some keep it as
//! received) would then compute another signature. Forwarding the query in
//! that same strict encoding removes the ambiguity: every canonicaliser
//! agrees on a query that is already canonical in its encoding.

use std::borrow::Cow;

use super::encode::{encode, form_decode};

/// The pairs of a query, decoded, in order; empty pieces (`a&&b`) dropped.
fn pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .as_bytes()
        .split(|b| *b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (key, value) = match piece.iter().position(|b| *b == b'=') {
                Some(eq) => (&piece[..eq], &piece[eq + 1..]),
                None => (piece, &piece[piece.len()..]),
            };
            (form_decode(key), form_decode(value))
        })
}

fn encoded(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    encode(&mut out, s.as_bytes(), false);
    // Only ASCII is written by `encode`.
    String::from_utf8(out).unwrap_or_default()
}

/// Writes the canonical query: encoded pairs sorted by key, then value.
pub fn write_canonical(sink: &mut Vec<u8>, query: Option<&str>) {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return;
    };
    let mut sorted: Vec<(String, String)> = pairs(query)
        .map(|(k, v)| (encoded(&k), encoded(&v)))
        .collect();
    sorted.sort();
    for (i, (key, value)) in sorted.iter().enumerate() {
        if i > 0 {
            sink.extend_from_slice(b"&");
        }
        sink.extend_from_slice(key.as_bytes());
        sink.extend_from_slice(b"=");
        sink.extend_from_slice(value.as_bytes());
    }
}

/// The query as it is forwarded: each pair in the client's order, encoded
/// exactly as it is signed. Borrowed when it already is.
pub fn normalised(query: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(query.len());
    for (key, value) in pairs(query) {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&encoded(&key));
        out.push('=');
        out.push_str(&encoded(&value));
    }
    if out == query {
        Cow::Borrowed(query)
    } else {
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(q: &str) -> String {
        let mut out = Vec::new();
        write_canonical(&mut out, Some(q));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_pairs_are_strictly_encoded_and_sorted() {
        assert_eq!(canonical("next=http://x:1/"), "next=http%3A%2F%2Fx%3A1%2F");
        assert_eq!(canonical("b=2&a=1&a=0&&c"), "a=0&a=1&b=2&c=");
        assert_eq!(canonical("k=a+b%2B"), "k=a%20b%2B");
    }

    #[test]
    fn the_forwarded_query_keeps_order_and_is_its_own_canonical_form() {
        assert_eq!(normalised("next=http://x:1/"), "next=http%3A%2F%2Fx%3A1%2F");
        assert_eq!(normalised("b=2&a=1&&c"), "b=2&a=1&c=");
        assert!(matches!(normalised("a=1&b=%2F"), Cow::Borrowed(_)));
        for q in ["next=http://x:1/", "b=2&a=1", "x=%zz+y&%E1%88%B4", "a=%FF"] {
            let once = normalised(q).into_owned();
            assert_eq!(canonical(&once), canonical(q), "{q}");
            assert_eq!(normalised(&once), once, "{q}");
        }
    }
}
