//! The console's pages (GET): the users list with search, a user's detail,
//! the recent events from the audit log with filters, and the form for a
//! new API user. Each page checks access first ([`super::admit`]) and mints
//! the CSRF token its forms carry.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use minijinja::context;
use minijinja::value::Value;
use serde::Deserialize;

use super::{BASE, ConsoleAdmin, admit, no_such_user, page, unavailable, user_path, with_cookie};
use crate::admin::users::{Source, Subject, UserOpError, every_user, find_subject, source_of};
use crate::factors;
use crate::pages::render;
use crate::portal::csrf_token;
use crate::state::AppState;
use crate::store::{AuditCursor, AuditQuery, AuditRecord};

/// Users shown on one page of the list, at most.
pub const MAX_USERS_SHOWN: usize = 200;
/// Events shown on one page of the events list.
pub const EVENTS_SHOWN: usize = 50;
/// Events read from the store per batch while filtering.
const EVENTS_BATCH: u32 = 200;
/// Batches read at most for one page of events (then "older" goes on).
const EVENTS_BATCHES: usize = 5;
/// The longest search text accepted (longer is cut).
const MAX_SEARCH: usize = 100;

/// What every console page gets: the administrator, the CSRF token, which
/// tab is current, and the step-up state.
fn frame(st: &AppState, admin: &ConsoleAdmin, csrf: &str, tab: &str) -> Value {
    let max_age = st.config.admin.console_max_age.as_secs();
    context! {
        admin => admin.login(),
        csrf,
        tab,
        console => format!("{}{BASE}", st.config.portal.prefix),
        console_css => format!("{}{}", st.config.portal.prefix, super::STYLESHEET),
        fresh => admin.fresh(st),
        max_age_minutes => max_age.div_ceil(60),
    }
}

fn source_label(s: Source) -> &'static str {
    match s {
        Source::File => "users file",
        Source::Api => "API",
        Source::Directory => "directory",
    }
}

fn status_of(s: &Subject) -> &'static str {
    match s {
        Subject::File(_) => "ACTIVE",
        Subject::Stored(r) => r.status.as_str(),
    }
}

fn cut(s: &str) -> String {
    s.trim().chars().take(MAX_SEARCH).collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UsersQuery {
    q: String,
    /// Set after a removal.
    deleted: String,
}

/// `GET {prefix}/console/`: the users, searched by login, name or e-mail.
pub async fn users(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<UsersQuery>,
) -> Response {
    let admin = match admit(&st, &headers, "/console/") {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let all = match every_user(&st).await {
        Ok(v) => v,
        Err(e) => return unavailable(&st, &e),
    };
    let text = cut(&q.q);
    let needle = text.to_lowercase();
    let mut found: Vec<&Subject> = all
        .iter()
        .filter(|s| {
            if needle.is_empty() {
                return true;
            }
            let u = s.user();
            [
                Some(u.username.as_str()),
                u.display_name.as_deref(),
                u.email.as_deref(),
            ]
            .into_iter()
            .flatten()
            .any(|v| v.to_lowercase().contains(&needle))
        })
        .collect();
    found.sort_by_key(|s| s.login().to_lowercase());
    let total = found.len();
    let rows: Vec<Value> = found
        .iter()
        .take(MAX_USERS_SHOWN)
        .map(|s| {
            let u = s.user();
            context! {
                href => format!("{}{}", st.config.portal.prefix, user_path(s.id())),
                login => s.login(),
                name => u.display_name,
                email => u.email,
                source => source_label(source_of(s)),
                status => status_of(s),
            }
        })
        .collect();
    let (csrf, set) = csrf_token(&st, &headers);
    let body = render(
        "console/users.html",
        &st.config.portal.prefix,
        context! {
            q => text,
            deleted => !q.deleted.is_empty(),
            rows,
            total,
            shown => total.min(MAX_USERS_SHOWN),
            ..frame(&st, &admin, &csrf, "users")
        },
    );
    with_cookie(page(StatusCode::OK, body, admin.login()), set)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UserQuery {
    /// What was just done (a fixed key, shown as a fixed sentence).
    done: String,
}

/// The sentence shown after an action (never the caller's text).
fn done_notice(key: &str) -> Option<&'static str> {
    Some(match key {
        "reset" => "The factor was removed and the user's sessions ended.",
        "reset-all" => {
            "Every factor was removed and the user's sessions ended. The user enrolls again at the next sign-in."
        }
        "unlocked" => "The lockout was lifted.",
        "not-locked" => "The user was not locked out.",
        "revoked" => "Every session of the user ended.",
        "created" => "The user was created.",
        _ => return None,
    })
}

/// A time for people: `2026-01-02 03:04:05` (UTC; the tables say so).
pub fn shown_time(ms: i64) -> String {
    let t = crate::audit::rfc3339_ms(ms);
    format!("{} {}", &t[..10], &t[11..19])
}

/// An audit event as a table row.
fn event_row(st: &AppState, e: &AuditRecord) -> Value {
    let b = &e.body;
    let actor = b["actor"]["displayName"]
        .as_str()
        .or_else(|| b["actor"]["alternateId"].as_str())
        .unwrap_or_default();
    let targets: Vec<Value> = b["target"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    let is_user = t["type"] == "User";
                    context! {
                        name => t["alternateId"].as_str().or_else(|| t["displayName"].as_str()).unwrap_or_default(),
                        href => is_user.then(|| {
                            format!("{}{}", st.config.portal.prefix, user_path(t["id"].as_str().unwrap_or_default()))
                        }),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let result = b["outcome"]["result"].as_str().unwrap_or_default();
    context! {
        time => shown_time(e.published_ms),
        message => b["displayMessage"].as_str().unwrap_or_default(),
        event_type => b["eventType"].as_str().unwrap_or_default(),
        result,
        badge => match result { "SUCCESS" => "ok", "FAILURE" => "bad", _ => "warn" },
        reason => b["outcome"]["reason"].as_str(),
        actor,
        targets,
        client => b["client"]["ipAddress"].as_str(),
    }
}

/// True when the event is about `login` (as actor or target), exactly.
fn about(e: &AuditRecord, login: &str) -> bool {
    let b = &e.body;
    b["actor"]["alternateId"].as_str() == Some(login)
        || b["target"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["alternateId"].as_str() == Some(login)))
}

/// Newest events whose search text holds `q` and that `keep`, at most `want`
/// of them, reading at most [`EVENTS_BATCHES`] batches from `after` on.
/// Returns them and the cursor to go on from (`None`: nothing older).
async fn newest_events(
    st: &AppState,
    q: Option<String>,
    since_ms: Option<i64>,
    mut after: Option<AuditCursor>,
    want: usize,
    keep: &(dyn Fn(&AuditRecord) -> bool + Sync),
) -> Result<(Vec<AuditRecord>, Option<AuditCursor>), crate::store::StoreError> {
    let mut out = Vec::new();
    for _ in 0..EVENTS_BATCHES {
        let batch = st
            .store
            .query_audit_events(&AuditQuery {
                since_ms,
                until_ms: None,
                q: q.clone(),
                limit: EVENTS_BATCH,
                after,
                descending: true,
            })
            .await?;
        let full = batch.len() == EVENTS_BATCH as usize;
        for e in batch {
            after = Some(AuditCursor {
                published_ms: e.published_ms,
                seq: e.seq,
            });
            if keep(&e) {
                out.push(e);
                if out.len() == want {
                    return Ok((out, after));
                }
            }
        }
        if !full {
            return Ok((out, None));
        }
    }
    Ok((out, after))
}

/// When a factor was last verified, from the audit log (`None`: not in it).
async fn last_use(st: &AppState, factor_id: &str) -> Result<Option<String>, crate::store::StoreError> {
    let keep = |e: &AuditRecord| {
        e.body["debugContext"]["debugData"]["portcullisEvent"]
            .as_str()
            .is_some_and(|ev| ev.starts_with("factor.verified"))
            && e.body["target"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["id"].as_str() == Some(factor_id)))
    };
    let (found, _) = newest_events(st, Some(factor_id.to_lowercase()), None, None, 1, &keep).await?;
    Ok(found.first().map(|e| shown_time(e.published_ms)))
}

/// `GET {prefix}/console/users/{id}`: one user.
pub async fn user(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<UserQuery>,
) -> Response {
    let admin = match admit(&st, &headers, &user_path(&id)) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let found = if crate::ids::is_user_key(&id) {
        find_subject(&st, &id).await
    } else {
        Err(UserOpError::NotFound)
    };
    let s = match found {
        Ok(s) => s,
        Err(UserOpError::NotFound) => return no_such_user(&st),
        Err(e) => return unavailable(&st, &e),
    };
    match user_page(&st, &headers, &admin, &s, done_notice(&q.done)).await {
        Ok(r) => r,
        Err(e) => unavailable(&st, &e),
    }
}

async fn user_page(
    st: &AppState,
    headers: &HeaderMap,
    admin: &ConsoleAdmin,
    s: &Subject,
    notice: Option<&str>,
) -> Result<Response, crate::store::StoreError> {
    let u = s.user();
    let all = factors::list(st, &u).await?;
    let mut factor_rows = Vec::with_capacity(all.len());
    for f in &all {
        let name = factors::kind_of(&f.record.factor_type).map_or_else(
            || "Authenticator app".to_owned(),
            |k| k.describe(&f.record.profile),
        );
        factor_rows.push(context! {
            id => f.record.id.as_str(),
            name,
            factor_type => f.record.factor_type.as_str(),
            active => f.is_active(),
            read_only => f.from_config,
            enrolled => (!f.from_config).then(|| shown_time(f.record.created.saturating_mul(1000))),
            last_used => last_use(st, &f.record.id).await?,
        });
    }
    let locked_until = st
        .regulator
        .user_locked(s.id())
        .await?
        .map(|t| shown_time(t.saturating_mul(1000)));
    let recovery = st.config.factors.recovery_codes.enabled;
    let codes_left = if recovery {
        Some(st.store.recovery_codes_left(s.id()).await?)
    } else {
        None
    };
    let login = s.login().to_owned();
    let is_sign_in = |e: &AuditRecord| {
        e.body["debugContext"]["debugData"]["portcullisEvent"] == "session.started" && about(e, &login)
    };
    let (sign_ins, _) = newest_events(st, Some(login.to_lowercase()), None, None, 5, &is_sign_in).await?;
    let sign_ins: Vec<Value> = sign_ins.iter().map(|e| event_row(st, e)).collect();
    let is_about = |e: &AuditRecord| about(e, &login);
    let (events, _) = newest_events(st, Some(login.to_lowercase()), None, None, 10, &is_about).await?;
    let events: Vec<Value> = events.iter().map(|e| event_row(st, e)).collect();
    let (csrf, set) = csrf_token(st, headers);
    let source = source_of(s);
    let prefix = &st.config.portal.prefix;
    let body = render(
        "console/user.html",
        prefix,
        context! {
            notice,
            user => context! {
                id => s.id(),
                login => s.login(),
                name => u.display_name,
                email => u.email,
                phone => u.phone,
                groups => u.groups,
                source => source_label(source),
                status => status_of(s),
                api => source == Source::Api,
                has_password => u.password_hash.is_some(),
            },
            action => format!("{prefix}{}", user_path(s.id())),
            factors => factor_rows,
            removable => all.iter().any(|f| !f.from_config),
            locked_until,
            recovery,
            codes_left,
            sign_ins,
            events,
            events_href => format!("{prefix}{BASE}/events?q={}", crate::portal::enc(s.login())),
            ..frame(st, admin, &csrf, "users")
        },
    );
    Ok(with_cookie(page(StatusCode::OK, body, admin.login()), set))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EventsQuery {
    /// Text in the actor, targets, event type or message.
    q: String,
    /// `signin`, `factor`, `lockout`, `admin` or empty (all).
    kind: String,
    /// `SUCCESS`, `FAILURE`, `DENY` or empty (all).
    result: String,
    /// `1h`, `24h`, `7d`, `30d` or empty (all kept).
    period: String,
    /// The cursor of the "older" link.
    before: String,
}

/// The kinds of events the filter offers: key, label.
const KINDS: &[(&str, &str)] = &[
    ("", "All events"),
    ("signin", "Sign-ins and sessions"),
    ("factor", "Factors"),
    ("lockout", "Lockouts"),
    ("admin", "Administrator actions"),
];
const RESULTS: &[(&str, &str)] = &[
    ("", "Any result"),
    ("SUCCESS", "Success"),
    ("FAILURE", "Failure"),
    ("DENY", "Denied"),
];
const PERIODS: &[(&str, &str, i64)] = &[
    ("", "Any time", 0),
    ("1h", "Last hour", 3_600_000),
    ("24h", "Last 24 hours", 86_400_000),
    ("7d", "Last 7 days", 7 * 86_400_000),
    ("30d", "Last 30 days", 30 * 86_400_000),
];

/// True when the event is of the kind `kind` (see [`KINDS`]).
pub fn of_kind(e: &AuditRecord, kind: &str) -> bool {
    let t = e.event_type.as_str();
    let b = &e.body;
    match kind {
        "signin" => t.starts_with("user.authentication.") || t.starts_with("user.session."),
        "factor" => t.starts_with("user.mfa.") || t.contains(".factor.") || t.contains("recovery_codes"),
        "lockout" => t.starts_with("user.account.lock") || t.starts_with("user.account.unlock"),
        "admin" => {
            b["actor"]["type"] == "ApiToken"
                || b["actor"]["alternateId"] == "cli"
                || (b["actor"]["type"] == "User"
                    && b["target"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|t| t["type"] == "User")))
                || b["debugContext"]["debugData"]["portcullisEvent"]
                    .as_str()
                    .is_some_and(|ev| ev.starts_with("admin.") || ev.starts_with("console."))
        }
        _ => true,
    }
}

fn encode_cursor(c: AuditCursor) -> String {
    format!("{}.{}", c.published_ms, c.seq)
}

fn decode_cursor(s: &str) -> Option<AuditCursor> {
    let (ms, seq) = s.split_once('.')?;
    Some(AuditCursor {
        published_ms: ms.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

fn options(list: &[(&str, &str)], chosen: &str) -> Vec<Value> {
    list.iter()
        .map(|&(value, label)| context! { value, label, selected => value == chosen })
        .collect()
}

/// `GET {prefix}/console/events`: recent audit events, newest first.
pub async fn events(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    let admin = match admit(&st, &headers, "/console/events") {
        Ok(a) => a,
        Err(r) => return *r,
    };
    // Unknown filter values count as "all" (a hand-edited link, not an error).
    let kind = KINDS.iter().find(|k| k.0 == q.kind).map_or("", |k| k.0);
    let result = RESULTS.iter().find(|r| r.0 == q.result).map_or("", |r| r.0);
    let period = PERIODS
        .iter()
        .find(|p| p.0 == q.period)
        .copied()
        .unwrap_or(PERIODS[0]);
    let text = cut(&q.q);
    let since_ms = (period.2 > 0).then(|| crate::audit::now_ms() - period.2);
    let after = decode_cursor(&q.before);
    let keep =
        |e: &AuditRecord| of_kind(e, kind) && (result.is_empty() || e.body["outcome"]["result"] == result);
    let search = (!text.is_empty()).then(|| text.to_lowercase());
    let (found, next) = match newest_events(&st, search, since_ms, after, EVENTS_SHOWN, &keep).await {
        Ok(x) => x,
        Err(e) => return unavailable(&st, &e),
    };
    let rows: Vec<Value> = found.iter().map(|e| event_row(&st, e)).collect();
    let older = next.map(|c| {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("q", text.as_str()),
            ("kind", kind),
            ("result", result),
            ("period", period.0),
        ] {
            if !v.is_empty() {
                ser.append_pair(k, v);
            }
        }
        ser.append_pair("before", &encode_cursor(c));
        format!("{}{BASE}/events?{}", st.config.portal.prefix, ser.finish())
    });
    let period_options: Vec<(&str, &str)> = PERIODS.iter().map(|p| (p.0, p.1)).collect();
    let (csrf, set) = csrf_token(&st, &headers);
    let body = render(
        "console/events.html",
        &st.config.portal.prefix,
        context! {
            q => text,
            kinds => options(KINDS, kind),
            results => options(RESULTS, result),
            periods => options(&period_options, period.0),
            rows,
            older,
            paged => after.is_some(),
            ..frame(&st, &admin, &csrf, "events")
        },
    );
    with_cookie(page(StatusCode::OK, body, admin.login()), set)
}

/// `GET {prefix}/console/new-user`: the form for a new API user.
pub async fn new_user(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let admin = match admit(&st, &headers, "/console/new-user") {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let (csrf, set) = csrf_token(&st, &headers);
    let body = new_user_page(&st, &admin, &csrf, &NewUserForm::default(), &[]);
    with_cookie(page(StatusCode::OK, body, admin.login()), set)
}

/// What the new-user form holds (the password is never shown again).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NewUserForm {
    pub csrf: String,
    pub login: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    /// Comma-separated.
    pub groups: String,
    pub password: String,
}

/// The new-user form, with the values given and what was wrong with them.
pub(crate) fn new_user_page(
    st: &AppState,
    admin: &ConsoleAdmin,
    csrf: &str,
    f: &NewUserForm,
    errors: &[String],
) -> String {
    render(
        "console/new_user.html",
        &st.config.portal.prefix,
        context! {
            form => context! {
                login => f.login.as_str(),
                email => f.email.as_str(),
                first_name => f.first_name.as_str(),
                last_name => f.last_name.as_str(),
                groups => f.groups.as_str(),
            },
            errors => errors.to_vec(),
            ..frame(st, admin, csrf, "new-user")
        },
    )
}

/// The page that shows new recovery codes, once.
pub(crate) fn recovery_codes_page(
    st: &AppState,
    admin: &ConsoleAdmin,
    csrf: &str,
    s: &Subject,
    codes: &[String],
) -> String {
    render(
        "console/recovery_codes.html",
        &st.config.portal.prefix,
        context! {
            login => s.login(),
            back => format!("{}{}", st.config.portal.prefix, user_path(s.id())),
            codes => codes.to_vec(),
            ..frame(st, admin, csrf, "users")
        },
    )
}

#[cfg(test)]
pub(super) mod render_tests {
    use super::*;

    /// The frame inputs, for the template tests.
    pub fn frame_for_tests(admin: &str, csrf: &str) -> Value {
        context! {
            admin, csrf, tab => "users", console => "/_p/console", console_css => "/_p/console/static/console.css",
            fresh => false, max_age_minutes => 15,
        }
    }

    #[test]
    fn times_are_shown_plainly() {
        assert_eq!(shown_time(1_767_323_045_678), "2026-01-02 03:04:05");
    }

    #[test]
    fn cursors_round_trip() {
        let c = AuditCursor {
            published_ms: 1_767_225_600_123,
            seq: 7,
        };
        assert_eq!(decode_cursor(&encode_cursor(c)), Some(c));
        assert_eq!(decode_cursor("x.y"), None);
    }
}
