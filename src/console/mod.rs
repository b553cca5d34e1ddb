//! The admin console: `{prefix}/console/` on the main listener, a web page
//! for the helpdesk to find users, see their factors, lockouts, sign-ins and
//! recent events, and to reset factors, end sessions, unlock, create and
//! remove API users and issue new recovery codes.
//!
//! The gateway protects it itself ([`admit`]): a valid session at level 2 of
//! a member of `admin.console_groups` (others get a 403 page). Every change
//! is a form post ([`actions`]) that must pass the portal's CSRF and Origin
//! checks, and needs a second factor at most `admin.console_max_age` old;
//! an older one sends the browser through the portal's step-up challenge
//! (`{prefix}/mfa?fresh=1`) and back to the console page the form was on,
//! a path the server builds (never a caller's value).
//!
//! One implementation: the actions call the operations the admin API calls
//! ([`crate::admin::users`], [`crate::admin::factors`]) with
//! [`Actor::Console`], so each is audited with the administrator as actor.
//! Pages are plain HTML forms (no JavaScript), rendered from
//! `templates/console/` inside the portal layout, and carry the portal's
//! security headers (the portal router adds them).

pub mod actions;
pub mod pages;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::admin::users::Actor;
use crate::enforce::{AccessInfo, ActiveSession, SessionState};
use crate::portal::{Ctx, enc, html, see_other};
use crate::state::AppState;

/// Where the console lives, below the portal prefix.
pub const BASE: &str = "/console";

/// The console's own stylesheet (below the prefix), loaded after the portal's.
pub const STYLESHEET: &str = "/console/static/console.css";

/// The console's routes (paths relative to the portal prefix); the portal
/// router merges them, so its security headers and body limit apply.
pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route(BASE, get(to_index))
        .route("/console/", get(pages::users))
        .route("/console/events", get(pages::events))
        .route("/console/new-user", get(pages::new_user))
        .route("/console/users", post(actions::create_user))
        .route("/console/users/{id}", get(pages::user))
        .route("/console/users/{id}/reset", post(actions::reset))
        .route("/console/users/{id}/unlock", post(actions::unlock))
        .route("/console/users/{id}/revoke", post(actions::revoke))
        .route(
            "/console/users/{id}/recovery-codes",
            post(actions::recovery_codes),
        )
        .route("/console/users/{id}/delete", post(actions::delete))
        .route(STYLESHEET, get(stylesheet))
}

async fn to_index(axum::extract::State(st): axum::extract::State<Arc<AppState>>) -> Response {
    see_other(&format!("{}{BASE}/", st.config.portal.prefix))
}

async fn stylesheet() -> Response {
    let mut res = CSS.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    res
}

/// A signed-in administrator allowed in the console.
#[derive(Debug, Clone)]
pub struct ConsoleAdmin {
    pub session: ActiveSession,
}

impl ConsoleAdmin {
    /// Who acts, for the operations and the audit log.
    pub fn actor(&self) -> Actor {
        Actor::Console(self.session.user.username.clone())
    }

    /// The administrator's login.
    pub fn login(&self) -> &str {
        &self.session.user.username
    }

    /// Seconds since the administrator's second factor (`None`: never).
    pub fn mfa_age(&self, st: &AppState) -> Option<i64> {
        self.session.claims.mfa.map(|t| (st.clock.now() - t).max(0))
    }

    /// True when the second factor is recent enough for a change.
    pub fn fresh(&self, st: &AppState) -> bool {
        let max = i64::try_from(st.config.admin.console_max_age.as_secs()).unwrap_or(i64::MAX);
        self.mfa_age(st).is_some_and(|age| age <= max)
    }
}

/// True when `groups` meets `admin.console_groups` (never when it is empty).
pub fn is_member(st: &AppState, groups: &[String]) -> bool {
    let allowed = &st.config.admin.console_groups;
    groups.iter().any(|g| allowed.iter().any(|a| a == g))
}

/// A console page: the portal's HTML answer, with the access log's user.
pub(crate) fn page(status: StatusCode, body: String, user: &str) -> Response {
    let mut res = html(status, body);
    res.extensions_mut().insert(AccessInfo {
        decision: "console",
        user: Some(user.to_owned().into()),
    });
    res
}

/// The 403 page (not a member, or a refused form).
pub(crate) fn refused(st: &AppState, title: &str, message: &str, user: Option<&str>) -> Response {
    let prefix = &st.config.portal.prefix;
    let body = crate::pages::render(
        "message.html",
        prefix,
        minijinja::context! { title, message, link => format!("{prefix}/"), link_text => "Your account" },
    );
    let mut res = html(StatusCode::FORBIDDEN, body);
    res.extensions_mut().insert(AccessInfo {
        decision: "console",
        user: user.map(|u| u.to_owned().into()),
    });
    res
}

/// The 404 page for a user id that names nobody.
pub(crate) fn no_such_user(st: &AppState) -> Response {
    let prefix = &st.config.portal.prefix;
    html(
        StatusCode::NOT_FOUND,
        crate::pages::render(
            "message.html",
            prefix,
            minijinja::context! {
                title => "No such user",
                message => "There is no user with this id. They may have been removed.",
                link => format!("{prefix}{BASE}/"),
                link_text => "All users",
            },
        ),
    )
}

/// The 503 page (store or revocation view unavailable).
pub(crate) fn unavailable(st: &AppState, what: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %what, "admin console: unavailable");
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        crate::pages::message_page(
            &st.config.portal.prefix,
            "Temporarily unavailable",
            "The gateway cannot reach its store right now. Try again shortly.",
        ),
    )
}

/// Lets an administrator in to a page, or answers as the gateway answers on
/// any protected route: a browser to the sign-in page without a session, or
/// to the second-factor challenge below level 2 (302), another client 401
/// (Okta's `E0000011`); 403 for a non-member. `here` is the path (below the
/// prefix) to come back to.
pub fn admit(st: &AppState, headers: &HeaderMap, here: &str) -> Result<ConsoleAdmin, Box<Response>> {
    admit_as(st, headers, here, StatusCode::FOUND)
}

/// Sends a browser on to the portal's `page` (with its query so far, `?` or
/// `...&`) and back to `here` (a console path below the prefix) afterwards,
/// with `status`; another client gets 401 (`E0000011`) saying `cause`, as on
/// any protected route.
fn send_on(
    st: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    page: &str,
    here: &str,
    cause: &str,
) -> Box<Response> {
    let prefix = &st.config.portal.prefix;
    if !crate::enforce::is_browser(headers) {
        return Box::new(crate::enforce::api_challenge(prefix, cause));
    }
    let back = format!("{prefix}{here}");
    Box::new(crate::enforce::redirect(
        status,
        &format!("{prefix}/{page}rd={}", enc(&back)),
    ))
}

/// [`admit`], sending browsers on with `status` (303 after a form's POST).
fn admit_as(
    st: &AppState,
    headers: &HeaderMap,
    here: &str,
    status: StatusCode,
) -> Result<ConsoleAdmin, Box<Response>> {
    let send_on = |page: &str, cause: &str| send_on(st, headers, status, page, here, cause);
    let s = match st.enforcer.session(headers) {
        SessionState::Valid(s) => s,
        SessionState::Unavailable => {
            return Err(Box::new(unavailable(st, &"the revocation view is stale")));
        }
        SessionState::None | SessionState::Invalid(_) => {
            return Err(send_on("login?", "a session is required"));
        }
    };
    if !is_member(st, &s.user.groups) {
        crate::audit!("console.refused", user = %s.user.username, reason = "not a member of admin.console_groups");
        return Err(Box::new(refused(
            st,
            "Access denied",
            "Your account may not use the admin console. Ask an administrator if you need it.",
            Some(&s.user.username),
        )));
    }
    if s.claims.lvl < 2 {
        // `fresh`: the challenge is shown even though the policy's rule for
        // the portal's own paths would let the session through.
        return Err(send_on("mfa?fresh=1&", "a second factor is required"));
    }
    Ok(ConsoleAdmin { session: s })
}

/// Lets a change through, or answers: a cross-site post or a missing or
/// wrong CSRF token is refused (403) before anything else; then [`admit`];
/// then a second factor older than `admin.console_max_age` sends the
/// browser to step up and come back to `back` (a console path below the
/// prefix, built by the handler).
pub async fn admit_change(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    csrf: &str,
    back: &str,
) -> Result<ConsoleAdmin, Box<Response>> {
    if !crate::portal::form_allowed(st, ctx, headers, csrf) {
        crate::audit!("console.refused", reason = "cross-site post or missing CSRF token", client = %ctx.0.client_addr);
        return Err(Box::new(refused(
            st,
            "Change refused",
            "This form expired or did not come from the console. Reload the page and try again.",
            None,
        )));
    }
    let admin = admit_as(st, headers, back, StatusCode::SEE_OTHER)?;
    if !admin.fresh(st) {
        return Err(send_on(
            st,
            headers,
            StatusCode::SEE_OTHER,
            "mfa?fresh=1&",
            back,
            "a recent second factor is required",
        ));
    }
    // Signed out (or ended by another administrator) on another replica a
    // moment ago: no change in this session's name.
    match st.still_current(&admin.session.claims).await {
        Ok(true) => Ok(admin),
        Ok(false) => Err(send_on(
            st,
            headers,
            StatusCode::SEE_OTHER,
            "login?",
            back,
            "the session has ended",
        )),
        Err(e) => Err(Box::new(unavailable(st, &e))),
    }
}

/// The path of a user's page, below the prefix.
pub fn user_path(id: &str) -> String {
    format!("{BASE}/users/{}", enc(id))
}

/// Sets the CSRF cookie on `res` when the page minted a new token.
pub(crate) fn with_cookie(mut res: Response, set: Option<HeaderValue>) -> Response {
    if let Some(c) = set {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

/// The console's stylesheet: wider pages than the sign-in forms, tables
/// that scroll on a phone, compact inline buttons.
pub const CSS: &str = r#"
body{align-items:flex-start}
main{max-width:72rem;margin:1.5rem 1rem}
nav.console{display:flex;flex-wrap:wrap;gap:.5rem 1.25rem;align-items:center;margin:-.5rem 0 1.25rem;padding-bottom:.75rem;border-bottom:1px solid #e5e7eb;font-size:.95rem}
nav.console .who{margin-left:auto;color:#4b5563}
nav.console a{color:#1d4ed8;text-decoration:none}
nav.console a[aria-current=page]{font-weight:600;color:#111827}
h2{font-size:1.1rem;margin:1.75rem 0 .5rem}
.scroll{overflow-x:auto}
table{margin:.5rem 0 1rem}
th{color:#374151;font-weight:600;white-space:nowrap}
td.actions{white-space:nowrap;text-align:right}
dl.profile{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1rem;margin:0}
dl.profile dt{color:#4b5563}dl.profile dd{margin:0;overflow-wrap:anywhere}
form.search{display:flex;flex-wrap:wrap;gap:.5rem;align-items:flex-end;margin-bottom:.5rem}
form.search label{margin:0 0 .2rem}
form.search .field{flex:1 1 12rem}
form.search button{width:auto;margin:0;padding:.6rem 1.1rem}
form.search select,form.search input{width:100%}
form.inline{display:inline}
.buttons{display:flex;flex-wrap:wrap;gap:.5rem;margin:.5rem 0}
.buttons form button{margin:0;width:auto;padding:.5rem 1rem;font-size:.95rem}
button.danger{background:#b91c1c}
.badge{display:inline-block;padding:.05rem .5rem;border-radius:999px;font-size:.8rem;background:#e5e7eb;color:#111827}
.badge.ok{background:#dcfce7;color:#166534}.badge.warn{background:#fef3c7;color:#92400e}.badge.bad{background:#fee2e2;color:#991b1b}
.notice{background:#eff6ff;color:#1e3a8a;border:1px solid #bfdbfe;padding:.6rem .75rem;border-radius:8px;font-size:.9rem}
.muted{color:#6b7280}
form.create{max-width:28rem}
input[type=email]{width:100%;padding:.6rem .7rem;border:1px solid #d1d5db;border-radius:8px;font-size:1rem}
@media (max-width:40rem){.opt{display:none}main{margin:0;border-radius:0;padding:1.25rem 1rem}nav.console .who{margin-left:0;width:100%}td,th{font-size:.85rem}}
"#;

#[cfg(test)]
mod tests;
