//! The upstream side: forwards allowed requests to the application and streams
//! the answer back.
//!
//! [`Proxy`] is the innermost service of the gateway. It trusts nothing the
//! client said about identity or origin, only what the gateway put in the request
//! extensions: the [`RequestContext`] (client address, scheme, authority, chosen
//! upstream) and, on allowed protected routes, the [`Principal`].
//!
//! Invariants, in the order they are applied to a request:
//! - no [`RequestContext`] or no upstream chosen: 502, never a guess;
//! - hop-by-hop headers and those named in `Connection` are removed (RFC 9110
//!   section 7.6.1), and `HTTP2-Settings`, except that a real WebSocket upgrade
//!   request keeps `Connection: upgrade` and `Upgrade: websocket`; no other
//!   protocol (`h2c`, `TLS/1.0`) is ever offered upstream;
//! - every inbound copy of the four identity headers, of `Forwarded`, `X-Real-IP`
//!   and `X-Forwarded-*` is removed in any case and with `_` for `-` (upstreams,
//!   CGI-style ones especially, fold those spellings into one name), then the
//!   gateway sets its own forwarding headers and, only with a [`Principal`], the
//!   identity headers. Without a principal (bypass routes) identity is only
//!   stripped, so no client-supplied identity ever reaches the upstream;
//! - the gateway's cookies are removed from `Cookie` (the session never leaves the
//!   gateway) and upstream `Set-Cookie` for those names is dropped (the upstream
//!   cannot set or clear them);
//! - bodies stream both ways, never buffered; the upstream request is HTTP/1.1;
//!   `Expect: 100-continue` is answered by hyper on the client side, so it is not
//!   forwarded; `CONNECT` is refused (405): there is nothing to tunnel to;
//! - an upgrade is spliced only after the upstream answered 101 (see [`upgrade`]);
//! - failures answer a small generic body (connect 502, timeout 504); the cause
//!   goes to the log without header values, cookies or query strings.

pub mod client;
pub mod headers;
pub mod pool;
mod upgrade;

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;

use crate::config::{IdentityHeaders, UpstreamConfig};
use crate::context::RequestContext;
use crate::identity::Principal;
use crate::metrics::UpstreamError;
pub use pool::ConnectionBudget;

/// What the proxy needs from the configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The upstreams, in config order (`RequestContext::upstream` indexes them).
    pub upstreams: Vec<UpstreamConfig>,
    /// Names of the identity headers to strip and set.
    pub identity: IdentityHeaders,
    /// Cookie names owned by the gateway (session cookie, "portcullis_csrf", ...).
    pub gateway_cookies: Vec<String>,
    /// Upstream connections the whole process may hold open (shared by the
    /// proxies of every serving thread: a clone shares the count).
    pub upstream_connections: ConnectionBudget,
    /// An upgraded (WebSocket) connection with no byte either way for this
    /// long is closed (`server.idle_timeout`).
    pub tunnel_idle_timeout: Duration,
}

/// Why the proxy could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// An upstream URL the proxy cannot use.
    #[error("upstream {upstream:?}: url: {reason}")]
    Url { upstream: String, reason: &'static str },
    /// The TLS client setup (provider, roots, `ca` certificates) failed.
    #[error("upstream {upstream:?}: tls: {source}")]
    Tls { upstream: String, source: rustls::Error },
}

/// Forwards requests to the upstream chosen by the gateway (cheap to clone).
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.inner.upstreams.iter().map(|u| &*u.name).collect();
        f.debug_struct("Proxy")
            .field("upstreams", &names)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// What the proxy was built from, to build it again with fresh pools.
    settings: ProxySettings,
    upstreams: Vec<Upstream>,
    /// The upstream with no `hosts`, if any.
    default: Option<usize>,
    identity: IdentityHeaders,
    gateway_cookies: Vec<String>,
}

/// One upstream with everything per-request work needs precomputed.
struct Upstream {
    /// Metrics label and log field; shared so cloning per request is a refcount.
    name: metrics::SharedString,
    hosts: Vec<String>,
    /// The URL's path without its trailing `/` ("" for none).
    prefix: String,
    /// `Host` when `preserve_host` is false.
    host: HeaderValue,
    preserve_host: bool,
    timeout: Duration,
    /// This thread's kept-alive connections to the upstream.
    pool: pool::Pool,
    /// `portcullis_upstream_duration_seconds{upstream}`, resolved once: looking
    /// a metric up by name and labels on every request costs allocations.
    duration: metrics::Histogram,
    /// `portcullis_upstream_errors_total{upstream,kind}`, registered at zero.
    errors: crate::metrics::UpstreamErrors,
}

impl Upstream {
    fn new(config: &UpstreamConfig, budget: &ConnectionBudget) -> Result<Self, ProxyError> {
        let url = &config.url;
        let fail = |reason| ProxyError::Url {
            upstream: config.name.clone(),
            reason,
        };
        let scheme = match url.scheme() {
            "http" => Scheme::HTTP,
            "https" => Scheme::HTTPS,
            _ => return Err(fail("scheme must be http or https")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(fail("credentials in the URL are not supported"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(fail("a query or fragment is not supported"));
        }
        let host = url.host_str().ok_or_else(|| fail("a host is required"))?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let authority_header = HeaderValue::from_str(&authority).map_err(|_| fail("invalid host"))?;
        let authority = Authority::try_from(authority).map_err(|_| fail("invalid host"))?;
        let target = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|_| fail("invalid host"))?;
        let name = metrics::SharedString::from(Arc::<str>::from(config.name.as_str()));
        Ok(Self {
            duration: metrics::histogram!("portcullis_upstream_duration_seconds", "upstream" => name.clone()),
            errors: crate::metrics::UpstreamErrors::new(&name),
            name,
            hosts: config.hosts.clone(),
            prefix: url.path().trim_end_matches('/').to_owned(),
            host: authority_header,
            preserve_host: config.preserve_host,
            timeout: config.timeout,
            pool: client::build(config, target, budget.clone())?,
        })
    }

    /// The request target sent upstream, in origin form (`/path?query`, as
    /// HTTP/1.1 to an origin server wants it): the base path as a prefix, then
    /// the request's (already normalized) path and query.
    fn uri(&self, request: &Uri) -> Option<Uri> {
        let path_and_query = match request.path_and_query() {
            // `*` (OPTIONS *) addresses the server, not a path under the prefix.
            Some(pq) if pq.as_str() == "*" => pq.clone(),
            // The common case shares the request's bytes: no allocation.
            Some(pq) if self.prefix.is_empty() && pq.as_str().starts_with('/') => pq.clone(),
            // Under the prefix; also an absolute-form target with an empty
            // path (`http://host?x=1`), whose text starts at the `?` while its
            // path, what the policy decided on, is `/`.
            Some(pq) => {
                let (path, query) = (pq.path(), pq.query());
                let mut joined = String::with_capacity(self.prefix.len() + pq.as_str().len() + 1);
                joined.push_str(&self.prefix);
                joined.push_str(path);
                if let Some(query) = query {
                    joined.push('?');
                    joined.push_str(query);
                }
                PathAndQuery::from_maybe_shared(Bytes::from(joined)).ok()?
            }
            None if self.prefix.is_empty() => PathAndQuery::from_static("/"),
            None => PathAndQuery::from_maybe_shared(Bytes::from(format!("{}/", self.prefix))).ok()?,
        };
        Some(Uri::from(path_and_query))
    }
}

impl Inner {
    /// Applies the request rules (module doc) to the headers going upstream.
    fn rewrite_request_headers(
        &self,
        h: &mut http::HeaderMap,
        ctx: &RequestContext,
        principal: Option<&Principal>,
        upstream: &Upstream,
        upgrade_protocol: Option<HeaderValue>,
    ) {
        headers::strip_hop_by_hop(h);
        headers::strip_reserved_inbound(h, &self.identity);
        headers::strip_gateway_cookies(h, &self.gateway_cookies);
        // hyper already answered `100-continue` to the client when the body was
        // first read; the upstream gets the body at once and no 417 surprises.
        h.remove(header::EXPECT);
        // Room for the headers set below (five forwarding headers and four
        // identity headers; Host replaces the client's) at once, instead of
        // the map growing twice on the way (hyper sized it for the client's).
        h.reserve(5 + if principal.is_some() { 4 } else { 0 });
        // Usually the client's own Host header's bytes, shared (not copied).
        let authority = ctx.authority.header_value();
        headers::set_forwarding(h, ctx.client_addr, ctx.scheme, Some(authority));
        if let Some(principal) = principal {
            headers::set_identity(h, &self.identity, principal);
        }
        let host = if upstream.preserve_host {
            authority.clone()
        } else {
            upstream.host.clone()
        };
        h.insert(header::HOST, host);
        if let Some(protocol) = upgrade_protocol {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, protocol);
        }
    }
}

impl Proxy {
    /// Builds the proxy and one pooled client per upstream. Metric handles are
    /// resolved here, so the metrics recorder must be installed first.
    pub fn new(settings: ProxySettings) -> Result<Self, ProxyError> {
        let upstreams = settings
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, &settings.upstream_connections))
            .collect::<Result<Vec<_>, _>>()?;
        let default = upstreams.iter().position(|u| u.hosts.is_empty());
        Ok(Self {
            inner: Arc::new(Inner {
                upstreams,
                default,
                identity: settings.identity.clone(),
                gateway_cookies: settings.gateway_cookies.clone(),
                settings,
            }),
        })
    }

    /// The same proxy with its own, empty connection pools: one per serving
    /// thread, so a thread's requests reuse connections driven by that thread.
    pub fn with_new_pools(&self) -> Result<Self, ProxyError> {
        Self::new(self.inner.settings.clone())
    }

    /// The process-wide budget of upstream connections this proxy draws on.
    pub fn upstream_budget(&self) -> ConnectionBudget {
        self.inner.settings.upstream_connections.clone()
    }

    /// True when there is no upstream at all (a gateway that only answers
    /// forward-auth checks).
    pub fn forwards_nothing(&self) -> bool {
        self.inner.upstreams.is_empty()
    }

    /// Index of the upstream serving `host` (lower-cased, no port): the one listing
    /// it, else the default (empty hosts), else None.
    pub fn select(&self, host: &str) -> Option<usize> {
        self.inner
            .upstreams
            .iter()
            .position(|u| u.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
            .or(self.inner.default)
    }

    /// Forwards a request. Reads `RequestContext` and optional `Principal` from
    /// request extensions. Never panics.
    pub async fn forward(&self, mut req: Request<Body>) -> Response<Body> {
        let Some(ctx) = req.extensions_mut().remove::<RequestContext>() else {
            tracing::error!("request reached the proxy without a RequestContext; not forwarding");
            metrics::counter!("portcullis_upstream_errors_total", "upstream" => "", "kind" => "no_context")
                .increment(1);
            return error_response(StatusCode::BAD_GATEWAY, wants_html(req.headers()), "");
        };
        let principal = req.extensions_mut().remove::<Principal>();
        self.forward_as(req, ctx, principal).await
    }

    /// Forwards a request in `ctx` for `principal` (its identity headers are
    /// set; `None`: none are). Never panics.
    ///
    /// A function returning an `async move` block rather than an `async fn`:
    /// the block works on its captured arguments in place, where an `async
    /// fn` future would also hold a moved copy of each (about 420 bytes more
    /// in every enforced request's future, copied whenever it is moved).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold moved copies of its arguments"
    )]
    pub fn forward_as(
        &self,
        req: Request<Body>,
        ctx: RequestContext,
        principal: Option<Principal>,
    ) -> impl Future<Output = Response<Body>> + '_ {
        async move {
            let wants_html = wants_html(req.headers());
            let (mut parts, body) = req.into_parts();
            let Some(upstream) = ctx.upstream.and_then(|i| self.inner.upstreams.get(i)) else {
                tracing::warn!(request_id = %ctx.request_id, host = %ctx.host, "no upstream for this request; not forwarding");
                metrics::counter!("portcullis_upstream_errors_total", "upstream" => "", "kind" => "no_upstream")
                .increment(1);
                return error_response(StatusCode::BAD_GATEWAY, wants_html, ctx.request_id.as_str());
            };
            if parts.method == Method::CONNECT {
                // A reverse proxy has nothing to tunnel to; forwarding would open one.
                return error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    wants_html,
                    ctx.request_id.as_str(),
                );
            }
            let Some(uri) = upstream.uri(&parts.uri) else {
                tracing::warn!(upstream = %upstream.name, request_id = %ctx.request_id, "cannot build the upstream URI");
                return error_response(StatusCode::BAD_GATEWAY, wants_html, ctx.request_id.as_str());
            };

            // Only a WebSocket upgrade on a connection hyper can actually upgrade
            // (HTTP/1.1 served with upgrades) is offered upstream as one; any other
            // protocol (`h2c`, ...) or connection goes on as an ordinary request,
            // its Upgrade, Connection and HTTP2-Settings dropped as hop-by-hop.
            let client_upgrade = if headers::is_websocket_upgrade(&parts.headers) {
                parts.extensions.remove::<OnUpgrade>()
            } else {
                None
            };
            let drained = parts.extensions.get::<crate::server::Drained>().cloned();
            let upgrade_protocol = client_upgrade
                .as_ref()
                .map(|_| HeaderValue::from_static("websocket"));

            self.inner.rewrite_request_headers(
                &mut parts.headers,
                &ctx,
                principal.as_ref(),
                upstream,
                upgrade_protocol,
            );

            // The client's extensions (principal, upgrade handle, server
            // internals) stay on this side: dropped here, none go upstream.
            parts.extensions = http::Extensions::new();
            parts.uri = uri;
            parts.version = Version::HTTP_11;
            let outbound = Request::from_parts(parts, body);

            let started = Instant::now();
            // The deadline from the same clock reading (one read fewer per request).
            // A timeout past what the clock can hold waits a year instead (as
            // `tokio::time::timeout` would wait "forever"); never a panic.
            let start = tokio::time::Instant::from_std(started);
            let deadline = start
                .checked_add(upstream.timeout)
                .or_else(|| start.checked_add(Duration::from_secs(365 * 86_400)))
                .unwrap_or(start);
            let sent = tokio::time::timeout_at(deadline, upstream.pool.send(outbound, started)).await;
            let mut res = match sent {
                Ok(Ok(res)) => res,
                Ok(Err(error)) => {
                    let (kind, status, message) = match error {
                        pool::SendError::Busy => (
                            UpstreamError::Busy,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no upstream connection left",
                        ),
                        pool::SendError::Connect(_) => (
                            UpstreamError::Connect,
                            StatusCode::BAD_GATEWAY,
                            "upstream connect failed",
                        ),
                        pool::SendError::Request(_) => (
                            UpstreamError::Request,
                            StatusCode::BAD_GATEWAY,
                            "upstream request failed",
                        ),
                    };
                    return upstream_error(upstream, &ctx, wants_html, kind, status, message, &error);
                }
                Err(elapsed) => {
                    return upstream_error(
                        upstream,
                        &ctx,
                        wants_html,
                        UpstreamError::Timeout,
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream response head timed out",
                        &elapsed,
                    );
                }
            };
            upstream.duration.record(started.elapsed().as_secs_f64());

            let status = res.status();
            if status == StatusCode::SWITCHING_PROTOCOLS {
                let Some(client_upgrade) = client_upgrade else {
                    tracing::warn!(upstream = %upstream.name, request_id = %ctx.request_id, "upstream switched protocols without being asked");
                    upstream.errors.count(UpstreamError::Protocol);
                    return error_response(StatusCode::BAD_GATEWAY, wants_html, ctx.request_id.as_str());
                };
                let upstream_upgrade = hyper::upgrade::on(&mut res);
                // The upstream socket's place in the connection budget, kept by
                // the tunnel: hyper's part of the connection, which held it, ends.
                let place = res.extensions_mut().remove::<pool::TunnelPlace>();
                let protocol = res.headers().get(header::UPGRADE).cloned();
                let h = res.headers_mut();
                headers::strip_hop_by_hop(h);
                headers::filter_set_cookies(h, &self.inner.gateway_cookies);
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(protocol) = protocol {
                    h.insert(header::UPGRADE, protocol);
                }
                upgrade::splice(
                    client_upgrade,
                    upstream_upgrade,
                    upstream.name.clone(),
                    upstream.errors.clone(),
                    ctx.request_id,
                    drained,
                    self.inner.settings.tunnel_idle_timeout,
                    place,
                );
            } else {
                let h = res.headers_mut();
                headers::strip_hop_by_hop(h);
                headers::filter_set_cookies(h, &self.inner.gateway_cookies);
            }

            // Status and headers only: the upstream connection's extensions are not
            // the client's business, nor its HTTP version (an HTTP/1.0 upstream's
            // answer goes to the client as the gateway's own HTTP/1.1 one).
            let (mut parts, body) = res.into_parts();
            parts.extensions = http::Extensions::new();
            parts.version = Version::HTTP_11;
            Response::from_parts(parts, Body::new(body))
        }
    }
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each upstream pool grows on demand; backpressure is the concurrency
        // limit further out.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let proxy = self.clone();
        Box::pin(async move { Ok(proxy.forward(req).await) })
    }
}

/// True when the client prefers a page over JSON (Accept contains text/html).
fn wants_html(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.as_bytes()
            .windows(9)
            .any(|w| w.eq_ignore_ascii_case(b"text/html"))
    })
}

/// Logs and counts an upstream failure, then answers it.
fn upstream_error(
    upstream: &Upstream,
    ctx: &RequestContext,
    wants_html: bool,
    kind: UpstreamError,
    status: StatusCode,
    message: &'static str,
    error: &(dyn std::error::Error + 'static),
) -> Response<Body> {
    tracing::warn!(upstream = %upstream.name, request_id = %ctx.request_id, kind = kind.as_str(), error = %Chain(error), "{message}");
    upstream.errors.count(kind);
    error_response(status, wants_html, ctx.request_id.as_str())
}

/// An error with its sources, `a: b: c` (hyper's own Display stops at the top).
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// A small generic error answer: HTML for browsers, else an Okta-style JSON error.
/// The request id lets an operator find the cause in the log.
fn error_response(status: StatusCode, html: bool, request_id: &str) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let (content_type, body) = if html {
        let body = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\
             <body><h1>{reason}</h1><p>The application could not answer this request. Please try again later.</p></body></html>\n",
            code = status.as_u16()
        );
        ("text/html; charset=utf-8", body)
    } else {
        let body = serde_json::json!({
            "errorCode": "E0000009",
            "errorSummary": reason,
            "errorLink": "E0000009",
            "errorId": request_id,
            "errorCauses": [],
        });
        ("application/json", body.to_string())
    };
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use futures_util::{SinkExt, StreamExt};
    use http_body_util::BodyExt;
    use hyper::body::{Frame, Incoming};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tower::ServiceExt;

    use super::*;
    use crate::identity::PrincipalInfo;

    type Reply = Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>;

    fn full(body: impl Into<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, hyper::Error> {
        http_body_util::Full::new(body.into())
            .map_err(|never| match never {})
            .boxed()
    }

    /// The dummy upstream: echoes what it received as JSON, plus a few special paths.
    async fn upstream_handler(mut req: Request<Incoming>) -> Result<Reply, Infallible> {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Response::new(full("late")))
            }
            "/big" => {
                // 32 MiB in 64 KiB frames, produced lazily.
                let frames = futures_util::stream::iter(
                    (0..512).map(|_| Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![b'x'; 65536])))),
                );
                Ok(Response::new(BodyExt::boxed(http_body_util::StreamBody::new(
                    frames,
                ))))
            }
            "/duplex" => {
                // Echoes each request frame as soon as it arrives.
                let body = req.into_body();
                Ok(Response::new(body.boxed()))
            }
            "/cookies" => {
                let res = Response::builder()
                    .header("set-cookie", "app=1; Path=/")
                    .header("set-cookie", "portcullis_session=forged; Path=/; HttpOnly")
                    .header("set-cookie", "PORTCULLIS_CSRF=forged")
                    .header("connection", "x-hop")
                    .header("x-hop", "secret")
                    .header("keep-alive", "timeout=5")
                    .header("x-app", "kept")
                    .body(full("ok"))
                    .unwrap();
                Ok(res)
            }
            "/ws" | "/ws-refuse" => {
                let key = req.headers().get("sec-websocket-key").cloned();
                let Some(key) = key.filter(|_| path == "/ws" && headers::is_upgrade_request(req.headers()))
                else {
                    return Ok(Response::builder()
                        .status(400)
                        .body(full("no upgrade for you"))
                        .unwrap());
                };
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let upgraded = on.await.unwrap();
                    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            ws.send(msg).await.unwrap();
                        }
                    }
                });
                let res = Response::builder()
                    .status(101)
                    .header("connection", "Upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
                    .header("set-cookie", "portcullis_session=forged")
                    .body(full(""))
                    .unwrap();
                Ok(res)
            }
            _ => {
                let method = req.method().to_string();
                let uri = req.uri().to_string();
                let headers: Vec<(String, String)> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let mut received = 0usize;
                let body = req.body_mut();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        received += data.len();
                    }
                }
                let json = serde_json::json!({"method": method, "uri": uri, "headers": headers, "received": received});
                Ok(Response::builder()
                    .header("content-type", "application/json")
                    .body(full(json.to_string()))
                    .unwrap())
            }
        }
    }

    async fn spawn_upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(upstream_handler))
                        .with_upgrades()
                        .await;
                });
            }
        });
        addr
    }

    fn upstream_config(url: &str, preserve_host: bool, timeout: Duration) -> UpstreamConfig {
        UpstreamConfig {
            name: "app".into(),
            url: url::Url::parse(url).unwrap(),
            hosts: vec![],
            preserve_host,
            timeout,
            pool_idle_timeout: Duration::from_secs(4),
            ca: vec![],
            header_case: crate::config::HeaderCase::Title,
        }
    }

    fn identity() -> IdentityHeaders {
        IdentityHeaders {
            user: http::HeaderName::from_static("remote-user"),
            groups: http::HeaderName::from_static("remote-groups"),
            email: http::HeaderName::from_static("remote-email"),
            name: http::HeaderName::from_static("remote-name"),
        }
    }

    fn proxy_for(upstreams: Vec<UpstreamConfig>) -> Proxy {
        Proxy::new(ProxySettings {
            upstreams,
            identity: identity(),
            gateway_cookies: vec!["portcullis_session".into(), "portcullis_csrf".into()],
            upstream_connections: ConnectionBudget::new(usize::MAX),
            tunnel_idle_timeout: Duration::from_secs(60),
        })
        .unwrap()
    }

    fn proxy(addr: SocketAddr, base_path: &str, preserve_host: bool) -> Proxy {
        proxy_for(vec![upstream_config(
            &format!("http://{addr}{base_path}"),
            preserve_host,
            Duration::from_secs(5),
        )])
    }

    fn context(client: &str) -> RequestContext {
        let client_addr: IpAddr = client.parse().unwrap();
        RequestContext {
            peer_addr: SocketAddr::new(client_addr, 40000),
            client_addr,
            scheme: "https",
            authority: crate::context::Authority::new("app.example.com:8443").unwrap(),
            host: "app.example.com".into(),
            upstream: Some(0),
            request_id: crate::context::RequestId::from_text("req-1").unwrap(),
        }
    }

    fn alice() -> Principal {
        Principal::new(PrincipalInfo {
            user_id: "00u1".into(),
            username: "alice".into(),
            display_name: Some("Zoë Example".into()),
            email: Some("alice@example.com".into()),
            groups: vec!["admins".into(), "R&D, EU".into()],
            level: 2,
            session_id: "sid".into(),
        })
    }

    fn request(uri: &str) -> http::request::Builder {
        Request::builder().uri(uri).extension(context("192.0.2.10"))
    }

    async fn json(res: Response<Body>) -> Value {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// All values a header arrived with upstream.
    fn got(echo: &Value, name: &str) -> Vec<String> {
        echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn forwards_with_rewritten_headers() {
        let addr = spawn_upstream().await;
        let proxy = proxy(addr, "/base/", true);
        let req = request("/some/path?q=1&r=%20")
            .method("POST")
            .header("Remote_User", "mallory")
            .header("REMOTE-USER", "mallory")
            .header("remote-groups", "admins")
            .header("X_Forwarded_For", "6.6.6.6")
            .header("x-forwarded-for", "6.6.6.6")
            .header("X-Forwarded-Host", "evil.example")
            .header("forwarded", "for=6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("connection", "keep-alive, X-Hop")
            .header("x-hop", "secret")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic eA==")
            .header("cookie", "a=1; portcullis_session=SESSION")
            .header("cookie", "portcullis_csrf=CSRF; b=2")
            .header("authorization", "Bearer app-token")
            .header("host", "ignored.example")
            .extension(alice())
            .body(Body::from("hello"))
            .unwrap();
        let res = proxy.forward(req).await;
        assert_eq!(res.status(), StatusCode::OK);
        let echo = json(res).await;
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["uri"], "/base/some/path?q=1&r=%20");
        assert_eq!(echo["received"], 5);
        assert_eq!(got(&echo, "remote-user"), ["alice"]);
        assert_eq!(got(&echo, "remote-groups"), ["admins,R&D%2C EU"]);
        assert_eq!(got(&echo, "remote-email"), ["alice@example.com"]);
        assert_eq!(got(&echo, "remote-name"), ["Zo%C3%AB Example"]);
        assert!(got(&echo, "remote_user").is_empty());
        assert_eq!(got(&echo, "x-forwarded-for"), ["192.0.2.10"]);
        assert!(got(&echo, "x_forwarded_for").is_empty());
        assert_eq!(got(&echo, "x-real-ip"), ["192.0.2.10"]);
        assert_eq!(got(&echo, "x-forwarded-proto"), ["https"]);
        assert_eq!(got(&echo, "x-forwarded-host"), ["app.example.com:8443"]);
        assert_eq!(
            got(&echo, "forwarded"),
            ["for=192.0.2.10;proto=https;host=\"app.example.com:8443\""]
        );
        assert_eq!(got(&echo, "host"), ["app.example.com:8443"]);
        assert_eq!(got(&echo, "cookie"), ["a=1; b=2"]);
        assert_eq!(got(&echo, "authorization"), ["Bearer app-token"]);
        for hop in ["x-hop", "te", "proxy-authorization", "upgrade"] {
            assert!(got(&echo, hop).is_empty(), "{hop} reached the upstream");
        }
        assert_ne!(got(&echo, "connection"), ["upgrade"]);
    }

    /// The request head one raw upstream connection received, as bytes on
    /// the wire (the echo app's server would lower-case the names).
    async fn head_on_the_wire(header_case: crate::config::HeaderCase) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut chunk = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection closed before the head ended");
                head.extend_from_slice(&chunk[..n]);
            }
            conn.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let mut config = upstream_config(&format!("http://{addr}"), true, Duration::from_secs(5));
        config.header_case = header_case;
        let proxy = proxy_for(vec![config]);
        let req = request("/x")
            .header("user-agent", "test")
            .extension(alice())
            .body(Body::empty())
            .unwrap();
        assert_eq!(proxy.forward(req).await.status(), StatusCode::NO_CONTENT);
        upstream.await.unwrap()
    }

    /// An HTTP/1.0 upstream's answer goes to the client as the gateway's own
    /// HTTP/1.1 answer (hyper would write an HTTP/1.0 status line and close
    /// a kept-alive client connection otherwise), its status, headers and
    /// body unchanged.
    #[tokio::test]
    async fn an_http10_upstreams_answer_goes_out_as_http11() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut chunk = [0u8; 4096];
            let _ = conn.read(&mut chunk).await.unwrap();
            conn.write_all(b"HTTP/1.0 201 Created\r\nx-app: old\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
        });
        let proxy = proxy(addr, "", true);
        let res = proxy.forward(request("/x").body(Body::empty()).unwrap()).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(res.version(), Version::HTTP_11);
        assert_eq!(res.headers()["x-app"], "old");
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    }

    #[tokio::test]
    async fn header_names_go_upstream_in_title_case_unless_lower_is_chosen() {
        use crate::config::HeaderCase;
        let title = head_on_the_wire(HeaderCase::Title).await;
        for line in [
            "\r\nHost: ",
            "\r\nUser-Agent: test\r\n",
            "\r\nRemote-User: alice\r\n",
            "\r\nX-Forwarded-For: ",
        ] {
            assert!(title.contains(line), "{line:?} not in {title:?}");
        }
        let lower = head_on_the_wire(HeaderCase::Lower).await;
        for line in [
            "\r\nhost: ",
            "\r\nuser-agent: test\r\n",
            "\r\nremote-user: alice\r\n",
            "\r\nx-forwarded-for: ",
        ] {
            assert!(lower.contains(line), "{line:?} not in {lower:?}");
        }
        assert!(!lower.contains("Remote-User"), "{lower:?}");
    }

    #[tokio::test]
    async fn requests_go_upstream_in_origin_form_and_options_star_as_star() {
        let addr = spawn_upstream().await;
        for prefix in ["", "/base"] {
            let proxy = proxy(addr, prefix, true);
            // An absolute-form request target (a client speaking to a proxy)
            // reaches the upstream as a path, as HTTP/1.1 to an origin wants.
            let req = request("http://app.example.com:8443/x?y=1")
                .body(Body::empty())
                .unwrap();
            let echo = json(proxy.forward(req).await).await;
            assert_eq!(echo["uri"], format!("{prefix}/x?y=1"));
            // One with an empty path: its path is `/` (what a policy sees),
            // and so it goes under the prefix, query and all.
            for (target, sent) in [
                ("http://app.example.com?y=1", format!("{prefix}/?y=1")),
                ("http://app.example.com", format!("{prefix}/")),
            ] {
                let req = request(target).body(Body::empty()).unwrap();
                assert_eq!(req.uri().path(), "/");
                let echo = json(proxy.forward(req).await).await;
                assert_eq!(echo["uri"], sent, "{target}");
            }
            let req = request("*").method("OPTIONS").body(Body::empty()).unwrap();
            let echo = json(proxy.forward(req).await).await;
            assert_eq!(echo["method"], "OPTIONS");
            assert_eq!(
                echo["uri"], "*",
                "OPTIONS * addresses the server, under any prefix"
            );
        }
    }

    #[tokio::test]
    async fn without_a_principal_identity_is_only_stripped() {
        let addr = spawn_upstream().await;
        let proxy = proxy(addr, "", true);
        let req = request("/")
            .header("remote-user", "mallory")
            .header("Remote_Email", "m@evil")
            .header("cookie", "portcullis_session=SESSION")
            .body(Body::empty())
            .unwrap();
        let echo = json(proxy.forward(req).await).await;
        assert_eq!(echo["uri"], "/");
        for name in [
            "remote-user",
            "remote_email",
            "remote-email",
            "remote-groups",
            "remote-name",
            "cookie",
        ] {
            assert!(got(&echo, name).is_empty(), "{name} reached the upstream");
        }
    }

    #[tokio::test]
    async fn host_is_the_upstreams_own_without_preserve_host() {
        let addr = spawn_upstream().await;
        let proxy = proxy(addr, "/prefix", false);
        let echo = json(proxy.forward(request("/x").body(Body::empty()).unwrap()).await).await;
        assert_eq!(got(&echo, "host"), [addr.to_string()]);
        assert_eq!(got(&echo, "x-forwarded-host"), ["app.example.com:8443"]);
        assert_eq!(echo["uri"], "/prefix/x");
    }

    #[tokio::test]
    async fn http2_requests_go_upstream_as_http11_with_host_from_the_context() {
        let addr = spawn_upstream().await;
        let proxy = proxy(addr, "", true);
        let req = request("https://app.example.com:8443/h2?x=1")
            .version(Version::HTTP_2)
            .body(Body::empty())
            .unwrap();
        let echo = json(proxy.forward(req).await).await;
        assert_eq!(echo["uri"], "/h2?x=1");
        assert_eq!(got(&echo, "host"), ["app.example.com:8443"]);
    }

    #[tokio::test]
    async fn response_headers_are_filtered() {
        let addr = spawn_upstream().await;
        let proxy = proxy(addr, "", true);
        let res = proxy
            .forward(request("/cookies").body(Body::empty()).unwrap())
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let cookies: Vec<_> = res.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["app=1; Path=/"]);
        assert!(!res.headers().contains_key("x-hop"));
        assert!(!res.headers().contains_key("keep-alive"));
        assert!(!res.headers().contains_key("connection"));
        assert_eq!(res.headers()["x-app"], "kept");
    }

    #[tokio::test]
    async fn bodies_stream_both_ways() {
        let addr = spawn_upstream().await;
        let proxy = proxy(addr, "", true);

        // 32 MiB up, counted by the upstream.
        let chunks =
            futures_util::stream::iter((0..512).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'y'; 65536]))));
        let req = request("/upload")
            .method("PUT")
            .body(Body::from_stream(chunks))
            .unwrap();
        let echo = json(proxy.forward(req).await).await;
        assert_eq!(echo["received"], 32 * 1024 * 1024);

        // 32 MiB down.
        let res = proxy.forward(request("/big").body(Body::empty()).unwrap()).await;
        let mut body = res.into_body();
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            total += frame.unwrap().into_data().map_or(0, |d| d.len());
        }
        assert_eq!(total, 32 * 1024 * 1024);
    }

    #[tokio::test]
    async fn nothing_is_buffered() {
        // The upstream echoes each frame as it arrives; the second frame is only sent
        // after the first came back, so any buffering in the proxy would hang.
        let addr = spawn_upstream().await;
        let proxy = proxy(addr, "", true);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
        });
        let req = request("/duplex")
            .method("POST")
            .body(Body::from_stream(stream))
            .unwrap();
        let exchange = async move {
            tx.send(Bytes::from_static(b"first")).await.unwrap();
            let res = proxy.forward(req).await;
            let mut body = res.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(first, "first");
            tx.send(Bytes::from_static(b"second")).await.unwrap();
            let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(second, "second");
            drop(tx);
            assert!(body.frame().await.is_none());
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the proxy buffered a body");
    }

    #[tokio::test]
    async fn missing_context_or_upstream_fails_closed() {
        let addr = spawn_upstream().await;
        let proxy = proxy(addr, "", true);
        let res = proxy
            .forward(Request::builder().uri("/").body(Body::empty()).unwrap())
            .await;
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(json(res).await["errorCode"], "E0000009");

        let mut ctx = context("192.0.2.10");
        ctx.upstream = None;
        let res = proxy
            .forward(
                Request::builder()
                    .uri("/")
                    .extension(ctx.clone())
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        ctx.upstream = Some(7);
        let res = proxy
            .forward(
                Request::builder()
                    .uri("/")
                    .extension(ctx)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn closed_port_is_502() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let proxy = proxy_for(vec![upstream_config(
            &format!("http://127.0.0.1:{port}"),
            true,
            Duration::from_secs(5),
        )]);
        let res = proxy
            .forward(request("/?secret=1").body(Body::empty()).unwrap())
            .await;
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(res.headers()["content-type"], "application/json");
        assert_eq!(res.headers()["cache-control"], "no-store");
        let body = json(res).await;
        assert_eq!(body["errorCode"], "E0000009");
        assert_eq!(body["errorId"], "req-1");

        let res = proxy
            .forward(
                request("/")
                    .header("accept", "text/html,application/xhtml+xml")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }

    #[tokio::test]
    async fn slow_upstream_is_504() {
        let addr = spawn_upstream().await;
        let proxy = proxy_for(vec![upstream_config(
            &format!("http://{addr}"),
            true,
            Duration::from_millis(200),
        )]);
        let started = Instant::now();
        let res = proxy.forward(request("/slow").body(Body::empty()).unwrap()).await;
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn works_as_a_tower_service() {
        let addr = spawn_upstream().await;
        let proxy = proxy(addr, "", true);
        let res = proxy
            .oneshot(request("/svc").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(json(res).await["uri"], "/svc");
    }

    #[test]
    fn select_prefers_listed_hosts_then_the_default() {
        let mut a = upstream_config("http://127.0.0.1:1", true, Duration::from_secs(1));
        a.hosts = vec!["a.example".into()];
        let b = upstream_config("https://127.0.0.1:2/x", true, Duration::from_secs(1));
        let mut c = upstream_config("http://127.0.0.1:3", true, Duration::from_secs(1));
        c.hosts = vec!["c.example".into(), "c2.example".into()];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let proxy = proxy_for(vec![a.clone(), b, c.clone()]);
        assert_eq!(proxy.select("a.example"), Some(0));
        assert_eq!(proxy.select("c2.example"), Some(2));
        assert_eq!(proxy.select("other.example"), Some(1));
        let no_default = proxy_for(vec![a, c]);
        assert_eq!(no_default.select("other.example"), None);
        assert_eq!(no_default.select("c.example"), Some(1));
    }

    #[test]
    fn unusable_upstream_urls_are_rejected() {
        for url in [
            "ftp://example.com",
            "http://user:pw@example.com",
            "http://example.com/?a=1",
        ] {
            let cfg = upstream_config(url, true, Duration::from_secs(1));
            let err = Proxy::new(ProxySettings {
                upstreams: vec![cfg],
                identity: identity(),
                gateway_cookies: vec![],
                upstream_connections: ConnectionBudget::new(usize::MAX),
                tunnel_idle_timeout: Duration::from_secs(60),
            });
            assert!(matches!(err, Err(ProxyError::Url { .. })), "{url}");
        }
    }

    #[tokio::test]
    async fn expect_continue_is_handled_here() {
        let addr = spawn_upstream().await;
        let proxy = proxy(addr, "", true);
        let req = request("/e")
            .method("POST")
            .header("expect", "100-continue")
            .body(Body::from("x"))
            .unwrap();
        let echo = json(proxy.forward(req).await).await;
        assert!(got(&echo, "expect").is_empty());
        assert_eq!(echo["received"], 1);
    }

    #[test]
    fn mounts_as_an_axum_fallback() {
        fn assert_service<S: Clone + Send + Sync + 'static>(_: &S) {}
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let proxy = proxy_for(vec![upstream_config(
            "http://127.0.0.1:1",
            true,
            Duration::from_secs(1),
        )]);
        assert_service(&proxy);
        let _router: axum::Router = axum::Router::new().fallback_service(proxy);
    }

    /// An https upstream with a self-signed certificate for 127.0.0.1; returns its
    /// address and the certificate to trust.
    async fn spawn_tls_upstream() -> (SocketAddr, rustls_pki_types::CertificateDer<'static>) {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service_fn(upstream_handler))
                        .await;
                });
            }
        });
        (addr, cert)
    }

    #[tokio::test]
    async fn https_upstream_trusts_its_configured_ca_only() {
        let (addr, cert) = spawn_tls_upstream().await;
        let mut trusted = upstream_config(&format!("https://{addr}/tls"), false, Duration::from_secs(5));
        trusted.ca = vec![cert];
        let proxy = proxy_for(vec![trusted]);
        let res = proxy
            .forward(request("/x?y=1").body(Body::empty()).unwrap())
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let echo = json(res).await;
        assert_eq!(echo["uri"], "/tls/x?y=1");
        assert_eq!(got(&echo, "host"), [addr.to_string()]);

        let untrusted = proxy_for(vec![upstream_config(
            &format!("https://{addr}"),
            true,
            Duration::from_secs(5),
        )]);
        let res = untrusted.forward(request("/").body(Body::empty()).unwrap()).await;
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }

    /// A real front server (hyper-util auto, with upgrades) that plays the gateway.
    async fn spawn_front(proxy: Proxy) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let proxy = proxy.clone();
                        async move {
                            let mut req = req.map(Body::new);
                            let mut ctx = context(&peer.ip().to_string());
                            ctx.scheme = "http";
                            req.extensions_mut().insert(ctx);
                            Ok::<_, Infallible>(proxy.forward(req).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn websocket_is_spliced_after_101() {
        let upstream = spawn_upstream().await;
        let front = spawn_front(proxy(upstream, "", true)).await;
        let (mut ws, res) = tokio_tungstenite::connect_async(format!("ws://{front}/ws"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert!(res.headers().get("set-cookie").is_none());
        for text in ["hello", "wörld"] {
            ws.send(Message::text(text)).await.unwrap();
            let echoed = ws.next().await.unwrap().unwrap();
            assert_eq!(echoed.into_text().unwrap().as_str(), text);
        }
        ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap().into_data().as_ref(),
            [0u8, 1, 2, 255]
        );
        ws.close(None).await.unwrap();
    }

    #[tokio::test]
    async fn refused_upgrade_is_not_spliced() {
        let upstream = spawn_upstream().await;
        let front = spawn_front(proxy(upstream, "", true)).await;
        let mut conn = TcpStream::connect(front).await.unwrap();
        conn.write_all(
            b"GET /ws-refuse HTTP/1.1\r\nHost: app.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
        let first = read_response(&mut conn).await;
        assert!(first.starts_with("HTTP/1.1 400"), "{first}");
        assert!(first.ends_with("no upgrade for you"));

        // Still HTTP through the proxy: a spliced connection would reach the upstream
        // raw, without the proxy's X-Forwarded-For.
        conn.write_all(b"GET /after HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
            .await
            .unwrap();
        let second = read_response(&mut conn).await;
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        let body: Value = serde_json::from_str(second.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["uri"], "/after");
        assert_eq!(got(&body, "x-forwarded-for"), ["127.0.0.1"]);
        assert!(got(&body, "upgrade").is_empty());
    }

    /// Reads one HTTP/1.1 response with a Content-Length body.
    async fn read_response(conn: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    }
}
