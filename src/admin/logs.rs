//! `GET /api/v1/logs`: the audit events in the store, shaped like Okta's
//! System Log API (SPEC section 14; the events come from [`crate::audit`]).
//!
//! Query parameters: `since` and `until` (RFC 3339; since inclusive, until
//! exclusive), `q` (case-insensitive substring of the actor, the targets,
//! the event type or the message), `limit` (1 to 1000, default 100),
//! `sortOrder` (`ASCENDING`, the default, or `DESCENDING`) and `after` (the
//! opaque cursor of a `Link: <...>; rel="next"` header). A bad value is 400
//! `E0000001` naming the parameter.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;

use super::Admin;
use crate::api::{json, unavailable, validation};
use crate::audit::parse_rfc3339_ms;
use crate::state::AppState;
use crate::store::{AuditCursor, AuditQuery};

/// Events in one page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit`.
pub const MAX_LIMIT: u32 = 1000;
/// The longest `q` accepted.
const MAX_Q: usize = 256;

/// The query string as given.
#[derive(Debug, Default, Deserialize)]
pub struct LogsQuery {
    since: Option<String>,
    until: Option<String>,
    q: Option<String>,
    limit: Option<String>,
    #[serde(rename = "sortOrder")]
    sort_order: Option<String>,
    after: Option<String>,
}

/// The opaque cursor: the last event's time and sequence number.
fn encode_cursor(c: AuditCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", c.published_ms, c.seq))
}

fn decode_cursor(s: &str) -> Option<AuditCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (ms, seq) = text.split_once('.')?;
    Some(AuditCursor {
        published_ms: ms.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

/// Checks the parameters; the store query, or the cause of the 400 answer
/// (naming the parameter).
fn parse(q: &LogsQuery) -> Result<AuditQuery, String> {
    let time = |name: &str, v: &Option<String>| match v.as_deref() {
        None => Ok(None),
        Some(s) => parse_rfc3339_ms(s)
            .map(Some)
            .ok_or_else(|| format!("{name}: not an RFC 3339 time")),
    };
    let since_ms = time("since", &q.since)?;
    let until_ms = time("until", &q.until)?;
    if let (Some(s), Some(u)) = (since_ms, until_ms)
        && s > u
    {
        return Err("until: before since".into());
    }
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(format!("limit: must be a number from 1 to {MAX_LIMIT}"));
            }
        },
    };
    let descending = match q.sort_order.as_deref() {
        None | Some("ASCENDING") => false,
        Some("DESCENDING") => true,
        Some(_) => return Err("sortOrder: must be ASCENDING or DESCENDING".into()),
    };
    let text = match q.q.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) if s.chars().count() > MAX_Q => {
            return Err(format!("q: at most {MAX_Q} characters"));
        }
        Some(s) => Some(s.to_lowercase()),
    };
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(s) => Some(decode_cursor(s).ok_or("after: not a cursor from a Link header")?),
    };
    Ok(AuditQuery {
        since_ms,
        until_ms,
        q: text,
        limit,
        after,
        descending,
    })
}

/// The query string of a link: the given filters, and `after` if any.
fn link_query(q: &LogsQuery, limit: u32, after: Option<&str>) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("since", &q.since),
        ("until", &q.until),
        ("q", &q.q),
        ("sortOrder", &q.sort_order),
    ] {
        if let Some(v) = v {
            ser.append_pair(k, v);
        }
    }
    ser.append_pair("limit", &limit.to_string());
    if let Some(a) = after {
        ser.append_pair("after", a);
    }
    ser.finish()
}

/// `GET /api/v1/logs`.
pub async fn list(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return validation("query: malformed query string");
    };
    let mut aq = match parse(&q) {
        Ok(aq) => aq,
        Err(cause) => return validation(cause),
    };
    let limit = aq.limit;
    // One more than asked tells whether there is a next page.
    aq.limit = limit + 1;
    let mut events = match st.store.query_audit_events(&aq).await {
        Ok(v) => v,
        Err(e) => return unavailable(e),
    };
    let more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let base = format!("{}/api/v1/logs", admin.origin);
    let mut res = json(
        StatusCode::OK,
        &Value::Array(events.iter().map(|e| e.body.clone()).collect()),
    );
    let h = res.headers_mut();
    let self_link = format!(
        "<{base}?{}>; rel=\"self\"",
        link_query(&q, limit, q.after.as_deref())
    );
    if let Ok(v) = HeaderValue::from_str(&self_link) {
        h.append(header::LINK, v);
    }
    if more && let Some(last) = events.last() {
        let cursor = encode_cursor(AuditCursor {
            published_ms: last.published_ms,
            seq: last.seq,
        });
        let next = format!("<{base}?{}>; rel=\"next\"", link_query(&q, limit, Some(&cursor)));
        if let Ok(v) = HeaderValue::from_str(&next) {
            h.append(header::LINK, v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> LogsQuery {
        let text = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let uri: http::Uri = format!("/api/v1/logs?{text}").parse().unwrap();
        Query::<LogsQuery>::try_from_uri(&uri).unwrap().0
    }

    #[test]
    fn parameters_are_checked_and_named() {
        let ok = parse(&q(&[
            ("since", "2026-01-01T00:00:00Z"),
            ("until", "2026-01-02T00:00:00.500+00:00"),
            ("q", " Alice "),
            ("limit", "5"),
            ("sortOrder", "DESCENDING"),
        ]))
        .unwrap();
        assert_eq!(ok.since_ms, Some(1_767_225_600_000));
        assert_eq!(ok.until_ms, Some(1_767_312_000_500));
        assert_eq!(ok.q.as_deref(), Some("alice"));
        assert_eq!(ok.limit, 5);
        assert!(ok.descending);
        assert_eq!(parse(&q(&[])).unwrap().limit, DEFAULT_LIMIT);
        for (k, v) in [
            ("since", "yesterday"),
            ("until", "2026-13-01T00:00:00Z"),
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "ten"),
            ("sortOrder", "UP"),
            ("after", "!!"),
        ] {
            assert!(parse(&q(&[(k, v)])).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn cursors_round_trip() {
        let c = AuditCursor {
            published_ms: 1_767_225_600_123,
            seq: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(c)), Some(c));
        assert_eq!(decode_cursor("bm9wZQ"), None);
    }
}
