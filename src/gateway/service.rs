//! The main listener's service: prepare each request, split portal from
//! application traffic, enforce, proxy; then log one access line.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::response::IntoResponse;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use super::AppState;
use crate::context::{self, ConnInfo, RequestContext};
use crate::enforce::{AccessInfo, Mfa, MfaLayer};
use crate::error::{ApiError, ErrorCode};
use crate::policy::normalize::{TargetError, normalize_target};
use crate::proxy::Proxy;
use crate::server::ForConnection;

/// The response header carrying the request id.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The main listener's service (cloned per connection and per request: one
/// reference count).
#[derive(Clone)]
pub struct MainService {
    inner: Arc<Inner>,
    /// The connection's facts, when the server told them once for all its
    /// requests ([`ForConnection`]); else each request carries them.
    conn: Option<ConnInfo>,
}

impl ForConnection for MainService {
    fn for_connection(&self, conn: ConnInfo) -> Option<Self> {
        Some(self.clone().told(Some(conn)))
    }
}

struct Inner {
    state: Arc<AppState>,
    proxy: Proxy,
    protected: Mfa<Proxy>,
    portal: axum::Router,
    /// The forward-auth endpoints, when enabled (answered on the serving thread).
    forward_auth: Option<Arc<crate::authz::ForwardAuth>>,
    /// The runtime this service was built on (the process's main runtime).
    home: Option<tokio::runtime::Handle>,
    /// Run portal requests on `home` rather than on the serving thread.
    portal_at_home: bool,
}

impl MainService {
    pub(super) fn new(state: Arc<AppState>, proxy: Proxy, mfa: MfaLayer, portal: axum::Router) -> Self {
        let protected = mfa.layer(proxy.clone());
        let prefix = state.config.portal.prefix.clone();
        // `{prefix}/` (a link's or a user's trailing slash) is the account page
        // at `{prefix}`; the nested router alone answers it 404.
        let account = prefix.clone();
        let portal = axum::Router::new().nest(&prefix, portal).route(
            &format!("{prefix}/"),
            axum::routing::get(move || {
                let to = account.clone();
                async move { axum::response::Redirect::to(&to) }
            }),
        );
        let forward_auth =
            crate::authz::ForwardAuth::new(state.enforcer.clone(), &state.config).map(Arc::new);
        Self {
            inner: Arc::new(Inner {
                state,
                proxy,
                protected,
                portal,
                forward_auth,
                home: tokio::runtime::Handle::try_current().ok(),
                portal_at_home: false,
            }),
            conn: None,
        }
    }

    /// This service with the connection's facts `conn` (`None`: each
    /// request's extensions tell them).
    pub(super) fn told(mut self, conn: Option<ConnInfo>) -> Self {
        self.conn = conn;
        self
    }

    /// The same service with its own upstream connection pools, for a serving
    /// thread of its own (see [`crate::server::serve_threads`]). Falls back to
    /// sharing this service's pools if they cannot be built again.
    ///
    /// Portal requests (sign-in, factor and self-service APIs) are handed back to
    /// the runtime this service was built on: their password hashing then shares
    /// one blocking pool (argon2's 19 MiB buffers are kept by the allocator per
    /// thread that ran them, so a pool per serving thread multiplies the memory
    /// they hold), and their store connections stay on the runtime that opened
    /// them. Proxied traffic stays on the serving thread.
    pub fn with_own_pools(&self) -> Self {
        let proxy = match self.inner.proxy.with_new_pools() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build per-thread upstream pools; sharing one");
                return self.clone();
            }
        };
        // The thread's own copy of the enforcer: its rules' regexes then
        // match without a lock (see `Enforcer::for_thread`).
        let enforcer = Arc::new(self.inner.state.enforcer.for_thread());
        let mfa = MfaLayer::new(enforcer.clone());
        Self {
            inner: Arc::new(Inner {
                state: self.inner.state.clone(),
                protected: mfa.layer(proxy.clone()),
                proxy,
                portal: self.inner.portal.clone(),
                forward_auth: self
                    .inner
                    .forward_auth
                    .as_ref()
                    .map(|f| Arc::new(f.with_enforcer(enforcer))),
                home: self.inner.home.clone(),
                portal_at_home: self.inner.home.is_some(),
            }),
            // A template for a thread's connections, told nothing yet.
            conn: None,
        }
    }
}

impl Service<Request<Body>> for MainService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        use futures_util::FutureExt as _;
        let this = self.clone();
        // One box per request: the handler and its rescue in one future, of
        // the handler's size (no async wrapper around it, which would hold
        // the handler twice, as its argument and as what it awaits, and be
        // copied whole on the way into the box).
        Box::pin(rescued(this.handle(req)).map(Ok))
    }
}

/// The rescue: a bug that panics while a request is handled answers a
/// generic 500 (the cause goes to the log) instead of dropping the
/// connection. The response body is passed on as it is (no further boxing).
fn rescued(handling: impl Future<Output = Response<Body>>) -> impl Future<Output = Response<Body>> {
    use futures_util::FutureExt as _;
    std::panic::AssertUnwindSafe(handling)
        .catch_unwind()
        .map(|caught| match caught {
            Ok(res) => res,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "request handler panicked");
                crate::metrics::request("panic", 500);
                internal_error()
            }
        })
}

/// A generic 500 (no detail reaches the client).
fn internal_error() -> Response<Body> {
    let mut res = (
        StatusCode::INTERNAL_SERVER_ERROR,
        r#"{"errorCode":"E0000009","errorSummary":"Internal Server Error"}"#,
    )
        .into_response();
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn bad_request(cause: &str) -> Response<Body> {
    ApiError::new(ErrorCode::E0000001).cause(cause).into_response()
}

impl MainService {
    async fn handle(mut self, mut req: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let request_id = context::RequestId::random();
        let mut proxied = None;
        let (res, host, path) = self.route(&mut req, request_id, &mut proxied).await;
        let mut res = res;
        // A proxied request's and a forward-auth check's come beside the
        // response; the others' in the response's extensions.
        let info = proxied
            .or_else(|| res.extensions_mut().remove::<AccessInfo>())
            .unwrap_or_default();
        let decision = if info.decision.is_empty() {
            "error"
        } else {
            info.decision
        };
        let status = res.status().as_u16();
        crate::metrics::request(decision, status);
        crate::telemetry::access(&crate::telemetry::AccessLine {
            request_id: request_id.as_str(),
            method: method.as_str(),
            host: &host,
            path: path.as_ref().map_or("", PathAndQuery::path),
            status,
            decision,
            user: info.user.as_ref().map_or("-", crate::enforce::LoggedUser::name),
            // Whole microseconds: `0.412`, not `0.41203700000000003`.
            duration_ms: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX) as f64 / 1000.0,
        });
        // The id is alphanumeric: always a valid value.
        if let Some(v) = request_id.header_value() {
            res.headers_mut().insert(X_REQUEST_ID.clone(), v);
        }
        res
    }

    /// Prepares and dispatches; returns the response and the host and path to
    /// log (the path shares the request's bytes: no copy per request). A
    /// request that went through enforcement to the upstream leaves what its
    /// access line says in `proxied` (so does a forward-auth check).
    async fn route(
        &mut self,
        req: &mut Request<Body>,
        request_id: context::RequestId,
        proxied: &mut Option<AccessInfo>,
    ) -> (Response<Body>, String, Option<PathAndQuery>) {
        let inner = &*self.inner;
        let cfg = &inner.state.config;
        let Some(conn) = self.conn.or_else(|| req.extensions().get::<ConnInfo>().copied()) else {
            // The server always tells it; without it we cannot know the client.
            return (
                ApiError::new(ErrorCode::E0000009).into_response(),
                String::new(),
                None,
            );
        };
        if !context::is_canonical_method(req.method()) {
            crate::audit!(
                "request.method_refused",
                client = %context::client_addr(conn.peer.ip(), req.headers(), &cfg.server.trusted_proxies),
                request_id = %request_id,
            );
            let mut res = bad_request("invalid method: methods are upper case");
            res.extensions_mut().insert(AccessInfo {
                decision: "invalid",
                user: None,
            });
            return (res, String::new(), None);
        }
        let Some((authority, host)) = context::authority(req.uri(), req.headers()) else {
            // Also two Host headers, or one disagreeing with the target.
            let mut res = bad_request("missing or invalid Host");
            res.extensions_mut().insert(AccessInfo {
                decision: "invalid",
                user: None,
            });
            return (res, String::new(), None);
        };
        let normal = match normalize_target(req.uri_mut()) {
            Ok(normal) => normal,
            Err(TargetError::Unrepresentable) => {
                let raw = req.uri().path_and_query().cloned();
                return (bad_request("invalid path"), host, raw);
            }
            Err(TargetError::Path(e)) => {
                let raw = req.uri().path_and_query().cloned();
                crate::audit!(
                    "request.path_refused",
                    reason = %e,
                    client = %context::client_addr(conn.peer.ip(), req.headers(), &cfg.server.trusted_proxies),
                    request_id = %request_id,
                );
                let mut res = bad_request(&format!("invalid path: {e}"));
                res.extensions_mut().insert(AccessInfo {
                    decision: "invalid",
                    user: None,
                });
                return (res, host, raw);
            }
        };
        let path = req.uri().path();
        let prefix = &cfg.portal.prefix;
        let in_portal = path
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        let logged_path = req.uri().path_and_query().cloned();
        let ctx = RequestContext {
            peer_addr: conn.peer,
            client_addr: context::client_addr(conn.peer.ip(), req.headers(), &cfg.server.trusted_proxies),
            scheme: context::scheme(&conn, req.headers(), &cfg.server.trusted_proxies),
            authority,
            host: host.clone(),
            upstream: None,
            request_id,
        };
        if in_portal
            && let Some(fa) = &inner.forward_auth
            && let Some(endpoint) = fa.endpoint(path)
        {
            let (res, info) = fa.answer(endpoint, req, &ctx);
            *proxied = Some(info);
            return (res, host, logged_path);
        }
        // The signed-in user of a portal request, for its access line (pages
        // that sign in or out name their user themselves). In memory only: the
        // cookie's MAC, the revocation view and the users table.
        let portal_user = in_portal
            .then(|| match inner.state.enforcer.session(req.headers()) {
                crate::enforce::SessionState::Valid(s) => Some(crate::enforce::LoggedUser::User(s.user)),
                _ => None,
            })
            .flatten();
        let req_owned = std::mem::take(req);
        if in_portal {
            let mut r = req_owned;
            r.extensions_mut().insert(ctx);
            let answer = inner.portal.clone().oneshot(r);
            let mut res = match inner.home.as_ref().filter(|_| inner.portal_at_home) {
                // Ended with this request: a client that hangs up (an HTTP/2
                // stream reset, a closed socket) leaves no work running behind
                // it, as when the portal runs on the serving thread.
                Some(home) => match AbortOnDrop(home.spawn(answer)).await {
                    Ok(res) => res.unwrap_or_else(|never| match never {}),
                    // The rescue around `handle` answers it like any other panic.
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    // The main runtime is going away: so is the process.
                    Err(_) => ApiError::new(ErrorCode::E0000009).into_response(),
                },
                None => answer.await.unwrap_or_else(|never| match never {}),
            };
            match res.extensions_mut().get_mut::<AccessInfo>() {
                Some(info) => {
                    if info.user.is_none() {
                        info.user = portal_user;
                    }
                }
                None => {
                    res.extensions_mut().insert(AccessInfo {
                        decision: "portal",
                        user: portal_user,
                    });
                }
            }
            return (res, host, logged_path);
        }
        let Some(upstream) = inner.proxy.select(&host) else {
            let mut res = if inner.proxy.forwards_nothing() {
                // Forward-auth only: the front proxy forwards to the app.
                (
                    StatusCode::NOT_FOUND,
                    "not found: this gateway forwards nothing (forward-auth only)\n",
                )
                    .into_response()
            } else {
                (StatusCode::MISDIRECTED_REQUEST, "unknown host\n").into_response()
            };
            res.extensions_mut().insert(AccessInfo {
                decision: "misdirected",
                user: None,
            });
            return (res, host, logged_path);
        };
        let ctx = RequestContext {
            upstream: Some(upstream),
            ..ctx
        };
        // Boxed: enforcing and proxying make a future of several kilobytes,
        // and held inline every future around it would be as large and be
        // copied whole each time one is built or moved (measured: four such
        // copies per request cost more than this allocation).
        let (res, info) = Box::pin(inner.protected.forward(req_owned, ctx, normal)).await;
        *proxied = Some(info);
        (res, host, logged_path)
    }
}

/// A task of another runtime, aborted when its waiter is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        // A no-op once the task has finished.
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_a_generic_500() {
        // A panic in the future itself, and one past an await point.
        let res = rescued(async { panic!("secret detail") }).await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("secret detail"));
        assert!(String::from_utf8_lossy(&body).contains("E0000009"));
        let res = rescued(async {
            tokio::task::yield_now().await;
            panic!("{}", String::from("secret detail"))
        })
        .await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("secret detail"));
        let ok = rescued(async { StatusCode::OK.into_response() }).await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
