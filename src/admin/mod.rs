//! The admin listener: `/healthz` (alive), `/readyz` (store reachable and
//! revocation view fresh), `/metrics` (Prometheus text), and the management
//! API as it lands. Tokens from `admin.tokens` are compared in constant time.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Path;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::error::{ApiError, ErrorCode};
use crate::gateway::AppState;
use crate::secret::ct_eq;

/// The admin router.
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/users/{id}/lifecycle/unlock", post(unlock))
        .route("/api/v1/users/{id}/sessions", delete(revoke_sessions))
        .fallback(|| async { ApiError::new(ErrorCode::E0000007).into_response() })
        .with_state(state)
}

/// The index of the admin token presented (`SSWS <t>` or `Bearer <t>`), if any matches.
pub fn authorized(st: &AppState, headers: &HeaderMap) -> Option<usize> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !(scheme.eq_ignore_ascii_case("ssws") || scheme.eq_ignore_ascii_case("bearer")) {
        return None;
    }
    let token = token.trim().as_bytes();
    // Compare against every token (no early exit).
    st.config
        .admin
        .tokens
        .iter()
        .enumerate()
        .fold(None, |found, (i, t)| {
            if ct_eq(t.expose(), token) && !t.is_empty() {
                found.or(Some(i))
            } else {
                found
            }
        })
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let store = st.store.health().await;
    let fresh = st.enforcer.revocations.is_fresh(Instant::now());
    match (store, fresh) {
        (Ok(()), true) => "ready\n".into_response(),
        (Err(e), _) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: store unreachable\n").into_response()
        }
        (Ok(()), false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: revocation view stale\n",
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if st.config.admin.metrics_require_token && authorized(&st, &headers).is_none() {
        return ApiError::new(ErrorCode::E0000011).into_response();
    }
    let mut res = crate::metrics::render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

/// Finds a user by id or login.
fn find_user(st: &AppState, id: &str) -> Option<Arc<crate::users::User>> {
    let users = st.enforcer.users.read().unwrap_or_else(|p| p.into_inner());
    users.get(id).or_else(|| users.by_login(id)).cloned()
}

/// The token index and user for an authorized admin call on an existing user.
fn guarded(
    st: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(usize, Arc<crate::users::User>), ApiError> {
    let Some(token) = authorized(st, headers) else {
        return Err(ApiError::new(ErrorCode::E0000011));
    };
    match find_user(st, id) {
        Some(u) => Ok((token, u)),
        None => Err(ApiError::new(ErrorCode::E0000007)),
    }
}

/// `POST /api/v1/users/{id}/lifecycle/unlock`: clears the user's lockouts.
async fn unlock(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (token, user) = match guarded(&st, &headers, &id) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    match st.regulator.unlock(&user.id).await {
        Ok(was_locked) => {
            crate::audit!("user.unlocked", user = %user.username, actor = "admin", token = token, was_locked = was_locked);
            let mut res = "{}".into_response();
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            res
        }
        Err(e) => {
            tracing::error!(error = %e, "unlock failed");
            ApiError::new(ErrorCode::E0000009).into_response()
        }
    }
}

/// `DELETE /api/v1/users/{id}/sessions`: revokes every session of the user.
async fn revoke_sessions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (token, user) = match guarded(&st, &headers, &id) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    match st.store.bump_epoch(&user.id).await {
        Ok(epoch) => {
            st.enforcer.revocations.note_epoch(&user.id, epoch);
            crate::audit!("sessions.revoked", user = %user.username, actor = "admin", token = token);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "revoking sessions failed");
            ApiError::new(ErrorCode::E0000009).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::gateway::Gateway;

    const CONFIG: &str = r#"
default_policy = "one_factor"
[admin]
tokens = ["first-admin-token-0123456789", "second-admin-token-0123456789"]
[[upstreams]]
name = "unused"
url = "http://127.0.0.1:9"
[session]
secrets = ["0123456789abcdef0123456789abcdef"]
[store]
kind = "memory"
encryption_keys = []
[factors.totp]
enabled = false
[factors.recovery_codes]
enabled = false
"#;

    async fn gateway() -> Gateway {
        let loaded = crate::config::load_str(CONFIG, &|_| None).expect("config");
        let gw = Gateway::build(loaded.config).await.expect("gateway");
        gw.state()
            .enforcer
            .users
            .write()
            .unwrap()
            .insert(crate::users::User {
                id: "00uBOB".into(),
                username: "bob".into(),
                display_name: None,
                email: None,
                phone: None,
                groups: vec![],
                password_hash: None,
                from_file: false,
                config_totp: None,
            });
        gw
    }

    fn call(method: &str, path: &str, auth: Option<&str>) -> Request<Body> {
        let mut r = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn unlock_needs_a_token_and_clears_the_lock() {
        let gw = gateway().await;
        let st = gw.state().clone();
        for _ in 0..5 {
            st.regulator
                .factor_failed("00uBOB", "192.0.2.1".parse().unwrap())
                .await
                .unwrap();
        }
        assert!(st.regulator.user_locked("00uBOB").await.unwrap().is_some());
        let app = gw.admin_router();
        let path = "/api/v1/users/bob/lifecycle/unlock";
        let res = app.clone().oneshot(call("POST", path, None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = app
            .clone()
            .oneshot(call("POST", path, Some("SSWS wrong-token")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = app
            .clone()
            .oneshot(call(
                "POST",
                "/api/v1/users/nobody/lifecycle/unlock",
                Some("SSWS second-admin-token-0123456789"),
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(
            st.regulator.user_locked("00uBOB").await.unwrap().is_some(),
            "refused calls change nothing"
        );
        let res = app
            .clone()
            .oneshot(call("POST", path, Some("Bearer second-admin-token-0123456789")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(st.regulator.user_locked("00uBOB").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn revoking_sessions_bumps_the_epoch() {
        let gw = gateway().await;
        let st = gw.state().clone();
        let before = st.enforcer.revocations.epoch("00uBOB");
        let res = gw
            .admin_router()
            .oneshot(call(
                "DELETE",
                "/api/v1/users/00uBOB/sessions",
                Some("SSWS first-admin-token-0123456789"),
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(st.enforcer.revocations.epoch("00uBOB"), before + 1);
    }
}
