//! The page a browser gets when a rule refuses it (403): what happened, a way
//! back to the application, and a sign-out button (a POST with a CSRF token,
//! so the page can be left for another account).

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use minijinja::context;

use super::{Enforcer, SessionState};
use crate::config::SessionConfig;

/// What the denied page needs to offer sign-out.
#[derive(Clone)]
pub struct SignOut {
    /// The portal's CSRF key.
    pub csrf_key: crate::crypto::KeyRing,
    /// The session settings (the CSRF cookie's name and flags).
    pub session: SessionConfig,
    /// The portal's branding.
    pub brand: std::sync::Arc<crate::pages::Branding>,
}

impl std::fmt::Debug for SignOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignOut").finish_non_exhaustive()
    }
}

/// The access-denied page for a browser that asked for `path` (already
/// normalized). The way back is the application's root, or the user's
/// account page when the root itself is what was refused.
pub(crate) fn denied_page(e: &Enforcer, headers: &HeaderMap, path: &str) -> Response<Body> {
    let back = if path == "/" {
        format!("{}/", e.prefix)
    } else {
        "/".to_owned()
    };
    let signed_in = matches!(e.session(headers), SessionState::Valid(_));
    let (token, set) = match &e.sign_out {
        Some(so) => {
            let name = so.session.csrf_cookie_name();
            match crate::session::find_cookie(headers, &name)
                .filter(|t| crate::portal::csrf::well_formed(&so.csrf_key, t))
            {
                Some(t) => (t.to_owned(), None),
                None => {
                    let t = crate::portal::csrf::new_token(&so.csrf_key);
                    let c = crate::portal::csrf::cookie(&so.session, &t);
                    (t, Some(c))
                }
            }
        }
        None => (String::new(), None),
    };
    let brand = e.sign_out.as_ref().map(|s| s.brand.clone()).unwrap_or_default();
    let logo_origin = brand.logo_origin();
    let body = crate::pages::sync_scope(brand, accept_language(headers), || {
        crate::pages::render(
            "denied.html",
            &e.prefix,
            context! { back, csrf => token, signed_in => signed_in && e.sign_out.is_some() },
        )
    });
    let mut res = super::html_status_body(StatusCode::FORBIDDEN, body);
    crate::pages::security_headers_with_logo(res.headers_mut(), logo_origin.as_deref());
    if let Some(c) = set {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

/// The request's `Accept-Language`, if readable.
pub fn accept_language(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v: &HeaderValue| v.to_str().ok())
}
