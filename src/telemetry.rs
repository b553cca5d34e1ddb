//! Logging: text or JSON lines through `tracing`, one access line per request
//! (target `portcullis::access`) and audit events (target `portcullis::audit`).
//!
//! Nothing logged ever contains a password, code, secret, cookie or token:
//! access lines carry the path without its query string, and audit events
//! name users and factor types only.
//!
//! Everything goes to stderr. Access lines are batched: a background thread
//! writes what accumulated every [`BATCH_WINDOW`], so a busy gateway makes one
//! `write` per batch instead of one per request (the syscall cost about a tenth
//! of a proxied request's CPU). Every other event is written at once, after
//! the access lines before it, so the order holds and start-up, audit and
//! error lines are never late. At most one window of access lines is lost if
//! the process dies abruptly; an orderly exit logs "stopped", which flushes.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber (a no-op if one is installed already).
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogSink::start())
        // Colour codes only for a person watching; a log file or collector gets
        // plain text (and fewer bytes per access line).
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_target(true).try_init(),
    };
}

/// Emits an audit event: `event` names what happened; fields say who and how.
#[macro_export]
macro_rules! audit {
    ($event:literal $(, $($field:tt)*)?) => {
        tracing::info!(target: "portcullis::audit", event = $event $(, $($field)*)?)
    };
}

/// How long access lines may wait before they are written.
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// Past this many pending bytes (stderr slower than the traffic), access lines
/// are written directly by the thread that logs them: memory stays bounded and
/// the log applies back-pressure as it did unbatched.
const MAX_PENDING: usize = 1 << 20;

/// The access log's target, the only one batched.
const ACCESS_TARGET: &str = "portcullis::access";

/// The writer behind the subscriber (see the module doc).
#[derive(Clone)]
struct LogSink(Arc<Shared>);

/// Where lines end up: stderr, or a buffer in tests.
type Output = Box<dyn Write + Send>;

struct Shared {
    /// Access lines not yet written.
    pending: Mutex<Vec<u8>>,
    /// Signalled when `pending` stops being empty.
    wake: Condvar,
    /// Held while writing, and taken before `pending`: a batch and a direct
    /// write never interleave or overtake each other.
    out: Mutex<Output>,
    /// False when the batching thread could not be started: write directly.
    batching: AtomicBool,
}

static SINK: OnceLock<LogSink> = OnceLock::new();

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogSink {
    /// The process-wide sink on stderr, starting its thread on first use.
    fn start() -> Self {
        SINK.get_or_init(|| Self::new(Box::new(std::io::stderr())))
            .clone()
    }

    /// A sink writing to `out`, with its batching thread (which lives as long
    /// as the process; there is one sink per process outside tests).
    fn new(out: Output) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            wake: Condvar::new(),
            out: Mutex::new(out),
            batching: AtomicBool::new(true),
        });
        let worker = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || worker.run());
        if spawned.is_err() {
            shared.batching.store(false, Ordering::Relaxed);
        }
        LogSink(shared)
    }
}

impl Shared {
    /// The batching thread: waits for a first line, lets a window's worth
    /// gather, writes it in one go.
    fn run(&self) {
        let mut spare = Vec::with_capacity(64 * 1024);
        loop {
            {
                let mut pending = lock(&self.pending);
                while pending.is_empty() {
                    pending = self.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
                }
            }
            std::thread::sleep(BATCH_WINDOW);
            let mut out = lock(&self.out);
            std::mem::swap(&mut *lock(&self.pending), &mut spare);
            let _ = out.write_all(&spare);
            let _ = out.flush();
            drop(out);
            spare.clear();
            // Do not keep a burst's worth of memory around for good.
            spare.shrink_to(256 * 1024);
        }
    }

    /// Writes what is pending, then `line`, directly.
    fn write_through(&self, line: &[u8]) {
        let mut out = lock(&self.out);
        let mut pending = lock(&self.pending);
        let _ = out.write_all(&pending);
        pending.clear();
        drop(pending);
        let _ = out.write_all(line);
        let _ = out.flush();
    }

    /// Queues an access line for the batching thread.
    fn append(&self, line: &[u8]) {
        let mut pending = lock(&self.pending);
        if !self.batching.load(Ordering::Relaxed) || pending.len() + line.len() > MAX_PENDING {
            drop(pending);
            return self.write_through(line);
        }
        let was_empty = pending.is_empty();
        pending.extend_from_slice(line);
        drop(pending);
        if was_empty {
            self.wake.notify_one();
        }
    }
}

/// Writes any batched access lines now (for an orderly exit).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.0.write_through(&[]);
    }
}

/// One event's writer: the formatter hands it the whole line in one call.
struct EventWriter<'a> {
    sink: &'a Shared,
    batch: bool,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.batch {
            self.sink.append(buf);
        } else {
            self.sink.write_through(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> EventWriter<'a> {
        EventWriter {
            sink: &self.0,
            batch: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventWriter<'a> {
        EventWriter {
            sink: &self.0,
            batch: meta.target() == ACCESS_TARGET,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A clonable in-memory output.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8_lossy(&lock(&self.0)).into_owned()
        }
    }

    #[test]
    fn access_lines_are_batched_and_other_lines_keep_the_order() {
        let buf = Buf::default();
        let sink = LogSink::new(Box::new(buf.clone()));
        sink.0.append(b"access 1\n");
        sink.0.append(b"access 2\n");
        // Another event: what was queued before it goes first.
        sink.0.write_through(b"audit\n");
        assert_eq!(buf.text(), "access 1\naccess 2\naudit\n");
        // A lone access line arrives after the batch window.
        sink.0.append(b"access 3\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !buf.text().ends_with("access 3\n") {
            assert!(Instant::now() < deadline, "the batch was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(buf.text(), "access 1\naccess 2\naudit\naccess 3\n");
    }

    #[test]
    fn a_full_queue_is_written_by_the_caller() {
        let buf = Buf::default();
        let sink = LogSink::new(Box::new(buf.clone()));
        let line = vec![b'x'; MAX_PENDING];
        sink.0.append(b"first\n");
        sink.0.append(&line);
        // Over the bound: written at once, after what was queued.
        let text = buf.text();
        assert!(text.starts_with("first\nxxx"), "{}", &text[..10.min(text.len())]);
        assert_eq!(text.len(), 6 + MAX_PENDING);
    }
}
