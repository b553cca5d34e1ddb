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
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use super::AppState;
use super::prepare::{self, ConnInfo};
use crate::context::RequestContext;
use crate::enforce::{AccessInfo, Mfa, MfaLayer, replace_path};
use crate::error::{ApiError, ErrorCode};
use crate::policy::normalize::normalize;
use crate::proxy::Proxy;

/// The main listener's service.
#[derive(Clone)]
pub struct MainService {
    state: Arc<AppState>,
    proxy: Proxy,
    protected: Mfa<Proxy>,
    portal: axum::Router,
}

impl MainService {
    pub(super) fn new(state: Arc<AppState>, proxy: Proxy, mfa: MfaLayer, portal: axum::Router) -> Self {
        let protected = mfa.layer(proxy.clone());
        let portal = axum::Router::new().nest(&state.config.portal.prefix, portal);
        Self {
            state,
            proxy,
            protected,
            portal,
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
        let this = self.clone();
        Box::pin(async move { Ok(rescue(this.handle(req)).await) })
    }
}

/// The rescue: a bug that panics answers a generic 500 (the cause goes to
/// the log) instead of dropping the connection.
async fn rescue<F: Future<Output = Response<Body>>>(f: F) -> Response<Body> {
    match std::panic::AssertUnwindSafe(f).catch_unwind().await {
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
    }
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
        let request_id = crate::crypto::random_id(16);
        let (res, host, path) = self.route(&mut req, request_id.clone()).await;
        let mut res = res;
        let info = res.extensions_mut().remove::<AccessInfo>().unwrap_or_default();
        let decision = if info.decision.is_empty() {
            "error"
        } else {
            info.decision
        };
        let status = res.status().as_u16();
        crate::metrics::request(decision, status);
        tracing::info!(
            target: "portcullis::access",
            request_id = %request_id,
            method = %method,
            host = %host,
            path = %path,
            status,
            decision,
            user = info.user.as_deref().unwrap_or("-"),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        );
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            res.headers_mut().insert("x-request-id", v);
        }
        res
    }

    /// Prepares and dispatches; returns the response and the host and path to log.
    async fn route(
        &mut self,
        req: &mut Request<Body>,
        request_id: String,
    ) -> (Response<Body>, String, String) {
        let cfg = &self.state.config;
        let Some(conn) = req.extensions().get::<ConnInfo>().copied() else {
            // The server always inserts it; without it we cannot know the client.
            return (
                ApiError::new(ErrorCode::E0000009).into_response(),
                String::new(),
                String::new(),
            );
        };
        let Some((authority, host)) = prepare::authority(req.uri(), req.headers()) else {
            return (
                bad_request("missing or invalid Host"),
                String::new(),
                String::new(),
            );
        };
        let path = match normalize(req.uri().path()) {
            Ok(p) => p.into_owned(),
            Err(e) => {
                let raw = req.uri().path().to_owned();
                let mut res = bad_request(&format!("invalid path: {e}"));
                res.extensions_mut().insert(AccessInfo {
                    decision: "invalid",
                    user: None,
                });
                return (res, host, raw);
            }
        };
        if path != req.uri().path() {
            match replace_path(req.uri(), &path) {
                Some(uri) => *req.uri_mut() = uri,
                None => return (bad_request("invalid path"), host, path),
            }
        }
        let ctx = RequestContext {
            peer_addr: conn.peer,
            client_addr: prepare::client_addr(conn.peer.ip(), req.headers(), &cfg.server.trusted_proxies),
            scheme: prepare::scheme(&conn, req.headers(), &cfg.server.trusted_proxies),
            authority,
            host: host.clone(),
            upstream: None,
            request_id,
        };
        let req_owned = std::mem::take(req);
        let prefix = &cfg.portal.prefix;
        let in_portal = path
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if in_portal {
            let mut r = req_owned;
            r.extensions_mut().insert(ctx);
            let mut res = self
                .portal
                .clone()
                .oneshot(r)
                .await
                .unwrap_or_else(|never| match never {});
            if res.extensions().get::<AccessInfo>().is_none() {
                res.extensions_mut().insert(AccessInfo {
                    decision: "portal",
                    user: None,
                });
            }
            return (res, host, path);
        }
        let Some(upstream) = self.proxy.select(&host) else {
            let mut res = (StatusCode::MISDIRECTED_REQUEST, "unknown host\n").into_response();
            res.extensions_mut().insert(AccessInfo {
                decision: "misdirected",
                user: None,
            });
            return (res, host, path);
        };
        let mut r = req_owned;
        r.extensions_mut().insert(RequestContext {
            upstream: Some(upstream),
            ..ctx
        });
        let res = self
            .protected
            .clone()
            .oneshot(r)
            .await
            .unwrap_or_else(|never| match never {});
        (res, host, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_a_generic_500() {
        let res = rescue(async { panic!("secret detail") }).await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("secret detail"));
        let ok = rescue(async { StatusCode::OK.into_response() }).await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
