//! Per-request facts the gateway establishes before policy and the proxy run.
//!
//! The gateway inserts one [`RequestContext`] into the request extensions as soon
//! as it has decided who the peer is, which host was asked for and which upstream
//! serves it. Everything downstream (policy, enforcement, the proxy) reads it from
//! there instead of re-deriving it from headers a client could forge.

/// Facts about a request established by the gateway before policy runs.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The TCP peer.
    pub peer_addr: std::net::SocketAddr,
    /// The client address after `trusted_proxies` (the gateway computes it).
    pub client_addr: std::net::IpAddr,
    /// `"http"` or `"https"`, as the client sees it.
    pub scheme: &'static str,
    /// The Host the client asked for, as sent (may include a port).
    pub authority: String,
    /// Lower-cased host without port.
    pub host: String,
    /// Index into `Config.upstreams` chosen by Host (`None` = no upstream).
    pub upstream: Option<usize>,
    /// The request id (also in logs and the response).
    pub request_id: String,
}
