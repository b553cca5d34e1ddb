//! Forward-auth (SPEC section 11): Portcullis as the auth service of a front
//! proxy that forwards to the apps itself (nginx `auth_request`, ingress-nginx
//! `auth-url`, Caddy `forward_auth`, Traefik `forwardAuth`, HAProxy).
//!
//! The front proxy asks about each request with the original method and URL
//! in headers; the answer is 200 (with fresh identity headers for the proxy to
//! copy onto the request), a challenge, or 403. The decision is the inline
//! one, through the same code: the original path goes through
//! [`normalize`](crate::policy::normalize::normalize) and
//! [`Enforcer::decide`] (the strictest reading of every rule, the session
//! cookie with its lifetime, idle time and revocation, levels, groups,
//! `max_age`), and the outcome is logged and counted as an inline request's.
//! One difference follows from who forwards: inline sends the app the normal
//! form it decided on, while the front proxy sends the path as the client
//! wrote it. So the decision here also covers that path as written
//! (`sent` in [`Enforcer::decide`]), and dot segments, which an app may or may
//! not resolve, are refused.
//!
//! Invariants: only peers in `server.trusted_proxies` are answered (others get
//! 403 and an audit event), since whoever calls these endpoints chooses the
//! URL being asked about; an original URL that is missing, unparsable, doubled
//! or hostile answers 400, never 200; the request body is never read.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::response::IntoResponse;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use ipnet::IpNet;

use crate::context::RequestContext;
use crate::context::canonical;
use crate::enforce::{
    AccessInfo, Enforcer, SessionState, api_challenge, challenge_cause, is_browser, passed, portal_location,
    redirect,
};
use crate::error::{ApiError, ErrorCode};
use crate::policy::normalize::{PathError, has_dot_segment, normalize};
use crate::policy::{Decision, Readings, RequestFacts};

/// Path of the nginx / ingress-nginx endpoint, under the portal prefix.
pub const AUTH_REQUEST_PATH: &str = "/authz/auth-request";
/// Path of the Traefik / Caddy / HAProxy endpoint, under the portal prefix.
pub const FORWARD_AUTH_PATH: &str = "/authz/forward-auth";

/// Which protocol a call speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `X-Original-Method` + `X-Original-URL`; a challenge is a 401 with `Location`.
    AuthRequest,
    /// `X-Forwarded-Method/-Proto/-Host/-Uri`; a challenge is a 302 or 401 JSON.
    ForwardAuth,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::AuthRequest => "auth-request",
            Endpoint::ForwardAuth => "forward-auth",
        }
    }
}

/// The forward-auth endpoints; built only when `forward_auth.enabled`.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    enforcer: Arc<Enforcer>,
    trusted_proxies: Vec<IpNet>,
    auth_request: String,
    forward_auth: String,
    /// `server.external_url`'s origin: where the portal is when it is set
    /// (a separate sign-in host); else the app's own host serves it.
    portal_origin: Option<String>,
}

/// Why an original request could not be read (audited, answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadOriginal {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{0} is sent more than once")]
    Repeated(&'static str),
    #[error("{0} is not a valid value")]
    Invalid(&'static str),
}

/// The request the front proxy asks about, borrowed from the call's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original<'h> {
    pub method: Method,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The authority as sent (host and optional port).
    pub authority: &'h str,
    /// Lower-cased host without port or trailing dot.
    pub host: Cow<'h, str>,
    /// The raw path (not yet normalized).
    pub path: &'h str,
    /// The raw query, if any.
    pub query: Option<&'h str>,
}

impl ForwardAuth {
    /// The endpoints, or `None` while `forward_auth.enabled` is false (they
    /// then fall through to the portal, which answers 404).
    pub fn new(enforcer: Arc<Enforcer>, config: &crate::config::Config) -> Option<Self> {
        if !config.forward_auth.enabled {
            return None;
        }
        let prefix = &config.portal.prefix;
        Some(Self {
            enforcer,
            trusted_proxies: config.server.trusted_proxies.clone(),
            auth_request: format!("{prefix}{AUTH_REQUEST_PATH}"),
            forward_auth: format!("{prefix}{FORWARD_AUTH_PATH}"),
            portal_origin: config
                .server
                .external_url
                .as_ref()
                .map(|u| u.origin().ascii_serialization()),
        })
    }

    /// The same endpoints deciding with `enforcer` (a serving thread's own
    /// copy, [`Enforcer::for_thread`]).
    pub fn with_enforcer(&self, enforcer: Arc<Enforcer>) -> Self {
        Self {
            enforcer,
            ..self.clone()
        }
    }

    /// The endpoint a (normalized) request path names, if any.
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        if path == self.auth_request {
            Some(Endpoint::AuthRequest)
        } else if path == self.forward_auth {
            Some(Endpoint::ForwardAuth)
        } else {
            None
        }
    }

    /// Answers a call. `ctx` is the gateway's view of the call itself (its
    /// TCP peer and, through `trusted_proxies`, the client's address).
    pub fn answer<B>(
        &self,
        endpoint: Endpoint,
        req: &Request<B>,
        ctx: &RequestContext,
    ) -> (Response<Body>, AccessInfo) {
        let peer = canonical(ctx.peer_addr.ip());
        if !self.trusted_proxies.iter().any(|n| n.contains(&peer)) {
            crate::audit!(
                "forward_auth.untrusted_peer",
                peer = %peer,
                endpoint = endpoint.name(),
                request_id = %ctx.request_id,
            );
            return passed(
                ApiError::new(ErrorCode::E0000006)
                    .cause("forward-auth answers only server.trusted_proxies")
                    .into_response(),
                "untrusted",
                None,
            );
        }
        let headers = req.headers();
        let original = match endpoint {
            Endpoint::AuthRequest => original_url(headers),
            Endpoint::ForwardAuth => forwarded(headers),
        };
        let original = match original {
            Ok(o) => o,
            Err(reason) => {
                crate::audit!(
                    "forward_auth.bad_request",
                    reason = %reason,
                    client = %ctx.client_addr,
                    endpoint = endpoint.name(),
                    request_id = %ctx.request_id,
                );
                return invalid(&reason.to_string());
            }
        };
        // The inline normalizer: the same refusals (encoded `/`, double
        // encoding, `..;`, overlong UTF-8, ...) and the same canonical path.
        // Dot segments as well: inline resolves them and forwards the result,
        // but the front proxy forwards the path as sent, where an app that
        // does not resolve them would read `/admin/../public/x` as `/admin/`.
        // Then what an app may read besides (other methods, a Destination),
        // as inline.
        let checked = normalize(original.path)
            .and_then(|p| {
                if has_dot_segment(original.path) {
                    Err(PathError::DotSegment)
                } else {
                    Ok(p)
                }
            })
            .and_then(|p| {
                Ok((
                    p,
                    Readings::of(&original.method, original.query, headers, &original.host)?,
                ))
            });
        let (path, readings) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                crate::audit!(
                    "request.path_refused",
                    reason = %e,
                    client = %ctx.client_addr,
                    endpoint = endpoint.name(),
                    request_id = %ctx.request_id,
                );
                return invalid(&format!("invalid path: {e}"));
            }
        };
        let facts = RequestFacts {
            host: &original.host,
            path: &path,
            method: &original.method,
            client_addr: ctx.client_addr,
        };
        let e = &*self.enforcer;
        let now = e.clock.now();
        // The app gets `original.path`, not `path`: decided on both.
        let decided = e.decide(&facts, &readings, Some(original.path), headers, now);
        let Ok((decision, state)) = decided else {
            return passed(
                ApiError::new(ErrorCode::E0000009).into_response(),
                "unavailable",
                None,
            );
        };
        let user = match &state {
            SessionState::Valid(s) => Some(crate::enforce::LoggedUser::User(s.user.clone())),
            _ => None,
        };
        match decision {
            Decision::Bypass => passed(ok(), "bypass", None),
            Decision::Allow => {
                let SessionState::Valid(session) = &state else {
                    // `decide` allows only with a valid session: fail closed.
                    return passed(ApiError::new(ErrorCode::E0000009).into_response(), "error", None);
                };
                let mut res = ok();
                // Fresh from the session's user, never from the call's headers.
                crate::proxy::headers::set_identity(
                    res.headers_mut(),
                    &e.identity,
                    &Enforcer::principal(session),
                );
                // The sliding idle timeout: the recipes hand this to the browser.
                if let Some(cookie) = e.refreshed_cookie(session, now) {
                    res.headers_mut().append(header::SET_COOKIE, cookie);
                }
                passed(res, "allow", user)
            }
            Decision::Deny | Decision::Forbidden => {
                let res = if is_browser(headers) {
                    crate::enforce::denied::denied_page(e, headers, &path)
                } else {
                    ApiError::new(ErrorCode::E0000006).into_response()
                };
                let label = if decision == Decision::Deny {
                    "deny"
                } else {
                    "forbidden"
                };
                passed(res, label, user)
            }
            Decision::Challenge { level, step_up } => {
                let signed_in = matches!(state, SessionState::Valid(_));
                let cause = challenge_cause(signed_in, level, step_up);
                // Back to the URL as the client asked for it: the front proxy
                // forwards the raw path, not the normal form decided on.
                let raw = original.path;
                let target = match &original.query {
                    Some(q) => format!("{}://{}{raw}?{q}", original.scheme, original.authority),
                    None => format!("{}://{}{raw}", original.scheme, original.authority),
                };
                let base = self
                    .portal_origin
                    .clone()
                    .unwrap_or_else(|| format!("{}://{}", original.scheme, original.authority));
                let location = portal_location(&base, &e.prefix, &target, signed_in);
                let mut res = match endpoint {
                    // nginx turns it into a redirect (`error_page 401 =302
                    // $auth_location`) for browsers and API clients alike.
                    Endpoint::AuthRequest => {
                        let mut res = api_challenge(&e.prefix, cause);
                        if let Ok(v) = HeaderValue::from_str(&location) {
                            res.headers_mut().insert(header::LOCATION, v);
                        }
                        res
                    }
                    Endpoint::ForwardAuth if is_browser(headers) => {
                        let status = if original.method == Method::GET || original.method == Method::HEAD {
                            StatusCode::FOUND
                        } else {
                            StatusCode::SEE_OTHER
                        };
                        redirect(status, &location)
                    }
                    Endpoint::ForwardAuth => api_challenge(&e.prefix, cause),
                };
                if matches!(state, SessionState::Invalid(_)) {
                    res.headers_mut()
                        .append(header::SET_COOKIE, e.sessions.clear_cookie());
                }
                passed(res, "challenge", user)
            }
        }
    }
}

fn ok() -> Response<Body> {
    let mut res = Response::new(Body::empty());
    // Room for what an allowed check carries (Cache-Control, four identity
    // headers, a refreshed cookie, the request id) without growing twice.
    *res.headers_mut() = http::HeaderMap::with_capacity(8);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn invalid(cause: &str) -> (Response<Body>, AccessInfo) {
    passed(
        ApiError::new(ErrorCode::E0000001).cause(cause).into_response(),
        "invalid",
        None,
    )
}

/// The one value of `name`, as UTF-8 (nginx passes raw bytes of the request
/// line, so non-ASCII is possible; the normalizer encodes it).
fn single<'h>(headers: &'h HeaderMap, header: &'static HeaderName) -> Result<&'h str, BadOriginal> {
    let name = header.as_str();
    let mut values = headers.get_all(header).iter();
    let value = values.next().ok_or(BadOriginal::Missing(name))?;
    if values.next().is_some() {
        return Err(BadOriginal::Repeated(name));
    }
    let text = std::str::from_utf8(value.as_bytes()).map_err(|_| BadOriginal::Invalid(name))?;
    if text.is_empty() {
        return Err(BadOriginal::Missing(name));
    }
    Ok(text)
}

fn method(headers: &HeaderMap, header: &'static HeaderName) -> Result<Method, BadOriginal> {
    Method::from_bytes(single(headers, header)?.as_bytes())
        .ok()
        .filter(crate::context::is_canonical_method)
        .ok_or(BadOriginal::Invalid(header.as_str()))
}

fn scheme(text: &str) -> Option<&'static str> {
    if text.eq_ignore_ascii_case("https") {
        Some("https")
    } else if text.eq_ignore_ascii_case("http") {
        Some("http")
    } else {
        None
    }
}

/// The authority and its host as the inline gateway reads `Host`: no
/// userinfo, no list, a non-empty host.
fn authority(text: &str) -> Option<(&str, Cow<'_, str>)> {
    // An empty port (`host:`) is legal but never sent by a front proxy: it
    // is how `http://hosthttp://evil/x` would smuggle a second URL in. A
    // plain authority is one the `http` crate parses, with this host (see
    // `context::plain_host`); no userinfo, so the host opens it.
    let host = text.get(..crate::context::plain_host(text.as_bytes())?.len())?;
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    Some((text, host))
}

/// An origin-form target: `/` first, no fragment, characters a request line
/// may carry. Returns the raw path and query.
fn target(text: &str) -> Option<(&str, Option<&str>)> {
    if !text.starts_with('/') || text.contains('#') {
        return None;
    }
    // Parsed to validate the characters; the parts are slices of `text`.
    let _: http::uri::PathAndQuery = text.parse().ok()?;
    Some(match text.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (text, None),
    })
}

/// The original request of an nginx `auth_request` call: `X-Original-Method`
/// and the absolute `X-Original-URL` (`$scheme://$http_host$request_uri`).
pub fn original_url(headers: &HeaderMap) -> Result<Original<'_>, BadOriginal> {
    static METHOD: HeaderName = HeaderName::from_static("x-original-method");
    static URL_HEADER: HeaderName = HeaderName::from_static("x-original-url");
    let url_name = URL_HEADER.as_str();
    let method = method(headers, &METHOD)?;
    let url = single(headers, &URL_HEADER)?;
    let (scheme_text, rest) = url.split_once("://").ok_or(BadOriginal::Invalid(url_name))?;
    let scheme = scheme(scheme_text).ok_or(BadOriginal::Invalid(url_name))?;
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority_text, target_text) = rest.split_at(split);
    let (authority, host) = authority(authority_text).ok_or(BadOriginal::Invalid(url_name))?;
    let (path, query) = target(target_text).ok_or(BadOriginal::Invalid(url_name))?;
    Ok(Original {
        method,
        scheme,
        authority,
        host,
        path,
        query,
    })
}

/// The original request of a Traefik / Caddy / HAProxy call:
/// `X-Forwarded-Method`, `-Proto`, `-Host` and `-Uri`, one value each.
pub fn forwarded(headers: &HeaderMap) -> Result<Original<'_>, BadOriginal> {
    static METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
    static PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    static HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    static URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
    let invalid = |h: &'static HeaderName| BadOriginal::Invalid(h.as_str());
    let method = method(headers, &METHOD)?;
    let scheme = scheme(single(headers, &PROTO)?).ok_or(invalid(&PROTO))?;
    let (authority, host) = authority(single(headers, &HOST)?).ok_or(invalid(&HOST))?;
    let (path, query) = target(single(headers, &URI)?).ok_or(invalid(&URI))?;
    Ok(Original {
        method,
        scheme,
        authority,
        host,
        path,
        query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn reads_an_original_url() {
        let h = map(&[
            ("x-original-method", "POST"),
            ("x-original-url", "HTTPS://App.Example.com.:8443/a/../b%2e?x=1&y"),
        ]);
        let o = original_url(&h).unwrap();
        assert_eq!(o.method, Method::POST);
        assert_eq!(o.scheme, "https");
        assert_eq!(o.authority, "App.Example.com.:8443");
        assert_eq!(o.host, "app.example.com");
        assert_eq!(o.path, "/a/../b%2e");
        assert_eq!(o.query, Some("x=1&y"));
        // Slices of the header where nothing changes; an IPv6 host keeps
        // its brackets, as the inline gateway reads `Host`.
        let h = map(&[
            ("x-original-method", "GET"),
            ("x-original-url", "http://[::1]:8080/x?"),
        ]);
        let o = original_url(&h).unwrap();
        assert_eq!((o.authority, &*o.host), ("[::1]:8080", "[::1]"));
        assert!(matches!(o.host, Cow::Borrowed(_)));
        assert_eq!((o.path, o.query), ("/x", Some("")));
        // A second `?` stays in the query; a trailing dot and upper case
        // come off the host as the inline gateway reads `Host` (a dot after
        // an IPv6 address is no host at all).
        let h = map(&[
            ("x-original-method", "GET"),
            ("x-original-url", "http://[::1].:8080/a"),
        ]);
        assert!(original_url(&h).is_err());
        let h = map(&[
            ("x-original-method", "GET"),
            ("x-original-url", "http://[::1]:8080/a?b?c"),
        ]);
        let o = original_url(&h).unwrap();
        assert_eq!((&*o.host, o.path, o.query), ("[::1]", "/a", Some("b?c")));
        let h = map(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "App.Example.COM.:80"),
            ("x-forwarded-uri", "/a?b?c"),
        ]);
        let o = forwarded(&h).unwrap();
        assert_eq!(
            (o.authority, &*o.host),
            ("App.Example.COM.:80", "app.example.com")
        );
        assert_eq!((o.path, o.query), ("/a", Some("b?c")));
    }

    #[test]
    fn refuses_garbage_original_urls() {
        for bad in [
            "",
            "/relative/only",
            "app.example.com/x",
            "ftp://app.example.com/x",
            "http:///x",
            "http://user@app.example.com/x",
            "http://a.example,b.example/x",
            "http://a.example;b/x",
            "http://a.example:8x/x",
            "http://app.example.com",
            "http://app.example.com?x",
            "http://app.example.com/x#frag",
            "http://app.example.com/x y",
            "http://app.example.comhttp://evil/x",
            "http://[::1/x",
            "javascript:alert(1)",
        ] {
            let h = map(&[("x-original-method", "GET"), ("x-original-url", bad)]);
            assert!(original_url(&h).is_err(), "{bad:?} was accepted");
        }
        // Missing, doubled or unparsable method; two URLs.
        assert!(original_url(&map(&[("x-original-url", "http://a/x")])).is_err());
        for bad in ["G ET", "delete", "Delete", "GET!"] {
            assert!(
                original_url(&map(&[
                    ("x-original-method", bad),
                    ("x-original-url", "http://a/x")
                ]))
                .is_err(),
                "{bad:?} was accepted"
            );
        }
        let two = map(&[
            ("x-original-method", "GET"),
            ("x-original-url", "http://a/public/"),
            ("x-original-url", "http://a/admin"),
        ]);
        assert_eq!(original_url(&two), Err(BadOriginal::Repeated("x-original-url")));
    }

    #[test]
    fn reads_forwarded_headers() {
        let ok = map(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-uri", "/x;jsessionid=1?q"),
        ]);
        let o = forwarded(&ok).unwrap();
        assert_eq!((o.path, o.query), ("/x;jsessionid=1", Some("q")));
        for (name, bad) in [
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "a.example, b.example"),
            ("x-forwarded-host", "evil@a.example"),
            ("x-forwarded-uri", "x"),
            ("x-forwarded-uri", "http://a.example/x"),
            ("x-forwarded-uri", "/x#y"),
        ] {
            let mut h = ok.clone();
            h.insert(name, HeaderValue::from_str(bad).unwrap());
            assert!(forwarded(&h).is_err(), "{name}: {bad:?} was accepted");
            h.remove(name);
            assert_eq!(forwarded(&h), Err(BadOriginal::Missing(name)));
        }
    }
}
