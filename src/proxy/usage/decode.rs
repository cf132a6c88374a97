//! Undoing a response's `content-encoding` for the usage tap only: the
//! client still gets the compressed bytes exactly as Bedrock sent them.
//!
//! gzip and deflate are read (the codings HTTP clients ask for by
//! default); the proxy asks Bedrock for nothing else
//! ([`crate::proxy::headers`]), so any other coding means no usage.

use std::io::Write;

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

    /// Whether the body has a content coding other than identity (readable
    /// or not): its bytes are not those its content type describes.
    pub fn encoded(headers: &HeaderMap) -> bool {
        Self::of(headers) != Some(Self::Identity)
    }
}

/// Compressed input decoded per step: deflate expands at most about 1,032
/// times, so a step's output stays near 1 MiB however a frame is built
/// (a gzip bomb's 16 KB frame decodes to 16 MB at once otherwise).
const INPUT_STEP: usize = 1024;

/// Output capacity kept between frames; a larger buffer (left by a step
/// that expanded a lot) is given back.
const KEPT_CAPACITY: usize = 64 * 1024;

/// What a decoder holds besides its output, counted against the taps'
/// budget: miniz_oxide's inflate state (about 43 KB, its 32 KiB window
/// included), flate2's 32 KiB write buffer and the gzip header's state
/// (tests/usage_tap_memory.rs holds it to what they allocate).
const DECODER_STATE: usize = 80 * 1024;

/// A streaming decoder fed frame by frame.
pub struct Inflater {
    decoder: Decoder,
    decoded: usize,
    broken: bool,
}

enum Decoder {
    Gzip(GzDecoder<Vec<u8>>),
    Deflate(ZlibDecoder<Vec<u8>>),
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.decoder {
            Decoder::Gzip(_) => "Inflater::Gzip",
            Decoder::Deflate(_) => "Inflater::Deflate",
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
        Box::new(Self {
            decoder: if gzip {
                Decoder::Gzip(GzDecoder::new(Vec::new()))
            } else {
                Decoder::Deflate(ZlibDecoder::new(Vec::new()))
            },
            decoded: 0,
            broken: false,
        })
    }

    /// Decodes `data`, handing what it decodes to `sink` a step at a time
    /// (about 1 MiB at most each). `false` once the stream is corrupt or
    /// past [`MAX_DECODED`]: nothing more is decoded then.
    pub fn feed(&mut self, data: &[u8], sink: &mut impl FnMut(&[u8])) -> bool {
        if self.broken {
            return false;
        }
        for step in data.chunks(INPUT_STEP) {
            let out = match &mut self.decoder {
                Decoder::Gzip(d) => d
                    .write_all(step)
                    .and_then(|()| d.flush())
                    .map(|()| d.get_mut()),
                Decoder::Deflate(d) => d
                    .write_all(step)
                    .and_then(|()| d.flush())
                    .map(|()| d.get_mut()),
            };
            let Ok(out) = out else {
                self.broken = true;
                return false;
            };
            self.decoded = self.decoded.saturating_add(out.len());
            if self.decoded > MAX_DECODED {
                self.broken = true;
                *out = Vec::new();
                return false;
            }
            if !out.is_empty() {
                sink(out);
            }
            out.clear();
            if out.capacity() > KEPT_CAPACITY {
                *out = Vec::new();
            }
        }
        true
    }

    /// Bytes held: the decoder's state and its output buffer.
    pub fn held(&self) -> usize {
        DECODER_STATE
            + match &self.decoder {
                Decoder::Gzip(d) => d.get_ref().capacity(),
                Decoder::Deflate(d) => d.get_ref().capacity(),
            }
    }

    /// Whether the stream proved corrupt or too large (no usage then).
    #[cfg(test)]
    pub fn is_broken(&self) -> bool {
        self.broken
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
    fn a_body_is_encoded_by_any_coding_but_identity() {
        let encoded = |values: &[&str]| Coding::encoded(&headers(values));
        assert!(!encoded(&[]));
        assert!(!encoded(&["identity"]));
        assert!(!encoded(&[" Identity , "]));
        assert!(encoded(&["gzip"]));
        assert!(encoded(&["identity", "br"]));
        assert!(encoded(&["identity, deflate"]));
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
                assert!(inflater.feed(byte, &mut |d| out.extend_from_slice(d)));
            }
            assert_eq!(out, text);
        }
        let mut inflater = Inflater::new(Coding::Gzip).unwrap();
        assert!(!inflater.feed(b"definitely not gzip", &mut |_| {}));
        assert!(inflater.is_broken());
        assert!(!inflater.feed(b"", &mut |_| {}));
    }

    #[test]
    fn a_bomb_is_decoded_a_step_at_a_time_and_stopped_at_the_cap() {
        // 16 MB of zeros, compressed to about 16 KB, arriving as one frame.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(&vec![0u8; 16 * 1024 * 1024]).unwrap();
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let mut inflater = Inflater::new(Coding::Gzip).unwrap();
        let (mut largest, mut total) = (0, 0);
        assert!(inflater.feed(&bomb, &mut |d| {
            largest = largest.max(d.len());
            total += d.len();
        }));
        assert_eq!(total, 16 * 1024 * 1024);
        assert!(
            largest <= 1100 * INPUT_STEP,
            "a step decoded {largest} bytes"
        );
        // Past the cap the stream stops, its buffer given back.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(&vec![0u8; MAX_DECODED + 1]).unwrap();
        let over = e.finish().unwrap();
        let mut inflater = Inflater::new(Coding::Gzip).unwrap();
        assert!(!inflater.feed(&over, &mut |_| {}));
        assert!(inflater.is_broken());
    }
}
