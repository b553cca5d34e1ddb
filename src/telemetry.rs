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
//!
//! Log lines cannot be forged. Values logged often come from a request (a
//! login, a transaction id in a path), so escaping happens in two central
//! places rather than at each call site: the text format writes every field
//! through [`SafeFields`] (a value that is not a plain token is quoted, with
//! quotes, backslashes and control characters escaped, so it can neither end
//! the line nor fake another field), and the sink escapes any control
//! character left in a formatted line, in either format, except the line's
//! own final newline (JSON already escapes C0 controls, but not DEL, C1
//! controls or U+2028/U+2029, which some log viewers treat as line breaks).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{FormatFields, Writer};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber (a no-op if one is installed already):
/// the formatter, filtered by `log.level`, and beside it the
/// [`AuditLayer`](crate::audit::AuditLayer), unfiltered, which copies audit
/// events to the store's writer (so a quieter log level keeps the audit
/// trail).
pub fn init(cfg: &LogConfig) {
    install(cfg, None);
}

/// What the command-line subcommands (`portcullis users ...`) add to
/// `log.level`: a library's lines below WARN (sqlx's PostgreSQL notices,
/// such as `relation "schema_migrations" already exists, skipping`), the
/// store's revocation listener starting and the SQLite key file being read
/// (its creation is a warning and stays) are left out, so a command prints
/// its own lines (audit events) and warnings and errors only. `serve` keeps
/// `log.level` as it is.
pub const CLI_QUIET: &str = "sqlx=warn,portcullis::store::notify=warn,portcullis::gateway::keys=warn";

/// [`init`] for a command-line subcommand: `log.level` with [`CLI_QUIET`].
pub fn init_cli(cfg: &LogConfig) {
    install(cfg, Some(CLI_QUIET));
}

/// The formatter's filter: `log.level` (`info` when it cannot be read),
/// and, with `quiet` (directives such as [`CLI_QUIET`]), those targets at
/// most at the level `quiet` gives them: `quiet` only ever leaves lines out.
fn level_filter<S>(level: &str, quiet: Option<&str>) -> impl tracing_subscriber::layer::Filter<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::str::FromStr as _;
    use tracing_subscriber::filter::{FilterExt as _, LevelFilter, Targets};
    let level = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let quiet = quiet
        .and_then(|q| Targets::from_str(q).ok())
        .unwrap_or_default()
        .with_default(LevelFilter::TRACE);
    level.and(quiet)
}

fn install(cfg: &LogConfig, extra: Option<&str>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, fmt};

    let filter = level_filter(&cfg.level, extra);
    // Colour codes only for a person watching; a log file or collector gets
    // plain text (and fewer bytes per access line).
    let ansi = std::io::stderr().is_terminal();
    let mode = Mode {
        json: cfg.format == LogFormat::Json,
        ansi,
    };
    let base = fmt::layer().with_writer(LogSink::start(mode)).with_ansi(ansi);
    let formatter = match cfg.format {
        LogFormat::Json => base
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => base
            .with_target(true)
            .fmt_fields(SafeFields)
            .with_filter(filter)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(formatter)
        .with(crate::audit::AuditLayer)
        .try_init()
        .is_ok();
    if installed {
        let _ = ACCESS.set(AccessOutput::for_config(cfg, mode));
    }
}

/// Where access lines go (see [`access`]); set once, with the subscriber.
static ACCESS: OnceLock<AccessOutput> = OnceLock::new();

#[derive(Debug, Clone, Copy)]
enum AccessOutput {
    /// `log.level` leaves out `portcullis::access` at info.
    Off,
    /// Formatted here, straight into the sink, in the subscriber's format.
    Direct { json: bool },
    /// Through `tracing` (coloured text for a terminal, or a level string
    /// with span or field directives that only the subscriber can judge).
    Tracing,
}

impl AccessOutput {
    fn for_config(cfg: &LogConfig, mode: Mode) -> Self {
        use std::str::FromStr as _;
        if mode.ansi {
            return Self::Tracing;
        }
        // The subscriber's filter falls back to `info` for a level string it
        // cannot read; so does this.
        let level = if EnvFilter::try_new(&cfg.level).is_ok() {
            cfg.level.as_str()
        } else {
            "info"
        };
        // Span and field directives (`[span{field}]=level`): only the
        // subscriber knows which events they take in.
        if level.contains(['[', '{']) {
            return Self::Tracing;
        }
        match tracing_subscriber::filter::Targets::from_str(level) {
            Ok(t) if t.would_enable(ACCESS_TARGET, &tracing::Level::INFO) => Self::Direct { json: mode.json },
            Ok(_) => Self::Off,
            Err(_) => Self::Tracing,
        }
    }
}

/// One request's access line.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub decision: &'a str,
    pub user: &'a str,
    pub duration_ms: f64,
}

/// Logs one access line (target `portcullis::access`, level info).
///
/// The line is the one the subscriber would write for the same event, byte
/// for byte (a test holds the two together), but it is formatted here into a
/// reused buffer and handed to the sink's batch: going through `tracing`'s
/// formatter cost about an eighth of a proxied request's instructions. Lines
/// for a terminal (colours) and level strings only the subscriber can judge
/// still go through `tracing`.
pub fn access(line: &AccessLine<'_>) {
    match (ACCESS.get(), SINK.get()) {
        (Some(AccessOutput::Off), _) => {}
        (Some(AccessOutput::Direct { json }), Some(sink)) => {
            thread_local! {
                static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
            }
            BUF.with(|buf| {
                let Ok(mut buf) = buf.try_borrow_mut() else {
                    return;
                };
                buf.clear();
                format_access(&mut buf, line, *json, Stamp::now());
                sink.0.append(&clean_line(&buf, sink.0.mode));
                // A freak long line does not keep its buffer.
                buf.shrink_to(4096);
            });
        }
        _ => tracing::info!(
            target: "portcullis::access",
            request_id = %line.request_id,
            method = %line.method,
            host = %line.host,
            path = line.path,
            status = line.status,
            decision = line.decision,
            user = line.user,
            duration_ms = line.duration_ms,
        ),
    }
}

/// The subscriber's timestamp: RFC 3339, UTC, microseconds.
const TIMESTAMP: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// Writes `line` as the subscriber would: text (`SafeFields`' rules: a
/// `Display` value bare when it is a plain token, a `&str` always quoted) or
/// JSON (flattened fields, target last).
fn format_access(out: &mut Vec<u8>, line: &AccessLine<'_>, json: bool, now: Stamp) {
    use std::io::Write as _;
    if json {
        let string = |out: &mut Vec<u8>, s: &str| {
            let _ = serde_json::to_writer(&mut *out, s);
        };
        out.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"request_id\":");
        string(out, line.request_id);
        out.extend_from_slice(b",\"method\":");
        string(out, line.method);
        out.extend_from_slice(b",\"host\":");
        string(out, line.host);
        out.extend_from_slice(b",\"path\":");
        string(out, line.path);
        out.extend_from_slice(b",\"status\":");
        write_u64(out, u64::from(line.status));
        out.extend_from_slice(b",\"decision\":");
        string(out, line.decision);
        out.extend_from_slice(b",\"user\":");
        string(out, line.user);
        out.extend_from_slice(b",\"duration_ms\":");
        write_ms(out, line.duration_ms, true);
        out.extend_from_slice(b",\"target\":\"portcullis::access\"}\n");
    } else {
        let display = |out: &mut Vec<u8>, s: &str| {
            if is_token(s) || is_quoted(s) {
                out.extend_from_slice(s.as_bytes());
            } else {
                let _ = write!(out, "{s:?}");
            }
        };
        write_timestamp(out, now);
        out.extend_from_slice(b"  INFO portcullis::access: request_id=");
        display(out, line.request_id);
        out.extend_from_slice(b" method=");
        display(out, line.method);
        out.extend_from_slice(b" host=");
        display(out, line.host);
        out.extend_from_slice(b" path=");
        write_debug_str(out, line.path);
        out.extend_from_slice(b" status=");
        write_u64(out, u64::from(line.status));
        out.extend_from_slice(b" decision=");
        write_debug_str(out, line.decision);
        out.extend_from_slice(b" user=");
        write_debug_str(out, line.user);
        out.extend_from_slice(b" duration_ms=");
        write_ms(out, line.duration_ms, false);
        out.push(b'\n');
    }
}

/// A moment of the wall clock, as the access line writes it: whole seconds
/// since the Unix epoch (rounded down) and the microseconds past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp {
    secs: i64,
    micros: u32,
}

impl Stamp {
    /// Now, without the calendar arithmetic of `OffsetDateTime::now_utc`
    /// (done once a second, in [`write_timestamp`]). The system's clock, as
    /// the subscriber's own lines read it: a log line is stamped with when it
    /// was written, whatever clock the gateway's decisions run on.
    #[allow(clippy::disallowed_methods)]
    fn now() -> Self {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Self {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                micros: d.subsec_micros(),
            },
            // A clock set before 1970.
            Err(e) => {
                let nanos = -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX);
                Self {
                    secs: i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(i64::MIN),
                    micros: u32::try_from(nanos.rem_euclid(1_000_000_000) / 1000).unwrap_or(0),
                }
            }
        }
    }

    #[cfg(test)]
    fn of(t: time::OffsetDateTime) -> Self {
        Self {
            secs: t.unix_timestamp(),
            micros: t.microsecond(),
        }
    }
}

/// `TIMESTAMP`'s text, written field by field (the formatter's generic path
/// cost about 1 100 instructions per access line). The date and time up to
/// the second are made once a second per thread and copied until the second
/// changes (access lines come by the thousand a second). Years outside four
/// digits go through the formatter.
fn write_timestamp(out: &mut Vec<u8>, now: Stamp) {
    /// `YYYY-MM-DDTHH:MM:SS.` of one second.
    type Prefix = [u8; 20];
    thread_local! {
        static SECOND: std::cell::Cell<Option<(i64, Prefix)>> = const { std::cell::Cell::new(None) };
    }
    let prefix = SECOND.with(|cached| match cached.get() {
        Some((secs, prefix)) if secs == now.secs => Some(prefix),
        _ => {
            let prefix = second_prefix(now.secs)?;
            cached.set(Some((now.secs, prefix)));
            Some(prefix)
        }
    });
    let Some(prefix) = prefix else {
        let t = time::OffsetDateTime::from_unix_timestamp(now.secs)
            .map(|t| t + time::Duration::microseconds(now.micros.into()));
        if let Ok(t) = t {
            let _ = t.format_into(out, TIMESTAMP);
        }
        return;
    };
    out.extend_from_slice(&prefix);
    let mut digits = [b'0'; 7];
    digits[6] = b'Z';
    let mut rest = now.micros;
    for d in digits[..6].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
}

/// `YYYY-MM-DDTHH:MM:SS.` of the second `secs` past the epoch, for a
/// four-digit year.
fn second_prefix(secs: i64) -> Option<[u8; 20]> {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    let year = u16::try_from(t.year())
        .ok()
        .filter(|y| (1000..=9999).contains(y))?;
    let two = |n: u8| [b'0' + n / 10, b'0' + n % 10];
    let [y0, y1] = two((year / 100) as u8);
    let [y2, y3] = two((year % 100) as u8);
    let [mo0, mo1] = two(u8::from(t.month()));
    let [d0, d1] = two(t.day());
    let [h0, h1] = two(t.hour());
    let [mi0, mi1] = two(t.minute());
    let [s0, s1] = two(t.second());
    Some([
        y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T', h0, h1, b':', mi0, mi1, b':', s0, s1, b'.',
    ])
}

/// A number in decimal.
fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A string as `{:?}` writes it: printable ASCII without `"` or `\` needs no
/// escape, so it is quoted as it is; anything else goes through `Debug`.
fn write_debug_str(out: &mut Vec<u8>, s: &str) {
    // Not short-circuiting, so the check runs on whole vectors.
    let plain = s.bytes().fold(true, |ok, b| {
        ok & ((0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\'))
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        use std::io::Write as _;
        let _ = write!(out, "{s:?}");
    }
}

/// Milliseconds as `{:?}` (or JSON, with `json`) write an `f64`: the shortest decimal that
/// reads back as the same number. For whole microseconds (what the gateway
/// logs) below 10^12 that is the exact decimal with its trailing zeros cut
/// (no shorter decimal is that close), written here without the float
/// formatter; any other value goes through it.
fn write_ms(out: &mut Vec<u8>, ms: f64, json: bool) {
    let micros = (ms * 1000.0).round();
    if ms.is_sign_positive() && (0.0..1e12).contains(&micros) && micros / 1000.0 == ms {
        let micros = micros as u64;
        write_u64(out, micros / 1000);
        out.push(b'.');
        let frac = micros % 1000;
        if frac == 0 {
            out.push(b'0');
        } else {
            let digits = [
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ];
            let len = 3 - digits.iter().rev().take_while(|&&d| d == b'0').count();
            out.extend_from_slice(&digits[..len]);
        }
    } else if json {
        let _ = serde_json::to_writer(&mut *out, &ms);
    } else {
        use std::io::Write as _;
        let _ = write!(out, "{ms:?}");
    }
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

/// What the sink must know about the lines it is given.
#[derive(Debug, Clone, Copy, Default)]
struct Mode {
    /// JSON lines: escapes are written as `\uXXXX` (valid inside a JSON
    /// string, the only place a control character can be in such a line).
    json: bool,
    /// The formatter colours text with ESC sequences: ESC passes (values
    /// never carry one: [`SafeFields`] escaped it).
    ansi: bool,
}

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
    /// How lines are escaped.
    mode: Mode,
}

static SINK: OnceLock<LogSink> = OnceLock::new();

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogSink {
    /// The process-wide sink on stderr, starting its thread on first use.
    fn start(mode: Mode) -> Self {
        SINK.get_or_init(|| Self::new(Box::new(std::io::stderr()), mode))
            .clone()
    }

    /// A sink writing to `out`, with its batching thread (which lives as long
    /// as the process; there is one sink per process outside tests).
    fn new(out: Output, mode: Mode) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            wake: Condvar::new(),
            out: Mutex::new(out),
            batching: AtomicBool::new(true),
            mode,
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
        let line = clean_line(buf, self.sink.mode);
        if self.batch {
            self.sink.append(&line);
        } else {
            self.sink.write_through(&line);
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

/// True for a character that must never reach a log line as it is: control
/// characters (C0, DEL, C1) and the Unicode line and paragraph separators.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `line` (one formatted event: the formatter hands over the whole line in
/// one write) with every unsafe character but the final newline escaped.
/// Lines without any (nearly all) are passed on without a copy.
fn clean_line(line: &[u8], mode: Mode) -> Cow<'_, [u8]> {
    let (body, newline) = match line.strip_suffix(b"\n") {
        Some(body) => (body, true),
        None => (line, false),
    };
    // Only control bytes and non-ASCII text can hold an unsafe character.
    // Not short-circuiting, so the check runs on whole vectors.
    if body.iter().fold(true, |ok, &b| ok & (0x20..0x7f).contains(&b)) {
        return Cow::Borrowed(line);
    }
    let text = String::from_utf8_lossy(body);
    let keep = |c: char| !unsafe_char(c) || (mode.ansi && !mode.json && c == '\u{1b}');
    if text.chars().all(keep) && matches!(text, Cow::Borrowed(_)) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if keep(c) {
            out.push(c);
        } else if mode.json {
            // Every unsafe character is in the Basic Multilingual Plane.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    if newline {
        out.push('\n');
    }
    Cow::Owned(out.into_bytes())
}

/// The text format's field formatter: `name=value` pairs in which a value
/// can neither end the line nor pass for another field (see the module doc).
/// Plain tokens (printable ASCII without spaces, quotes, backslashes or `=`)
/// are written bare, as before; anything else is quoted and escaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct SafeFields;

impl<'w> FormatFields<'w> for SafeFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = SafeVisitor {
            writer,
            first: true,
            scratch: String::new(),
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct SafeVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    /// Reused for each value formatted through `Debug`.
    scratch: String,
    result: fmt::Result,
}

impl SafeVisitor<'_> {
    fn separator(&mut self) -> fmt::Result {
        if self.first {
            self.first = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }

    fn pair(&mut self, field: &Field, value: &str, always_quote: bool) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = self.separator().and_then(|()| {
            if name == "message" {
                // The event's own text, written without a name (as tracing's
                // default does); only its control characters are escaped.
                return write_escaped_controls(&mut self.writer, value);
            }
            write!(self.writer, "{name}=")?;
            if !always_quote && (is_token(value) || is_quoted(value)) {
                self.writer.write_str(value)
            } else {
                write!(self.writer, "{value:?}")
            }
        });
    }
}

impl Visit for SafeVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Strings were always quoted (`reason="user locked"`): keep that.
        self.pair(field, value, true);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        if write!(scratch, "{value:?}").is_err() {
            self.result = Err(fmt::Error);
        }
        self.pair(field, &scratch, false);
        self.scratch = scratch;
    }
}

/// A plain token, safe without quotes.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !matches!(b, b'"' | b'\\' | b'='))
}

/// Already one well-formed quoted string (what `Debug` gives for a string):
/// no unescaped quote inside, no unsafe character.
fn is_quoted(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) if !unsafe_char(next) => {}
                _ => return false,
            },
            '"' => return false,
            c if unsafe_char(c) => return false,
            _ => {}
        }
    }
    true
}

fn write_escaped_controls(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    if !s.chars().any(unsafe_char) {
        return w.write_str(s);
    }
    for c in s.chars() {
        if unsafe_char(c) {
            write!(w, "{}", c.escape_debug())?;
        } else {
            w.write_char(c)?;
        }
    }
    Ok(())
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
        let sink = LogSink::new(Box::new(buf.clone()), Mode::default());
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
        let sink = LogSink::new(Box::new(buf.clone()), Mode::default());
        let line = vec![b'x'; MAX_PENDING];
        sink.0.append(b"first\n");
        sink.0.append(&line);
        // Over the bound: written at once, after what was queued.
        let text = buf.text();
        assert!(text.starts_with("first\nxxx"), "{}", &text[..10.min(text.len())]);
        assert_eq!(text.len(), 6 + MAX_PENDING);
    }

    /// Logs `f`'s events in the given format through a sink on a buffer.
    fn capture(json: bool, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let sink = LogSink::new(Box::new(buf.clone()), Mode { json, ansi: false });
        let builder = tracing_subscriber::fmt()
            .with_writer(sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO);
        if json {
            let sub = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish();
            tracing::subscriber::with_default(sub, f);
        } else {
            let sub = builder.with_target(true).fmt_fields(SafeFields).finish();
            tracing::subscriber::with_default(sub, f);
        }
        sink.0.write_through(&[]);
        buf.text()
    }

    const EVIL: &str = "x\n2026-01-01T00:00:00Z  INFO portcullis::audit: event=\"user.unlocked\" user=alice actor=\"admin\"\r\u{1b}[2J\u{85}\u{2028}\u{7f}";

    fn emit() {
        let evil = EVIL.to_owned();
        crate::audit!("signin.passwordless.decoy", login = %evil);
        crate::audit!("push.answer.refused", transaction = ?evil, reason = "late");
        crate::audit!("as.str", user = evil.as_str());
        tracing::warn!("message with {evil}");
        tracing::info!(target: "portcullis::access", path = %evil, status = 404u16);
    }

    /// The commands' filter: `log.level` for our lines, libraries and the
    /// revocation listener from WARN; `serve`'s keeps `log.level`.
    #[test]
    fn the_cli_filter_leaves_out_library_info_lines() {
        fn run(
            filter: impl tracing_subscriber::layer::Filter<tracing_subscriber::Registry> + Send + Sync + 'static,
        ) -> String {
            use tracing_subscriber::Layer as _;
            use tracing_subscriber::layer::SubscriberExt as _;
            let buf = Buf::default();
            let sink = LogSink::new(Box::new(buf.clone()), Mode::default());
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(sink.clone())
                .with_ansi(false)
                .with_filter(filter);
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
                tracing::info!(target: "sqlx::postgres::notice", "relation already exists, skipping");
                tracing::info!(target: "portcullis::store::notify", "revocation notifications: listening");
                tracing::warn!(target: "sqlx::pool", "pool warning");
                crate::audit!("admin.user.created", actor = %"cli");
            });
            sink.0.write_through(&[]);
            buf.text()
        }
        for level in ["info", "debug", "not a [level"] {
            let cli = run(level_filter(level, Some(CLI_QUIET)));
            assert!(
                !cli.contains("skipping") && !cli.contains("listening"),
                "{level}: {cli}"
            );
            assert!(
                cli.contains("pool warning") && cli.contains("admin.user.created"),
                "{level}: {cli}"
            );
        }
        let serve = run(level_filter("info", None));
        assert!(
            serve.contains("skipping") && serve.contains("listening"),
            "{serve}"
        );
        // A stricter level stays stricter.
        let quiet = run(level_filter("error", Some(CLI_QUIET)));
        assert!(
            !quiet.contains("pool warning") && !quiet.contains("admin.user"),
            "{quiet}"
        );
    }

    #[test]
    fn text_lines_cannot_be_forged() {
        let text = capture(false, emit);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        for l in &lines {
            assert!(!l.chars().any(unsafe_char), "{l:?}");
            assert!(l.contains("portcullis"), "{l}");
        }
        // The value is one quoted field: its quotes are escaped, so
        // `user=alice` cannot pass for a field of its own.
        assert!(
            lines[0].ends_with(r#"login="x\n2026-01-01T00:00:00Z  INFO portcullis::audit: event=\"user.unlocked\" user=alice actor=\"admin\"\r\u{1b}[2J\u{85}\u{2028}\u{7f}""#),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains(r#"transaction="x\n2026"#), "{}", lines[1]);
        assert!(lines[2].contains(r#"user="x\n2026"#), "{}", lines[2]);
        assert!(lines[3].contains(r#"message with x\n2026"#), "{}", lines[3]);
        // Plain tokens stay bare, as before.
        let plain = capture(false, || {
            let client: std::net::IpAddr = [127, 0, 0, 1].into();
            crate::audit!("factor.verified", user = %"alice", client = %client, reason = "invalid");
        });
        assert!(
            plain.contains(r#"event="factor.verified" user=alice client=127.0.0.1 reason="invalid""#),
            "{plain}"
        );
    }

    #[test]
    fn json_lines_cannot_be_forged() {
        let text = capture(true, emit);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        for l in &lines {
            assert!(!l.chars().any(unsafe_char), "{l:?}");
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let value = ["login", "transaction", "user", "path"]
                .iter()
                .find_map(|k| v[k].as_str().map(str::to_owned))
                .or_else(|| {
                    v["message"]
                        .as_str()
                        .map(|m| m.trim_start_matches("message with ").to_owned())
                })
                .unwrap();
            // Nothing lost: the value reads back whole.
            assert!(value == EVIL || value == format!("{EVIL:?}"), "{l}");
        }
    }

    /// The access line written here is the subscriber's, byte for byte, in
    /// both formats, also for hostile values.
    #[test]
    fn access_lines_are_the_subscribers_own() {
        let now = time::OffsetDateTime::now_utc();
        let samples = [
            (
                "AbC123",
                "GET",
                "app.example",
                "/small",
                200,
                "bypass",
                "-",
                0.298,
            ),
            (
                "AbC123",
                "PROPFIND",
                "[::1]:8443",
                "/a b/\"q\"",
                302,
                "challenge",
                "zoë",
                1.0,
            ),
            (
                "x",
                "GET",
                "h\"ost=1 user=root",
                EVIL,
                400,
                "invalid",
                EVIL,
                12345.678,
            ),
            (
                "x",
                "GET",
                "\"quoted\"",
                "/\u{2028}",
                503,
                "unavailable",
                "a\"b",
                0.001,
            ),
        ];
        for json in [false, true] {
            for (request_id, method, host, path, status, decision, user, duration_ms) in samples {
                let line = AccessLine {
                    request_id,
                    method,
                    host,
                    path,
                    status,
                    decision,
                    user,
                    duration_ms,
                };
                let theirs = capture(json, || {
                    tracing::info!(
                        target: "portcullis::access",
                        request_id = %request_id,
                        method = %method,
                        host = %host,
                        path,
                        status,
                        decision,
                        user,
                        duration_ms,
                    );
                });
                let mut ours = Vec::new();
                format_access(&mut ours, &line, json, Stamp::of(now));
                let mode = Mode { json, ansi: false };
                let ours = String::from_utf8(clean_line(&ours, mode).into_owned()).unwrap();
                // Everything after the timestamp is the same; the timestamps
                // have the same shape.
                let split = |l: &str| {
                    let at = if json {
                        l.find("\",\"level").unwrap()
                    } else {
                        l.find(' ').unwrap()
                    };
                    let (t, rest) = l.split_at(at);
                    (t.len(), rest.to_owned())
                };
                assert_eq!(
                    split(&ours),
                    split(&theirs),
                    "json: {json}\nours:   {ours}theirs: {theirs}"
                );
                assert_eq!(ours.lines().count(), 1, "{ours}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn milliseconds_are_written_as_the_float_formatters_write_them(micros in 0u64..2_000_000_000_000, odd in proptest::num::f64::ANY) {
            for ms in [micros as f64 / 1000.0, (micros % 100_000) as f64 / 1000.0, odd] {
                let written = |json| {
                    let mut out = Vec::new();
                    write_ms(&mut out, ms, json);
                    String::from_utf8(out).unwrap()
                };
                proptest::prop_assert_eq!(written(false), format!("{ms:?}"));
                proptest::prop_assert_eq!(written(true), serde_json::to_string(&ms).unwrap());
            }
        }

        #[test]
        fn strings_are_quoted_as_debug_quotes_them(s in "\\PC*", ascii in "[ -~]{0,40}") {
            for s in [s.as_str(), ascii.as_str()] {
                let mut ours = Vec::new();
                write_debug_str(&mut ours, s);
                proptest::prop_assert_eq!(String::from_utf8(ours).unwrap(), format!("{s:?}"));
            }
        }

        #[test]
        fn timestamps_are_the_formatters_own(secs in -377_000_000_000i64..253_000_000_000, nanos in 0u32..1_000_000_000) {
            let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap() + time::Duration::nanoseconds(nanos.into());
            let mut ours = Vec::new();
            write_timestamp(&mut ours, Stamp::of(t));
            proptest::prop_assert_eq!(String::from_utf8(ours).unwrap(), t.format(TIMESTAMP).unwrap());
        }
    }

    /// The date and time kept for the current second are used for that
    /// second only: a run of stamps that stays in a second, moves on, goes
    /// back (a clock set back) or leaves four-digit years is written as the
    /// formatter writes each, and `Stamp::now` is the clock's reading.
    #[test]
    fn timestamps_kept_for_a_second_serve_that_second_only() {
        let at = |secs: i64, micros: u32| {
            time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
                + time::Duration::microseconds(micros.into())
        };
        let run = [
            at(1_796_000_000, 1),
            at(1_796_000_000, 999_999),
            at(1_796_000_001, 0),
            at(1_796_000_000, 500_000),
            at(1_796_086_400, 42),
            at(-62_135_596_800, 7),
            at(253_402_300_799, 3),
            at(-30_610_224_001, 5),
            at(-1, 999_999),
            at(0, 0),
            at(0, 1),
        ];
        for t in run {
            let mut ours = Vec::new();
            write_timestamp(&mut ours, Stamp::of(t));
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                t.format(TIMESTAMP).unwrap(),
                "{t}"
            );
        }
        let before = time::OffsetDateTime::now_utc();
        let now = Stamp::now();
        let after = time::OffsetDateTime::now_utc();
        assert!(Stamp::of(before) <= now && now <= Stamp::of(after), "{now:?}");
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 200, 404, 65535, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    #[test]
    fn access_output_follows_the_level_string() {
        let output = |level: &str, json: bool, ansi: bool| {
            let cfg = LogConfig {
                format: if json { LogFormat::Json } else { LogFormat::Text },
                level: level.to_owned(),
            };
            format!("{:?}", AccessOutput::for_config(&cfg, Mode { json, ansi }))
        };
        assert_eq!(output("info", false, false), "Direct { json: false }");
        assert_eq!(
            output("warn,portcullis::access=info", true, false),
            "Direct { json: true }"
        );
        assert_eq!(output("debug", false, false), "Direct { json: false }");
        assert_eq!(output("warn", false, false), "Off");
        assert_eq!(output("info,portcullis::access=off", false, false), "Off");
        assert_eq!(output("info,portcullis=warn", false, false), "Off");
        // Not a level string: the subscriber falls back to info, and so does this.
        assert_eq!(output("[[[", false, false), "Direct { json: false }");
        // Span directives, and a terminal's colours: through tracing.
        assert_eq!(output("info,[conn]=debug", false, false), "Tracing");
        assert_eq!(output("info", false, true), "Tracing");
    }

    #[test]
    fn clean_lines_pass_without_a_copy() {
        let line = b"2026 INFO portcullis::access: user=\"Zo\xc3\xab\"\n";
        assert!(matches!(clean_line(line, Mode::default()), Cow::Borrowed(_)));
        let ansi = Mode {
            json: false,
            ansi: true,
        };
        assert!(matches!(clean_line(b"\x1b[2mx\x1b[0m\n", ansi), Cow::Borrowed(_)));
        assert_eq!(&*clean_line(b"a\nb\n", Mode::default()), b"a\\u{a}b\n");
        assert_eq!(
            &*clean_line(
                b"a\x1bb",
                Mode {
                    json: true,
                    ansi: true
                }
            ),
            b"a\\u001bb"
        );
    }
}
