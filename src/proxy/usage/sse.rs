//! Usage in a `text/event-stream` response (the OpenAI-compatible API):
//! OpenAI sends it in the last chunk, so the last `data:` line carrying a
//! `"usage"` key wins.

use super::json::Envelope;
use super::json::Usage;

/// Longest partial line kept between frames: a usage line is short, and a
/// giant line is not worth holding.
const MAX_CARRY: usize = 64 * 1024;

/// Scans complete lines as frames arrive.
#[derive(Debug, Default)]
pub struct SseScanner {
    /// The unfinished last line of the previous frame.
    carry: Vec<u8>,
    last: Option<Usage>,
}

impl SseScanner {
    pub fn observe(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line, after) = rest.split_at(pos);
            rest = &after[1..];
            if self.carry.is_empty() {
                self.check_line(line);
            } else {
                self.carry.extend_from_slice(line);
                let joined = std::mem::take(&mut self.carry);
                self.check_line(&joined);
            }
        }
        if !rest.is_empty() {
            if self.carry.len() + rest.len() <= MAX_CARRY {
                self.carry.extend_from_slice(rest);
            } else {
                self.carry.clear();
            }
        }
    }

    pub fn finish(self) -> Option<Usage> {
        self.last
    }

    fn check_line(&mut self, line: &[u8]) {
        let Some(payload) = line.strip_prefix(b"data:") else {
            return;
        };
        if memchr::memmem::find(payload, b"\"usage\"").is_none() {
            return;
        }
        if let Some(u) = Envelope::usage(payload.trim_ascii()) {
            self.last = Some(u);
        }
    }
}
