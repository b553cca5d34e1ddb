//! Prometheus metrics: one process-wide recorder, rendered on the admin
//! listener's `/metrics`.
//!
//! Metric names (all prefixed `portcullis_`): `requests_total{decision,status}`,
//! `upstream_duration_seconds{upstream}`, `upstream_errors_total{upstream,kind}`,
//! `logins_total{result}`, `lockouts_total{kind}`, `store_duration_seconds{op}`,
//! `factor_verifications_total{type,result}`, `factor_events_total{event,type}`,
//! `connections_refused_total{listener,limit}`,
//! `rule_decisions_total{rule,path,decision}` (kept by the policy: see
//! [`crate::policy::counters`]).

use foldhash::HashMap;
use std::cell::RefCell;
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::Duration;

use metrics::Counter;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their buckets. Until then
/// every sample is kept in memory (eight bytes per proxied request).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Bucket bounds, in seconds, of every latency histogram: from half a
/// millisecond (a proxied request on a LAN) to 30 seconds (an upstream
/// timeout). Histograms, unlike summaries, can be summed across replicas.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// Label values of the counters whose labels are a closed set: they are
/// registered at zero when the recorder is installed, so a dashboard's
/// `rate()` sees a series before the first event and alerts on `increase()`
/// fire on the first one.
const LOGIN_RESULTS: [&str; 6] = ["success", "failure", "locked", "busy", "error", "rate_limited"];
const LOCKOUT_KINDS: [&str; 2] = ["user", "client"];
/// Upstream errors counted without an upstream (`upstream=""`): a request
/// that reached the proxy without its context or an upstream.
const UNROUTED_UPSTREAM_ERRORS: [&str; 2] = ["no_context", "no_upstream"];
const REFUSED: [(&str, &str); 7] = [
    ("main", "connections"),
    ("main", "tls_handshakes"),
    ("main", "connections_per_ip"),
    ("main", "tls_handshakes_per_ip"),
    ("admin", "connections"),
    ("admin", "connections_per_ip"),
    ("admin", "tls_handshakes"),
];

/// Installs the global recorder (once per process; later calls reuse it).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = match PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS) {
                Ok(builder) => builder.build_recorder(),
                // Only an empty bucket list is refused; ours is not.
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            let installed = metrics::set_global_recorder(recorder).ok().map(|_| handle);
            if let Some(handle) = installed.clone() {
                // `build_recorder` leaves upkeep to us: without it histogram
                // samples pile up until someone scrapes /metrics. A plain thread,
                // so it runs whatever runtimes come and go.
                let spawned = std::thread::Builder::new()
                    .name("metrics-upkeep".into())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(UPKEEP_EVERY);
                            handle.run_upkeep();
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
                }
            }
            if installed.is_some() {
                register_zeroes();
            }
            installed
        })
        .as_ref()
}

/// `portcullis_requests_total`'s usual (decision, status) pairs, registered
/// at zero so the series exists before the first request (its statuses are
/// not a closed set: others appear when first counted).
const USUAL_REQUESTS: [(&str, &str); 6] = [
    ("allow", "200"),
    ("bypass", "200"),
    ("challenge", "302"),
    ("challenge", "401"),
    ("deny", "403"),
    ("portal", "200"),
];

/// Registers the closed-set counters at zero (see [`LOGIN_RESULTS`]).
fn register_zeroes() {
    for result in LOGIN_RESULTS {
        metrics::counter!("portcullis_logins_total", "result" => result).increment(0);
    }
    for kind in LOCKOUT_KINDS {
        metrics::counter!("portcullis_lockouts_total", "kind" => kind).increment(0);
    }
    for (listener, limit) in REFUSED {
        metrics::counter!("portcullis_connections_refused_total", "listener" => listener, "limit" => limit)
            .increment(0);
    }
    metrics::counter!("portcullis_password_rescues_total").increment(0);
    for (decision, status) in USUAL_REQUESTS {
        metrics::counter!("portcullis_requests_total", "decision" => decision, "status" => status)
            .increment(0);
    }
    for result in ["applied", "ignored"] {
        metrics::counter!("portcullis_store_notifications_total", "result" => result).increment(0);
    }
    for kind in UNROUTED_UPSTREAM_ERRORS {
        metrics::counter!("portcullis_upstream_errors_total", "upstream" => "", "kind" => kind).increment(0);
    }
}

/// The `kind` of `portcullis_upstream_errors_total{upstream,kind}` for a
/// configured upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Request,
    Timeout,
    Protocol,
    Upgrade,
    /// No connection made: the process holds as many upstream connections
    /// as `server.max_connections` already.
    Busy,
}

impl UpstreamError {
    /// Every kind, in the order of [`UpstreamErrors`]' handles.
    pub const ALL: [UpstreamError; 6] = [
        UpstreamError::Connect,
        UpstreamError::Request,
        UpstreamError::Timeout,
        UpstreamError::Protocol,
        UpstreamError::Upgrade,
        UpstreamError::Busy,
    ];

    /// The label value (and log field).
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Request => "request",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol => "protocol",
            UpstreamError::Upgrade => "upgrade",
            UpstreamError::Busy => "busy",
        }
    }
}

/// One upstream's `portcullis_upstream_errors_total` handles, registered at
/// zero when the proxy is built: counting an error builds no labels.
#[derive(Clone)]
pub struct UpstreamErrors {
    /// By [`UpstreamError`], in the order of [`UpstreamError::ALL`].
    counters: [Counter; 6],
}

impl UpstreamErrors {
    /// Registers (at zero) the series of the upstream named `upstream`.
    /// The recorder must be installed first.
    pub fn new(upstream: &metrics::SharedString) -> Self {
        let counters = UpstreamError::ALL.map(|kind| {
            let c = metrics::counter!("portcullis_upstream_errors_total", "upstream" => upstream.clone(), "kind" => kind.as_str());
            c.increment(0);
            c
        });
        Self { counters }
    }

    /// Counts one error of `kind`.
    pub fn count(&self, kind: UpstreamError) {
        self.counters[kind as usize].increment(1);
    }
}

/// The handles of one factor type's counters, by label value.
#[derive(Default)]
struct FactorCounters {
    /// `portcullis_factor_verifications_total{type,result}` by result.
    verifications: HashMap<&'static str, Counter>,
    /// `portcullis_factor_events_total{event,type}` by event.
    events: HashMap<&'static str, Counter>,
}

/// The registered factor types' handles, by Okta factor type. Filled at
/// start-up (and by a reload enabling another type) for the enabled types.
static FACTORS: LazyLock<RwLock<HashMap<&'static str, FactorCounters>>> =
    LazyLock::new(|| RwLock::new(HashMap::default()));

/// Registers at zero a factor type's verification results and lifecycle
/// events: every label value its code records, so each series exists before
/// its first event. Called for each enabled type when a gateway is built.
pub fn register_factor_type(
    factor_type: &'static str,
    results: &'static [&'static str],
    events: &'static [&'static str],
) {
    // Handles taken before the recorder is installed would count nothing.
    install();
    let mut all = FACTORS.write().unwrap_or_else(|p| p.into_inner());
    let counters = all.entry(factor_type).or_default();
    for &result in results {
        counters.verifications.entry(result).or_insert_with(|| {
            let c = metrics::counter!("portcullis_factor_verifications_total", "type" => factor_type, "result" => result);
            c.increment(0);
            c
        });
    }
    for &event in events {
        counters.events.entry(event).or_insert_with(|| {
            let c =
                metrics::counter!("portcullis_factor_events_total", "event" => event, "type" => factor_type);
            c.increment(0);
            c
        });
    }
}

/// Counts through a registered handle; false when the type (or the label
/// value) was not registered.
fn count_factor(factor_type: &str, pick: impl FnOnce(&FactorCounters) -> Option<&Counter>) -> bool {
    let all = FACTORS.read().unwrap_or_else(|p| p.into_inner());
    match all.get(factor_type) {
        Some(counters) => match pick(counters) {
            Some(c) => {
                c.increment(1);
                true
            }
            None => {
                // A registered type recorded a value its list does not name:
                // that series would be missing until its first event.
                debug_assert!(false, "a label value of {factor_type} is not registered");
                false
            }
        },
        None => false,
    }
}

/// The metrics in Prometheus text format (empty if no recorder is installed).
pub fn render() -> String {
    let mut text = install().map(|h| h.render()).unwrap_or_default();
    text.push_str(&crate::policy::counters::render());
    text
}

thread_local! {
    /// Counter handles by (decision, status), per thread: building a metric key
    /// (label vector, status string, registry lookup) costs more than the
    /// increment itself, and the set of label pairs is small.
    static REQUESTS: RefCell<HashMap<(&'static str, u16), Counter>> = RefCell::new(HashMap::default());
}

/// Counts one request by decision and status.
pub fn request(decision: &'static str, status: u16) {
    REQUESTS.with(|cache| {
        if let Ok(mut cache) = cache.try_borrow_mut() {
            cache
                .entry((decision, status))
                .or_insert_with(|| {
                    metrics::counter!("portcullis_requests_total", "decision" => decision, "status" => status.to_string())
                })
                .increment(1);
        }
    });
}

/// Counts one sign-in attempt by result (`success`, `failure`, `locked`, `busy`, `error`).
pub fn login(result: &'static str) {
    metrics::counter!("portcullis_logins_total", "result" => result).increment(1);
}

/// Counts a password verification run by the pool's rescue thread (the
/// idle-class verifications made no progress for a while: see
/// `crate::passwords::RESCUE_AFTER`).
pub fn password_rescue() {
    metrics::counter!("portcullis_password_rescues_total").increment(1);
}

/// Counts a lockout by kind (`user`, `client`).
pub fn lockout(kind: &'static str) {
    metrics::counter!("portcullis_lockouts_total", "kind" => kind).increment(1);
}

/// Counts a second-factor verification by factor type and result (one of
/// the results the type registered: see [`register_factor_type`]).
pub fn factor_verification(factor_type: &str, result: &'static str) {
    if !count_factor(factor_type, |c| c.verifications.get(result)) {
        metrics::counter!("portcullis_factor_verifications_total", "type" => factor_type.to_owned(), "result" => result)
            .increment(1);
    }
}

/// Counts a factor lifecycle event (`enrolled`, `activated`, `removed`,
/// `challenged`).
pub fn factor_event(event: &'static str, factor_type: &str) {
    if !count_factor(factor_type, |c| c.events.get(event)) {
        metrics::counter!("portcullis_factor_events_total", "event" => event, "type" => factor_type.to_owned())
            .increment(1);
    }
}

/// Counts a connection turned away by a listener's limit (`connections`,
/// `tls_handshakes`).
pub fn connection_refused(listener: &'static str, limit: &'static str) {
    metrics::counter!("portcullis_connections_refused_total", "listener" => listener, "limit" => limit)
        .increment(1);
}
