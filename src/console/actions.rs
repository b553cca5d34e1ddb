//! The console's changes (form posts). Each passes [`super::admit_change`]
//! (CSRF and Origin, membership, a recent second factor) and then calls the
//! operation the admin API calls, with the administrator as actor; on
//! success the browser goes back to the user's page (303) with a fixed
//! notice, except new recovery codes, which are shown once on the answer
//! itself (never cached).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::pages::{NewUserForm, new_user_page, recovery_codes_page};
use super::{
    BASE, ConsoleAdmin, admit_change, no_such_user, page, refused, unavailable, user_path, with_cookie,
};
use crate::admin::factors::new_recovery_codes_for;
use crate::admin::users::{
    UserOpError, check_password_value, check_profile, create_user as create_op, delete_user, reset_factors,
    revoke_sessions_of, unlock_user,
};
use crate::portal::{Ctx, csrf_token, see_other};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActionForm {
    csrf: String,
    /// For a reset: one factor's id; empty for all of them.
    factor: String,
}

/// Back to the user's page with the notice `done`.
fn back_to(st: &AppState, id: &str, done: &str) -> Response {
    see_other(&format!(
        "{}{}?done={done}",
        st.config.portal.prefix,
        user_path(id)
    ))
}

/// The answer to a failed operation.
fn failed(st: &AppState, login: &str, e: &UserOpError) -> Response {
    match e {
        UserOpError::Unavailable(cause) => unavailable(st, cause),
        UserOpError::NotFound => no_such_user(st),
        other => {
            let body = crate::pages::render(
                "message.html",
                &st.config.portal.prefix,
                minijinja::context! {
                    title => "Not changed",
                    message => format!("Not changed: {other}."),
                    link => format!("{}{BASE}/", st.config.portal.prefix),
                    link_text => "All users",
                },
            );
            page(StatusCode::CONFLICT, body, login)
        }
    }
}

/// [`admit_change`] for a change to the user `id`, whose page the admin
/// returns to; an id that cannot name a user answers "no such user".
async fn admit_user_change(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    csrf: &str,
    id: &str,
) -> Result<ConsoleAdmin, Box<Response>> {
    let admin = admit_change(st, ctx, headers, csrf, &user_path(id)).await?;
    if !crate::ids::is_user_key(id) {
        return Err(Box::new(no_such_user(st)));
    }
    Ok(admin)
}

/// `POST {prefix}/console/users/{id}/reset`: removes one factor (`factor`)
/// or every factor, the last one included, and ends the user's sessions.
pub async fn reset(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let admin = match admit_user_change(&st, &ctx, &headers, &f.csrf, &id).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let one = (!f.factor.is_empty()).then_some(f.factor.as_str());
    if one.is_some_and(|fid| !crate::ids::is_id(fid)) {
        return failed(&st, admin.login(), &UserOpError::FactorNotFound);
    }
    match reset_factors(&st, &id, one, admin.actor()).await {
        Ok((s, _)) => back_to(&st, s.id(), if one.is_some() { "reset" } else { "reset-all" }),
        Err(e) => failed(&st, admin.login(), &e),
    }
}

/// `POST {prefix}/console/users/{id}/unlock`: lifts the user's lockouts.
pub async fn unlock(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let admin = match admit_user_change(&st, &ctx, &headers, &f.csrf, &id).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match unlock_user(&st, &id, admin.actor()).await {
        Ok((s, true)) => back_to(&st, s.id(), "unlocked"),
        Ok((s, false)) => back_to(&st, s.id(), "not-locked"),
        Err(e) => failed(&st, admin.login(), &e),
    }
}

/// `POST {prefix}/console/users/{id}/revoke`: ends every session of the user.
pub async fn revoke(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let admin = match admit_user_change(&st, &ctx, &headers, &f.csrf, &id).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match revoke_sessions_of(&st, &id, admin.actor()).await {
        Ok(s) => back_to(&st, s.id(), "revoked"),
        Err(e) => failed(&st, admin.login(), &e),
    }
}

/// `POST {prefix}/console/users/{id}/recovery-codes`: new recovery codes
/// for the user (the old ones stop working), shown once on this answer.
pub async fn recovery_codes(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let admin = match admit_user_change(&st, &ctx, &headers, &f.csrf, &id).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if !st.config.factors.recovery_codes.enabled {
        return refused(
            &st,
            "Recovery codes are off",
            "Recovery codes are disabled in this gateway's configuration.",
            Some(admin.login()),
        );
    }
    match new_recovery_codes_for(&st, &id, admin.actor()).await {
        Ok((s, codes)) => {
            let (csrf, set) = csrf_token(&st, &headers);
            let body = recovery_codes_page(&st, &admin, &csrf, &s, &codes);
            with_cookie(page(StatusCode::OK, body, admin.login()), set)
        }
        Err(e) => failed(&st, admin.login(), &e),
    }
}

/// `POST {prefix}/console/users/{id}/delete`: removes an API user (with
/// their factors and recovery codes) and ends their sessions. Users of the
/// users file or the directory are changed there.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let admin = match admit_user_change(&st, &ctx, &headers, &f.csrf, &id).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match delete_user(&st, &id, admin.actor()).await {
        Ok(_) => see_other(&format!("{}{BASE}/?deleted=1", st.config.portal.prefix)),
        Err(e) => failed(&st, admin.login(), &e),
    }
}

/// The profile object the form describes (the API's shape).
fn profile_of(f: &NewUserForm) -> Value {
    let mut p = Map::new();
    p.insert("login".into(), json!(f.login));
    for (key, value) in [
        ("email", &f.email),
        ("firstName", &f.first_name),
        ("lastName", &f.last_name),
    ] {
        if !value.trim().is_empty() {
            p.insert(key.into(), json!(value));
        }
    }
    let groups: Vec<&str> = f
        .groups
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    if !groups.is_empty() {
        p.insert("groups".into(), json!(groups));
    }
    Value::Object(p)
}

/// `POST {prefix}/console/users`: creates an API user (active; a password
/// if one is given, else the user signs in with a factor only where
/// passwordless sign-in is on).
pub async fn create_user(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<NewUserForm>,
) -> Response {
    let admin = match admit_change(&st, &ctx, &headers, &f.csrf, "/console/new-user").await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let mut errors = Vec::new();
    let checked = match check_profile(&profile_of(&f), None) {
        Ok(x) => Some(x),
        Err(e) => {
            errors.extend(e.causes.into_iter().map(|c| c.error_summary));
            None
        }
    };
    let password = if f.password.is_empty() {
        None
    } else {
        match check_password_value(&f.password) {
            Ok(p) => Some(p),
            Err(cause) => {
                errors.push(cause);
                None
            }
        }
    };
    let again = |errors: &[String], status: StatusCode| {
        let (csrf, set) = csrf_token(&st, &headers);
        let body = new_user_page(&st, &admin, &csrf, &f, errors);
        with_cookie(page(status, body, admin.login()), set)
    };
    let Some((login, profile)) = checked.filter(|_| errors.is_empty()) else {
        return again(&errors, StatusCode::BAD_REQUEST);
    };
    match create_op(&st, login, profile, password, true, admin.actor()).await {
        Ok(r) => back_to(&st, &r.id, "created"),
        Err(UserOpError::Unavailable(e)) => unavailable(&st, &e),
        Err(e) => again(&[e.to_string()], StatusCode::CONFLICT),
    }
}
