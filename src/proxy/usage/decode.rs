//! Undoing a response's `content-encoding` for the usage tap only: the
//! client still gets the compressed bytes exactly as Bedrock sent them.
//!
//! gzip and deflate are read (the codings HTTP clients ask for by
//! default); the proxy asks Bedrock for nothing else
//! ([`crate::proxy::headers`]), so any other coding means no usage.

use flate2::{Decompress, FlushDecompress, Status};
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

/// Decoded bytes handed to the tap at a time, from a buffer on the stack
/// (kept between frames, such a buffer cost each compressed answer up to
/// 64 KiB of the taps' budget). The decoder takes only the input that
/// fits it, so a gzip bomb's 16 KB frame, 16 MB decoded, is handed on
/// 8 KiB at a time too.
const OUTPUT_STEP: usize = 8 * 1024;

/// What a decoder holds, counted against the taps' budget: zlib-rs's
/// inflate state and its 32 KiB window, allocated as it opens
/// (tests/usage_tap_memory.rs holds this to what they allocate). A gzip
/// header's name and comment are skipped, not kept. flate2's `write`
/// decoders on miniz_oxide held 80 KiB and their output: 256 gzipped
/// streams, as many as HTTP/1.1 clients can hold, did not fit 16 MiB.
const DECODER_STATE: usize = 48 * 1024;

/// A streaming decoder fed frame by frame.
pub struct Inflater {
    decoder: Decompress,
    gzip: bool,
    decoded: usize,
    broken: bool,
    /// A gzip member ended: another may follow (RFC 1952, 2.2).
    member_ended: bool,
    /// The stream's end was read: what follows is not decoded.
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Inflater {
    /// `None` for identity: nothing to undo.
    pub fn new(coding: Coding) -> Option<Box<Self>> {
        let decoder = match coding {
            Coding::Identity => return None,
            // 15: the largest window, which any stream may use.
            Coding::Gzip => Decompress::new_gzip(15),
            Coding::Deflate => Decompress::new(true),
        };
        Some(Box::new(Self {
            decoder,
            gzip: coding == Coding::Gzip,
            decoded: 0,
            broken: false,
            member_ended: false,
            ended: false,
        }))
    }

    /// Decodes `data`, handing what it decodes to `sink` a piece at a
    /// time (at most [`OUTPUT_STEP`] bytes each). `false` once the stream
    /// is corrupt or past [`MAX_DECODED`]: nothing more is decoded then.
    /// Out of line: its buffer is on the stack, and only compressed
    /// answers need it.
    #[inline(never)]
    pub fn feed(&mut self, data: &[u8], sink: &mut impl FnMut(&[u8])) -> bool {
        if self.broken {
            return false;
        }
        let mut out = [0u8; OUTPUT_STEP];
        let mut rest = data;
        // Until the input is used up and nothing more comes out: a full
        // buffer may leave decoded bytes behind, which come with no more
        // input (zlib's contract).
        while !self.ended {
            let (before_in, before_out) = (self.decoder.total_in(), self.decoder.total_out());
            let status = self
                .decoder
                .decompress(rest, &mut out, FlushDecompress::None);
            let used = (self.decoder.total_in() - before_in) as usize;
            let made = (self.decoder.total_out() - before_out) as usize;
            rest = rest.get(used..).unwrap_or_default();
            match status {
                Ok(Status::StreamEnd) if self.gzip => {
                    // Ready for the next member, if one comes.
                    self.decoder.reset(true);
                    self.member_ended = true;
                }
                Ok(Status::StreamEnd) => self.ended = true,
                Ok(Status::Ok | Status::BufError) => {}
                // Bytes after a whole member that are not another one
                // (padding, a server's stray bytes): what was read stands.
                Err(_) if self.member_ended => self.ended = true,
                Err(_) => return self.stop(),
            }
            self.decoded = self.decoded.saturating_add(made);
            if self.decoded > MAX_DECODED {
                return self.stop();
            }
            if made > 0 {
                sink(&out[..made]);
            } else if used == 0 {
                break;
            }
        }
        true
    }

    fn stop(&mut self) -> bool {
        self.broken = true;
        false
    }

    /// Bytes held: the decoder's state.
    pub fn held(&self) -> usize {
        DECODER_STATE
    }

    /// Whether the stream proved corrupt or too large (no usage then).
    #[cfg(test)]
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

/// `text` gzipped or deflated (identity: as it is), for the tests of
/// whatever reads compressed answers.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn compress(coding: Coding, text: &[u8]) -> Vec<u8> {
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;
    match coding {
        Coding::Identity => text.to_vec(),
        Coding::Gzip => {
            let mut e = GzEncoder::new(Vec::new(), Compression::default());
            e.write_all(text).unwrap();
            e.finish().unwrap()
        }
        Coding::Deflate => {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(text).unwrap();
            e.finish().unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

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
            let compressed = compress(coding, &text);
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
    fn a_frame_decoding_to_many_buffers_is_decoded_to_its_end() {
        // The usage is in the last bytes of a body whose last frame (or
        // only one) decodes to far more than a buffer: what the decoder
        // still holds once the input is used up must come out too.
        let mut text = b"x".repeat(60_000);
        text.extend(br#"{"usage":{"inputTokens":3,"outputTokens":4}}"#);
        for coding in [Coding::Gzip, Coding::Deflate] {
            let compressed = compress(coding, &text);
            for frame in [compressed.len(), 16 * 1024, 7] {
                let mut inflater = Inflater::new(coding).unwrap();
                let mut out = Vec::new();
                for piece in compressed.chunks(frame) {
                    assert!(inflater.feed(piece, &mut |d| out.extend_from_slice(d)));
                }
                assert!(
                    out == text,
                    "{coding:?} in {frame} B frames: {} bytes",
                    out.len()
                );
            }
        }
    }

    #[test]
    fn every_gzip_member_is_decoded_and_stray_bytes_after_them_ignored() {
        // A gzip body may be several members (a server may start one at
        // each flush): usage in the last must be read.
        let mut body = compress(Coding::Gzip, b"one ");
        body.extend(compress(Coding::Gzip, b"two "));
        let third = compress(Coding::Gzip, b"three");
        for frame in [body.len(), 5] {
            let mut inflater = Inflater::new(Coding::Gzip).unwrap();
            let mut out = Vec::new();
            for piece in body.chunks(frame) {
                assert!(inflater.feed(piece, &mut |d| out.extend_from_slice(d)));
            }
            assert!(inflater.feed(&third, &mut |d| out.extend_from_slice(d)));
            assert!(inflater.feed(b"\0\0garbage", &mut |d| out.extend_from_slice(d)));
            assert!(inflater.feed(&third, &mut |d| out.extend_from_slice(d)));
            assert_eq!(out, b"one two three", "in {frame} B frames");
        }
        // One zlib stream only: what follows it is not decoded.
        let mut body = compress(Coding::Deflate, b"one");
        body.extend(compress(Coding::Deflate, b"two"));
        let mut inflater = Inflater::new(Coding::Deflate).unwrap();
        let mut out = Vec::new();
        assert!(inflater.feed(&body, &mut |d| out.extend_from_slice(d)));
        assert_eq!(out, b"one");
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
        assert!(largest <= OUTPUT_STEP, "{largest} bytes decoded at once");
        // Past the cap the stream stops.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(&vec![0u8; MAX_DECODED + 1]).unwrap();
        let over = e.finish().unwrap();
        let mut inflater = Inflater::new(Coding::Gzip).unwrap();
        assert!(!inflater.feed(&over, &mut |_| {}));
        assert!(inflater.is_broken());
    }
}
