//! The admin routes of the Factors API (`/api/v1/users/{id}/factors...`):
//! each resolves the user and calls the one implementation shared with the
//! self-service routes ([`crate::api::factors`]). Recovery codes are not
//! Factor objects (Okta clients reject unknown factor types); administrators
//! manage them at `/api/v1/users/{id}/recovery_codes`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use http::StatusCode;
use serde_json::json;

use super::Admin;
use super::users::{Actor, Subject, UserOpError};
use crate::api::factors::{
    EnrollQuery, FactorOp, Scope, activate, cancel, catalog, delete, enroll, get, list, qr, resend,
    transaction, verify,
};
use crate::api::{json, json_no_store, unavailable};
use crate::audit;
use crate::error::{ApiError, ErrorCode};
use crate::factors;
use crate::ids::Ids;
use crate::state::AppState;

// ---- the admin routes --------------------------------------------------------

async fn admin_scope(st: &AppState, admin: &Admin, key: &str, client: IpAddr) -> Result<Scope, Response> {
    let s = super::users::subject(st, key).await?;
    Ok(Scope {
        base: format!("{}/api/v1/users/{}", admin.origin, s.id()),
        user: s.user(),
        actor: "admin",
        token: Some(admin.token),
        client,
        flow: factors::Flow::Admin,
    })
}

/// The admin route for a factor operation.
pub(crate) fn admin_handler(op: FactorOp, filter: MethodFilter) -> MethodRouter<Arc<AppState>> {
    match op {
        FactorOp::List => on(filter, admin_list),
        FactorOp::Catalog => on(filter, admin_catalog),
        FactorOp::Enroll => on(filter, admin_enroll),
        FactorOp::Get => on(filter, admin_get),
        FactorOp::Qr => on(filter, admin_qr),
        FactorOp::Activate => on(filter, admin_activate),
        FactorOp::Verify => on(filter, admin_verify),
        FactorOp::Transaction => on(filter, admin_transaction),
        FactorOp::Cancel => on(filter, admin_cancel),
        FactorOp::Resend => on(filter, admin_resend),
        FactorOp::Delete => on(filter, admin_delete),
    }
}

macro_rules! scoped {
    ($st:expr, $admin:expr, $uid:expr) => {
        match admin_scope(&$st, &$admin, &$uid, $admin.client).await {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

async fn admin_list(admin: Admin, State(st): State<Arc<AppState>>, Ids(uid): Ids<String>) -> Response {
    let scope = scoped!(st, admin, uid);
    list(&st, &scope).await
}

async fn admin_catalog(admin: Admin, State(st): State<Arc<AppState>>, Ids(uid): Ids<String>) -> Response {
    let scope = scoped!(st, admin, uid);
    catalog(&st, &scope).await
}

async fn admin_enroll(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids(uid): Ids<String>,
    Query(q): Query<EnrollQuery>,
    body: Bytes,
) -> Response {
    let scope = scoped!(st, admin, uid);
    enroll(&st, &scope, q.activate(), &body).await
}

async fn admin_get(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids((uid, fid)): Ids<(String, String)>,
) -> Response {
    let scope = scoped!(st, admin, uid);
    get(&st, &scope, &fid).await
}

async fn admin_qr(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids((uid, fid)): Ids<(String, String)>,
) -> Response {
    let scope = scoped!(st, admin, uid);
    qr(&st, &scope, &fid).await
}

async fn admin_activate(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids((uid, fid)): Ids<(String, String)>,
    body: Bytes,
) -> Response {
    let scope = scoped!(st, admin, uid);
    activate(&st, &scope, &fid, &body).await
}

async fn admin_verify(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids((uid, fid)): Ids<(String, String)>,
    body: Bytes,
) -> Response {
    let scope = scoped!(st, admin, uid);
    verify(&st, &scope, &fid, &body).await
}

async fn admin_transaction(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids((uid, fid, tid)): Ids<(String, String, String)>,
) -> Response {
    let scope = scoped!(st, admin, uid);
    transaction(&st, &scope, &fid, &tid).await
}

async fn admin_cancel(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids((uid, fid, tid)): Ids<(String, String, String)>,
) -> Response {
    let scope = scoped!(st, admin, uid);
    cancel(&st, &scope, &fid, &tid).await
}

async fn admin_resend(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids((uid, fid)): Ids<(String, String)>,
) -> Response {
    let scope = scoped!(st, admin, uid);
    resend(&st, &scope, &fid).await
}

async fn admin_delete(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids((uid, fid)): Ids<(String, String)>,
) -> Response {
    let scope = scoped!(st, admin, uid);
    delete(&st, &scope, &fid).await
}

// ---- recovery codes ----------------------------------------------------------

fn recovery_disabled() -> Response {
    ApiError::new(ErrorCode::E0000006)
        .cause("recovery codes are disabled (factors.recovery_codes.enabled)")
        .into_response()
}

/// `GET /api/v1/users/{id}/recovery_codes`: how many unused codes are left.
pub(crate) async fn recovery_left(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids(uid): Ids<String>,
) -> Response {
    let s = match super::users::subject(&st, &uid).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st.store.recovery_codes_left(s.id()).await {
        Ok(n) => {
            audit!("admin.recovery_codes.read", user = %s.login(), token = admin.token);
            json(
                StatusCode::OK,
                &json!({ "count": n, "enabled": st.config.factors.recovery_codes.enabled }),
            )
        }
        Err(e) => unavailable(e),
    }
}

/// `POST /api/v1/users/{id}/recovery_codes`: replaces the user's codes with
/// new ones, shown once.
pub(crate) async fn recovery_new(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids(uid): Ids<String>,
) -> Response {
    if !st.config.factors.recovery_codes.enabled {
        return recovery_disabled();
    }
    match new_recovery_codes_for(&st, &uid, Actor::Admin(admin.token)).await {
        Ok((_, codes)) => json_no_store(
            StatusCode::OK,
            &json!({ "count": codes.len(), "recoveryCodes": codes }),
        ),
        Err(e) => e.response(),
    }
}

/// Replaces a user's recovery codes with new ones and returns them (to be
/// shown once): the admin API and the admin console. The caller checks that
/// recovery codes are enabled.
pub async fn new_recovery_codes_for(
    st: &AppState,
    key: &str,
    actor: Actor,
) -> Result<(Subject, Vec<String>), UserOpError> {
    let s = super::users::find_subject(st, key).await?;
    match factors::new_recovery_codes(st, &s.user()).await {
        Ok(codes) => {
            audit!("admin.recovery_codes.generated", user = %s.login(), user_id = %s.id(), count = codes.len(), actor = %actor, token = actor.token());
            Ok((s, codes))
        }
        Err(e) => Err(UserOpError::Unavailable(e.to_string())),
    }
}

/// `DELETE /api/v1/users/{id}/recovery_codes`: revokes every code (204).
pub(crate) async fn recovery_revoke(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids(uid): Ids<String>,
) -> Response {
    let s = match super::users::subject(&st, &uid).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st.store.replace_recovery_codes(s.id(), &[], st.clock.now()).await {
        Ok(()) => {
            audit!("admin.recovery_codes.revoked", user = %s.login(), token = admin.token);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => unavailable(e),
    }
}
