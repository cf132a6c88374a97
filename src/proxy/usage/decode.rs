//! Undoing a response's `content-encoding` for the usage tap only: the
//! client still gets the compressed bytes exactly as Bedrock sent them.
//!
//! gzip and deflate are read (the codings HTTP clients ask for by
//! default); the proxy asks Bedrock for nothing else
//! ([`crate::proxy::headers`]), so any other coding means no usage.

use std::io::Write;

use bytes::Bytes;
use flate2::write::{GzDecoder, ZlibDecoder};
use http::header::CONTENT_ENCODING;
use http::HeaderMap;

/// Decoded bytes one response may produce for the tap. Bedrock's answers
/// are far smaller; past this the tap stops (no usage), so a runaway
/// ratio cannot cost unbounded CPU.
const MAX_DECODED: usize = 64 * 1024 * 1024;

/// How the body is encoded, as far as the tap can read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    /// HTTP's `deflate`: the zlib format (RFC 9110 §8.4.1.2).
    Deflate,
}

impl Coding {
    /// `None` for a coding the tap cannot read (or several stacked).
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let mut codings = headers
            .get_all(CONTENT_ENCODING)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
        let coding = match codings.next() {
            None => return Some(Self::Identity),
            Some(c) if c.eq_ignore_ascii_case("gzip") || c.eq_ignore_ascii_case("x-gzip") => {
                Self::Gzip
            }
            Some(c) if c.eq_ignore_ascii_case("deflate") => Self::Deflate,
            Some(_) => return None,
        };
        codings.next().is_none().then_some(coding)
    }
}

/// A streaming decoder fed frame by frame.
pub enum Inflater {
    Gzip(GzDecoder<Vec<u8>>),
    Deflate(ZlibDecoder<Vec<u8>>),
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gzip(_) => "Inflater::Gzip",
            Self::Deflate(_) => "Inflater::Deflate",
        })
    }
}

impl Inflater {
    /// `None` for identity: nothing to undo.
    pub fn new(coding: Coding) -> Option<Box<Self>> {
        match coding {
            Coding::Identity => None,
            Coding::Gzip => Some(Self::boxed(true)),
            Coding::Deflate => Some(Self::boxed(false)),
        }
    }

    /// Out of line, and reached only for compressed answers: a decoder's
    /// 43 KB inflate state passes through the stack, and inlined into the
    /// tap it gave the tap a 54 KB frame on every response (a stack probe
    /// per 4 KB page).
    #[inline(never)]
    fn boxed(gzip: bool) -> Box<Self> {
        Box::new(if gzip {
            Self::Gzip(GzDecoder::new(Vec::new()))
        } else {
            Self::Deflate(ZlibDecoder::new(Vec::new()))
        })
    }

    /// The bytes `data` decodes to (possibly none yet); `None` once the
    /// stream is corrupt or past [`MAX_DECODED`].
    pub fn feed(&mut self, data: &[u8], decoded_so_far: usize) -> Option<Bytes> {
        let out = match self {
            Self::Gzip(d) => d
                .write_all(data)
                .and_then(|()| d.flush())
                .map(|()| d.get_mut()),
            Self::Deflate(d) => d
                .write_all(data)
                .and_then(|()| d.flush())
                .map(|()| d.get_mut()),
        }
        .ok()?;
        if decoded_so_far + out.len() > MAX_DECODED {
            return None;
        }
        Some(Bytes::from(std::mem::take(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;

    fn headers(ce: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in ce {
            h.append(CONTENT_ENCODING, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn codings_the_tap_reads() {
        assert_eq!(Coding::of(&headers(&[])), Some(Coding::Identity));
        assert_eq!(Coding::of(&headers(&["identity"])), Some(Coding::Identity));
        assert_eq!(Coding::of(&headers(&["GZIP"])), Some(Coding::Gzip));
        assert_eq!(Coding::of(&headers(&["x-gzip"])), Some(Coding::Gzip));
        assert_eq!(Coding::of(&headers(&["deflate"])), Some(Coding::Deflate));
        assert_eq!(Coding::of(&headers(&["br"])), None);
        assert_eq!(Coding::of(&headers(&["gzip, br"])), None);
        assert_eq!(Coding::of(&headers(&["gzip", "gzip"])), None);
    }

    #[test]
    fn decodes_byte_by_byte_and_stops_on_garbage() {
        let text = b"data: {\"usage\": {\"prompt_tokens\": 3}}\n\n".repeat(50);
        for coding in [Coding::Gzip, Coding::Deflate] {
            let compressed = match coding {
                Coding::Gzip => {
                    let mut e = GzEncoder::new(Vec::new(), Compression::default());
                    e.write_all(&text).unwrap();
                    e.finish().unwrap()
                }
                _ => {
                    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
                    e.write_all(&text).unwrap();
                    e.finish().unwrap()
                }
            };
            let mut inflater = Inflater::new(coding).unwrap();
            let mut out = Vec::new();
            for byte in compressed.chunks(1) {
                out.extend_from_slice(&inflater.feed(byte, out.len()).unwrap());
            }
            assert_eq!(out, text);
        }
        let mut inflater = Inflater::new(Coding::Gzip).unwrap();
        assert!(inflater.feed(b"definitely not gzip", 0).is_none());
    }
}
