//! Percent-encoding and -decoding as SigV4 canonicalisation does it for
//! every service but S3: everything except the unreserved characters
//! (`A-Z a-z 0-9 - . _ ~`) is encoded, with upper-case hex digits.

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

const UNRESERVED: u8 = 1;
const SLASH: u8 = 2;

/// For each byte: `UNRESERVED` when SigV4 leaves it as it is, `SLASH` for
/// `/`. A table lookup per byte instead of a chain of comparisons: the
/// model id in the path is encoded on every request.
const PLAIN: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            table[i] = UNRESERVED;
        }
        i += 1;
    }
    table[b'/' as usize] = SLASH;
    table
};

/// Writes `bytes` percent-encoded, leaving unreserved characters (and `/`
/// when `keep_slash`) as they are. Runs of plain bytes go out in one piece.
pub fn encode(sink: &mut Vec<u8>, bytes: &[u8], keep_slash: bool) {
    let plain = if keep_slash {
        UNRESERVED | SLASH
    } else {
        UNRESERVED
    };
    let mut plain_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if PLAIN[usize::from(b)] & plain != 0 {
            continue;
        }
        sink.extend_from_slice(&bytes[plain_from..i]);
        sink.extend_from_slice(&[
            b'%',
            HEX_UPPER[usize::from(b >> 4)],
            HEX_UPPER[usize::from(b & 0xf)],
        ]);
        plain_from = i + 1;
    }
    sink.extend_from_slice(&bytes[plain_from..]);
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one `application/x-www-form-urlencoded` component the way the
/// WHATWG URL parser (and so aws-sigv4) does: `+` is a space, `%XX` a byte,
/// a `%` without two hex digits stays literal, invalid UTF-8 becomes U+FFFD.
pub fn form_decode(component: &[u8]) -> String {
    let mut out = Vec::with_capacity(component.len());
    let mut i = 0;
    while i < component.len() {
        let b = component[i];
        let escaped = (b == b'%')
            .then(|| {
                Some(hex_value(*component.get(i + 1)?)? << 4 | hex_value(*component.get(i + 2)?)?)
            })
            .flatten();
        match (b, escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (other, None) => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(s: &str, keep_slash: bool) -> String {
        let mut out = Vec::new();
        encode(&mut out, s.as_bytes(), keep_slash);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encodes_all_but_unreserved() {
        assert_eq!(encoded("a-b._~Z9", false), "a-b._~Z9");
        assert_eq!(
            encoded(":/?#[]@!$&'()*+,;=% ", false),
            "%3A%2F%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2B%2C%3B%3D%25%20"
        );
        assert_eq!(encoded("/a b/ሴ", true), "/a%20b/%E1%88%B4");
    }

    #[test]
    fn only_unreserved_bytes_and_kept_slashes_stay() {
        for b in 0..=255u8 {
            let unreserved = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
            for keep_slash in [false, true] {
                let mut out = Vec::new();
                encode(&mut out, &[b], keep_slash);
                let stays = unreserved || (keep_slash && b == b'/');
                let expected = if stays {
                    vec![b]
                } else {
                    format!("%{b:02X}").into_bytes()
                };
                assert_eq!(out, expected, "byte {b:#04x}, keep_slash {keep_slash}");
            }
        }
    }

    #[test]
    fn decodes_like_a_form() {
        assert_eq!(form_decode(b"a+b%20c%2B"), "a b c+");
        assert_eq!(form_decode(b"%zz%4"), "%zz%4");
        assert_eq!(form_decode(b"%FF"), "\u{FFFD}");
        assert_eq!(form_decode(b"%e1%88%b4"), "ሴ");
    }
}
