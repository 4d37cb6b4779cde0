//! Splits byte chunks into lines, and keeps the last lines of a step for error messages.

use aib_core::{OutputSink, OutputStream};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Turns chunks into lines (`\n`, with a trailing `\r` dropped); invalid UTF-8 is replaced.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    buf: Vec<u8>,
}

/// Longest line kept whole; longer ones are cut (binary output must not exhaust memory).
const MAX_LINE: usize = 64 * 1024;

impl LineSplitter {
    pub(crate) fn push(&mut self, data: &[u8], mut emit: impl FnMut(&str)) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + i;
            let line = self.buf[start..end].strip_suffix(b"\r").unwrap_or(&self.buf[start..end]);
            emit(&String::from_utf8_lossy(line));
            start = end + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            emit(&String::from_utf8_lossy(&self.buf));
            self.buf.clear();
        }
    }

    pub(crate) fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.buf.is_empty() {
            emit(&String::from_utf8_lossy(&self.buf));
            self.buf.clear();
        }
    }
}

/// A sink that passes lines on and keeps the last few, for error messages.
pub(crate) struct Tail {
    inner: Arc<dyn OutputSink>,
    last: Mutex<VecDeque<String>>,
    keep: usize,
}

impl Tail {
    pub(crate) fn new(inner: Arc<dyn OutputSink>, keep: usize) -> Self {
        Tail { inner, last: Mutex::new(VecDeque::new()), keep }
    }

    /// The last lines, oldest first, joined by ` | `.
    pub(crate) fn summary(&self) -> String {
        self.last.lock().map(|l| l.iter().cloned().collect::<Vec<_>>().join(" | ")).unwrap_or_default()
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.last.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }
}

impl OutputSink for Tail {
    fn line(&self, stream: OutputStream, line: &str) {
        if let Ok(mut l) = self.last.lock() {
            if l.len() == self.keep {
                l.pop_front();
            }
            l.push_back(line.to_string());
        }
        self.inner.line(stream, line);
    }

    fn progress(&self, done: u64, total: Option<u64>, unit: &str) {
        self.inner.progress(done, total, unit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunks() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.push(b"one\r\ntw", |l| out.push(l.to_string()));
        s.push(b"o\nthree", |l| out.push(l.to_string()));
        s.finish(|l| out.push(l.to_string()));
        assert_eq!(out, ["one", "two", "three"]);
    }
}
