//! Transfers in flight: the board the status page reads, progress bars shown only on a terminal,
//! and the log writer that keeps log lines from tearing through the bars.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::transfer::{CopyMethod, ProgressSink};

/// Where progress is shown: always on the in-flight board, as bars when drawing is enabled.
/// Cheap to clone; clones share the board.
#[derive(Clone, Default)]
pub struct Progress {
    multi: Option<MultiProgress>,
    board: Arc<Board>,
}

/// One image's copy to some targets, as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    pub job: String,
    pub image: String,
    pub source_id: String,
    pub targets: Vec<String>,
    /// `stream` (through glance-sync, with byte progress) or `glance-download` (pulled by the
    /// target, whose Glance shows no byte progress: `bytes_done` stays 0).
    pub method: CopyMethod,
    pub size: u64,
    pub bytes_done: u64,
    pub started_at: String,
    /// Over the last few seconds; 0 while nothing moves.
    pub bytes_per_second: f64,
}

#[derive(Default)]
struct Board {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, Arc<Entry>>>,
}

struct Entry {
    shown: InFlight,
    bytes: AtomicU64,
    /// (when, bytes then, rate then): the rate is re-measured at most once a second.
    sample: Mutex<(Instant, u64, f64)>,
}

/// How often the rate is measured, and after how long without a byte it reads 0.
const RATE_WINDOW: Duration = Duration::from_secs(1);

impl Entry {
    fn advance(&self, n: u64) {
        let done = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        // Contention means another chunk is measuring right now: skip, never wait.
        if let Ok(mut s) = self.sample.try_lock() {
            let dt = s.0.elapsed();
            if dt >= RATE_WINDOW {
                *s = (Instant::now(), done, (done - s.1) as f64 / dt.as_secs_f64());
            }
        }
    }

    fn snapshot(&self) -> InFlight {
        let done = self.bytes.load(Ordering::Relaxed);
        let (at, then, rate) = *self.sample.lock().expect("not poisoned");
        let rate = if at.elapsed() > 3 * RATE_WINDOW {
            // Stalled, or the first second: what moved since the last measure.
            (done - then) as f64 / at.elapsed().as_secs_f64()
        } else {
            rate
        };
        InFlight {
            bytes_done: done,
            bytes_per_second: rate,
            ..self.shown.clone()
        }
    }
}

/// What the board needs to know of a transfer when it starts.
pub struct Transfer<'a> {
    pub job: &'a str,
    pub image: &'a str,
    pub source_id: &'a str,
    pub targets: Vec<String>,
    pub method: CopyMethod,
    pub size: u64,
}

impl Progress {
    /// Bars on stderr when `enabled` (callers pass "stderr is a terminal and logs are text").
    pub fn new(enabled: bool) -> Progress {
        Progress {
            multi: enabled.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            board: Arc::default(),
        }
    }

    /// The transfers in flight now, oldest first.
    pub fn in_flight(&self) -> Vec<InFlight> {
        let entries = self.board.entries.lock().expect("not poisoned");
        entries.values().map(|e| e.snapshot()).collect()
    }

    /// Puts one image's transfer on the board (and a bar on the terminal for a stream); it leaves
    /// both when the returned `Bar` is dropped.
    pub fn start(&self, t: Transfer<'_>) -> Bar {
        let id = self.board.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            shown: InFlight {
                job: t.job.to_string(),
                image: t.image.to_string(),
                source_id: t.source_id.to_string(),
                targets: t.targets,
                method: t.method,
                size: t.size,
                bytes_done: 0,
                started_at: jiff::Timestamp::now().to_string(),
                bytes_per_second: 0.0,
            },
            bytes: AtomicU64::new(0),
            sample: Mutex::new((Instant::now(), 0, 0.0)),
        });
        self.board
            .entries
            .lock()
            .expect("not poisoned")
            .insert(id, entry.clone());
        let bar = match t.method {
            CopyMethod::Stream => self.bar(t.image, t.size),
            CopyMethod::GlanceDownload => None,
        };
        Bar {
            bar,
            entry,
            board: self.board.clone(),
            id,
        }
    }

    fn bar(&self, label: &str, size: u64) -> Option<ProgressBar> {
        self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:30!} {bar:30} {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta}",
                )
                .expect("valid progress template"),
            );
            // The label is an image name, chosen by whoever uploaded it: escaped for the terminal.
            bar.set_message(crate::terminal::escape(label));
            bar
        })
    }

    /// A `tracing` writer that suspends the bars while a log line is written.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter {
            multi: self.multi.clone(),
        }
    }
}

/// One transfer's place on the board and its bar, if drawn.
pub struct Bar {
    bar: Option<ProgressBar>,
    entry: Arc<Entry>,
    board: Arc<Board>,
    id: u64,
}

impl ProgressSink for Bar {
    fn advance(&self, bytes: u64) {
        self.entry.advance(bytes);
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.board
            .entries
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[derive(Clone)]
pub struct LogWriter {
    multi: Option<MultiProgress>,
}

/// Buffers one log event and writes it to stderr in one piece.
pub struct LogLine {
    buf: Vec<u8>,
    multi: Option<MultiProgress>,
}

impl Write for LogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().write_all(&self.buf);
        };
        match &self.multi {
            Some(m) => m.suspend(write),
            None => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine {
            buf: Vec::new(),
            multi: self.multi.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(image: &str) -> Transfer<'_> {
        Transfer {
            job: "j",
            image,
            source_id: "id",
            targets: vec!["dr".into()],
            method: CopyMethod::Stream,
            size: 100,
        }
    }

    #[test]
    fn a_transfer_is_on_the_board_with_its_bytes_until_it_ends() {
        let progress = Progress::default();
        let a = progress.start(transfer("a"));
        let b = progress.clone().start(transfer("b"));
        a.advance(30);
        a.advance(12);
        let shown = progress.in_flight();
        assert_eq!(
            shown
                .iter()
                .map(|t| (t.image.as_str(), t.bytes_done))
                .collect::<Vec<_>>(),
            [("a", 42), ("b", 0)]
        );
        drop(a);
        assert_eq!(progress.in_flight().len(), 1);
        drop(b);
        assert!(progress.in_flight().is_empty());
    }

    #[test]
    fn the_rate_is_measured_over_the_last_second_and_falls_to_zero_when_stalled() {
        let progress = Progress::default();
        let a = progress.start(transfer("a"));
        // Pretend the last measure was 1.5 s ago with nothing moved since.
        *a.entry.sample.lock().unwrap() = (Instant::now() - Duration::from_millis(1500), 0, 0.0);
        a.advance(3_000_000);
        let rate = progress.in_flight()[0].bytes_per_second;
        assert!((1_900_000.0..2_100_000.0).contains(&rate), "{rate}");
        // Nothing for 4 s: the shown rate decays to what moved since the last measure.
        *a.entry.sample.lock().unwrap() = (Instant::now() - Duration::from_secs(4), 3_000_000, 2e6);
        let rate = progress.in_flight()[0].bytes_per_second;
        assert!(rate < 1.0, "{rate}");
    }
}
