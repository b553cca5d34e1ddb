//! CSRF protection for forms and the self-service API: a double-submit
//! cookie whose value is `<random>.<mac>`, so a value planted by a sibling
//! subdomain (which cannot compute the MAC) is refused; plus an Origin /
//! Sec-Fetch-Site check on every unsafe request, which stops login CSRF even
//! with a token an attacker obtained for themselves.

use http::{HeaderMap, HeaderValue};

use crate::context::RequestContext;
use crate::crypto::{self, KeyRing};
use crate::secret::ct_eq;

/// A fresh token (the cookie value and the form field value), MACed under
/// the first session secret's key.
pub fn new_token(key: &KeyRing) -> String {
    let random = crypto::random_token();
    let mac = crypto::hmac_sha256(key.first(), random.as_bytes());
    format!("{random}.{}", crypto::b64(&mac[..16]))
}

/// True when `token` carries a valid MAC under any session secret's key
/// (a token issued before a secret rotation stays good).
pub fn well_formed(key: &KeyRing, token: &str) -> bool {
    let Some((random, mac)) = token.split_once('.') else {
        return false;
    };
    let Some(mac) = crypto::unb64(mac) else {
        return false;
    };
    key.all()
        .any(|k| ct_eq(&crypto::hmac_sha256(k, random.as_bytes())[..16], &mac))
}

/// True when the submitted token equals the cookie's and both are genuine.
pub fn verify(key: &KeyRing, cookie: Option<&str>, submitted: Option<&str>) -> bool {
    match (cookie, submitted) {
        (Some(c), Some(s)) => well_formed(key, c) && ct_eq(c.as_bytes(), s.as_bytes()),
        _ => false,
    }
}

/// The `Set-Cookie` value for a CSRF token. Not HttpOnly: the self-service
/// API's JavaScript echoes it in `X-CSRF-Token`.
/// Named `__Host-portcullis_csrf` when the session cookie is secure and
/// host-only (see [`crate::config::SessionConfig::csrf_cookie_name`]).
pub fn cookie(cfg: &crate::config::SessionConfig, token: &str) -> HeaderValue {
    let c = cookie::Cookie::build((cfg.csrf_cookie_name(), token))
        .path("/")
        .same_site(cookie::SameSite::Strict)
        .secure(cfg.secure)
        .build();
    crate::session::set_cookie_header(&c)
}

/// The origin (`scheme://host[:port]`, default port omitted) of a URL string.
fn origin_of(s: &str) -> Option<String> {
    let u = url::Url::parse(s).ok()?;
    match u.origin() {
        url::Origin::Tuple(..) => Some(u.origin().ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

/// Cross-site check for an unsafe request: when the browser says where the
/// request comes from (`Origin`, `Sec-Fetch-Site`), it must be this origin,
/// the external URL's, or a trusted one. Requests that say nothing (non-browser
/// clients) pass; browsers always send at least one of the two on a POST.
pub fn same_origin(
    headers: &HeaderMap,
    ctx: &RequestContext,
    external: Option<&url::Url>,
    trusted: &[String],
) -> bool {
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        // The browser vouches for it (scripts cannot set `Sec-Fetch-*`). Its
        // `Origin` may well be `null`: a page served with `Referrer-Policy:
        // no-referrer`, as every portal page is, posts its forms with
        // `Origin: null`, so the Origin check below would refuse our own forms.
        Some("same-origin") => return true,
        Some("none") | None => {}
        Some(_) => {
            // A cross-site fetch is allowed only from a trusted origin.
            let origin = headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok());
            return origin
                .and_then(origin_of)
                .is_some_and(|o| trusted.iter().any(|t| origin_of(t).as_deref() == Some(&o)));
        }
    }
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return true;
    };
    let Some(origin) = origin.to_str().ok().and_then(origin_of) else {
        return false;
    };
    let own = origin_of(&format!("{}://{}", ctx.scheme, ctx.authority));
    own.as_deref() == Some(origin.as_str())
        || external.is_some_and(|e| e.origin().ascii_serialization() == origin)
        || trusted
            .iter()
            .any(|t| origin_of(t).as_deref() == Some(origin.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestContext {
        RequestContext {
            peer_addr: "127.0.0.1:1".parse().unwrap(),
            client_addr: "127.0.0.1".parse().unwrap(),
            scheme: "https",
            authority: crate::context::Authority::new("app.example.com").unwrap(),
            host: "app.example.com".into(),
            upstream: None,
            request_id: crate::context::RequestId::none(),
        }
    }

    fn ring(secrets: &[u8]) -> KeyRing {
        let secrets: Vec<_> = secrets
            .iter()
            .map(|b| crate::secret::Secret::new(vec![*b; 32]))
            .collect();
        KeyRing::derive(&secrets, "csrf")
    }

    #[test]
    fn tokens_verify_only_when_genuine_and_equal() {
        let key = ring(&[1]);
        let t = new_token(&key);
        assert!(verify(&key, Some(&t), Some(&t)));
        assert!(!verify(&key, Some(&t), Some(&new_token(&key))));
        assert!(!verify(&key, None, Some(&t)));
        assert!(
            !verify(&key, Some("abc.def"), Some("abc.def")),
            "a planted token without a valid MAC"
        );
        assert!(!verify(&ring(&[2]), Some(&t), Some(&t)));
    }

    #[test]
    fn a_rotation_keeps_tokens_already_handed_out() {
        let before = new_token(&ring(&[1]));
        // A new secret prepended: new tokens use it, old ones still pass.
        let rotated = ring(&[2, 1]);
        assert!(verify(&rotated, Some(&before), Some(&before)));
        let after = new_token(&rotated);
        assert!(
            verify(&ring(&[2]), Some(&after), Some(&after)),
            "issued under the first"
        );
        assert!(!verify(&ring(&[1]), Some(&after), Some(&after)));
        // The old secret dropped: its tokens end.
        assert!(!verify(&ring(&[2]), Some(&before), Some(&before)));
    }

    #[test]
    fn origin_checks() {
        let mut h = HeaderMap::new();
        assert!(
            same_origin(&h, &ctx(), None, &[]),
            "non-browser clients send neither header"
        );
        h.insert("origin", HeaderValue::from_static("https://app.example.com"));
        assert!(same_origin(&h, &ctx(), None, &[]));
        h.insert("origin", HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h, &ctx(), None, &[]));
        assert!(same_origin(&h, &ctx(), None, &["https://evil.example".into()]));
        h.insert("origin", HeaderValue::from_static("null"));
        assert!(!same_origin(&h, &ctx(), None, &[]));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, &ctx(), None, &[]));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h, &ctx(), None, &[]));
    }

    #[test]
    fn own_forms_post_with_a_null_origin() {
        // What Chromium sends for a form on a `Referrer-Policy: no-referrer` page.
        let mut h = HeaderMap::new();
        h.insert("origin", HeaderValue::from_static("null"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h, &ctx(), None, &[]));
        // Without the browser's word, or from another site, `null` is refused.
        h.remove("sec-fetch-site");
        assert!(!same_origin(&h, &ctx(), None, &[]));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(!same_origin(&h, &ctx(), None, &[]));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, &ctx(), None, &[]));
    }
}
