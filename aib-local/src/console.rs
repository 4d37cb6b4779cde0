//! The serial console of a build VM, followed into the run's output and bounded; private
//! files for the keys a build VM is given.

use aib_core::{Error, OutputStream, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Creates `p` 0600 (exclusively, never through a link) and writes `data`: secrets are never
/// readable by others, not even for a moment.
pub(crate) fn write_private(p: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .map_err(|e| Error::io(p, e))?;
    f.write_all(data).map_err(|e| Error::io(p, e))
}

/// The console file is cut back to nothing past this size: a guest that floods its serial
/// console cannot fill the host's disk.
const CONSOLE_MAX_BYTES: u64 = 16 << 20;
/// A console line longer than this is cut into pieces.
const CONSOLE_LINE_MAX: usize = 8 << 10;

/// Follows the serial console file until QEMU exits: reads only what is new (never the whole
/// file again), emits complete lines (long ones in pieces), and cuts the file back when it grows
/// past [`CONSOLE_MAX_BYTES`].
pub(crate) async fn follow_console(path: PathBuf, mut done: tokio::sync::watch::Receiver<bool>, out: Arc<dyn aib_core::OutputSink>) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let (mut pos, mut partial, mut buf) = (0u64, Vec::<u8>::new(), vec![0u8; 64 << 10]);
    let mut file: Option<tokio::fs::File> = None;
    let emit = |bytes: &[u8]| {
        for piece in bytes.chunks(CONSOLE_LINE_MAX) {
            let line = String::from_utf8_lossy(piece).trim_end().replace(|c: char| c.is_control(), "");
            if !line.is_empty() {
                out.line(OutputStream::Stdout, &line);
            }
        }
    };
    loop {
        let finished = *done.borrow();
        if file.is_none() {
            file = tokio::fs::File::open(&path).await.ok();
        }
        let mut more = false;
        if let Some(f) = file.as_mut() {
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            if len < pos {
                pos = 0;
            }
            if len > pos && f.seek(std::io::SeekFrom::Start(pos)).await.is_ok() {
                let n = f.read(&mut buf).await.unwrap_or(0);
                pos += n as u64;
                more = n > 0 && pos < len;
                partial.extend_from_slice(&buf[..n]);
                while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                    emit(&partial[..i]);
                    partial.drain(..=i);
                }
                while partial.len() > CONSOLE_LINE_MAX {
                    emit(&partial[..CONSOLE_LINE_MAX]);
                    partial.drain(..CONSOLE_LINE_MAX);
                }
            }
            if pos > CONSOLE_MAX_BYTES && !more {
                if let Ok(w) = std::fs::OpenOptions::new().write(true).open(&path) {
                    let _ = w.set_len(0);
                }
                pos = 0;
                out.line(OutputStream::Stderr, &format!("[console over {} MiB: its file was cut back]", CONSOLE_MAX_BYTES >> 20));
            }
        }
        if more {
            continue;
        }
        if finished {
            emit(&partial);
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), done.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    #[tokio::test]
    async fn the_console_is_followed_incrementally_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        use std::io::Write;
        writeln!(f, "boot: hello\r").unwrap();
        f.write_all(&vec![b'z'; CONSOLE_LINE_MAX * 2 + 5]).unwrap();
        writeln!(f).unwrap();
        let flood = format!("{}\n", "y".repeat(999));
        for _ in 0..(CONSOLE_MAX_BYTES as usize / 1000 + 100) {
            f.write_all(flood.as_bytes()).unwrap();
        }
        write!(f, "last words").unwrap();
        let sink = aib_core::MemorySink::with_limit(64 << 20);
        let (tx, rx) = watch::channel(false);
        let follower = tokio::spawn(follow_console(path.clone(), rx, Arc::new(sink.clone())));
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(true).unwrap();
        follower.await.unwrap();
        let lines = sink.lines();
        assert_eq!(lines[0].1, "boot: hello");
        assert_eq!((lines[1].1.len(), lines[2].1.len(), lines[3].1.as_str()), (CONSOLE_LINE_MAX, CONSOLE_LINE_MAX, "zzzzz"));
        assert!(lines.iter().any(|(s, l)| *s == OutputStream::Stderr && l.contains("cut back")), "the cut is said");
        assert_eq!(lines.last().unwrap().1, "last words", "a final line without a newline is not lost");
        assert!(std::fs::metadata(&path).unwrap().len() < CONSOLE_MAX_BYTES, "the file was cut back");
    }
}
