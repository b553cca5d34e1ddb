//! HTML pages of the portal and of the enforcement layer: plain server-rendered forms that work without JavaScript,
//! rendered from the templates in `templates/portal/` (compiled into the
//! binary) through one layout. Every value a template prints is HTML-escaped
//! unless the template marks it otherwise; every page carries the security
//! headers of [`security_headers`].
//!
//! Each page's inputs are listed at the top of its template. Every render
//! gets `prefix` (the portal prefix, so stylesheet, scripts and form actions
//! work under a custom `portal.prefix`, on the portal's own pages and on the
//! ones the enforcement layer answers on application hosts). The visible text
//! lives in the templates, not in Rust, so operator overrides (a loader that
//! looks in a directory first) and message catalogs (a `t()` function over
//! per-language files) plug into [`Templates`] without touching handlers.

use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, header};
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, context};

/// Where the stylesheet is served, relative to the prefix.
pub const STYLESHEET: &str = "/static/portal.css";

/// Where the push polling script is served, relative to the prefix.
pub const PUSH_SCRIPT: &str = "/static/push.js";
/// Where the WebAuthn script is served, relative to the prefix.
pub const WEBAUTHN_SCRIPT: &str = "/static/webauthn.js";

/// Where the recovery codes' copy and download script is served.
pub const CODES_SCRIPT: &str = "/static/codes.js";

/// Where the branding stylesheet (`portal.accent_color`) is served.
pub const BRAND_STYLESHEET: &str = "/static/brand.css";

/// The operator's branding of the portal pages (`[portal]` title, logo and
/// accent colour), in force for the request being answered (see [`scope`]).
#[derive(Debug, Clone, Default)]
pub struct Branding {
    /// `portal.title`.
    pub title: String,
    /// `portal.logo_url`.
    pub logo_url: Option<String>,
    /// `portal.accent_color`.
    pub accent_color: Option<String>,
}

impl Branding {
    /// The branding of a portal configuration.
    pub fn of(p: &crate::config::PortalConfig) -> Self {
        Self {
            title: p.title.clone(),
            logo_url: p.logo_url.clone(),
            accent_color: p.accent_color.clone(),
        }
    }

    /// The logo's origin when it is on another host (for `img-src`).
    pub fn logo_origin(&self) -> Option<String> {
        let u = url::Url::parse(self.logo_url.as_deref()?).ok()?;
        Some(u.origin().ascii_serialization())
    }

    /// The branding stylesheet's text.
    pub fn css(&self) -> String {
        match &self.accent_color {
            Some(c) => format!(":root{{--accent:{c}}}\n"),
            None => String::new(),
        }
    }
}

tokio::task_local! {
    static BRAND: std::sync::Arc<Branding>;
}

/// Runs `f` with `brand` and the language `accept_language` asks for in
/// force for every page it renders.
pub async fn scope<F: std::future::Future>(
    brand: std::sync::Arc<Branding>,
    accept_language: Option<&str>,
    f: F,
) -> F::Output {
    BRAND.scope(brand, crate::i18n::scope(accept_language, f)).await
}

/// Like [`scope`], for synchronous rendering.
pub fn sync_scope<R>(
    brand: std::sync::Arc<Branding>,
    accept_language: Option<&str>,
    f: impl FnOnce() -> R,
) -> R {
    BRAND.sync_scope(brand, || crate::i18n::sync_scope(accept_language, f))
}

pub(crate) fn brand_context() -> Value {
    BRAND
        .try_with(|b| {
            context! {
                title => b.title.as_str(),
                logo => b.logo_url.as_deref(),
                accent => b.accent_color.is_some(),
            }
        })
        .unwrap_or_else(|_| context! { title => crate::config::defaults::PORTAL_TITLE, logo => None::<&str>, accent => false })
}

/// The built-in templates: name and source. `.html` names are auto-escaped.
const SOURCES: &[(&str, &str)] = &[
    ("layout.html", include_str!("../templates/portal/layout.html")),
    ("forms.html", include_str!("../templates/portal/forms.html")),
    ("message.html", include_str!("../templates/portal/message.html")),
    ("login.html", include_str!("../templates/portal/login.html")),
    ("account.html", include_str!("../templates/portal/account.html")),
    (
        "signed_out.html",
        include_str!("../templates/portal/signed_out.html"),
    ),
    (
        "challenge.html",
        include_str!("../templates/portal/challenge.html"),
    ),
    ("code.html", include_str!("../templates/portal/code.html")),
    (
        "push_wait.html",
        include_str!("../templates/portal/push_wait.html"),
    ),
    ("password.html", include_str!("../templates/portal/password.html")),
    (
        "enroll_chooser.html",
        include_str!("../templates/portal/enroll_chooser.html"),
    ),
    (
        "enroll_address.html",
        include_str!("../templates/portal/enroll_address.html"),
    ),
    (
        "enroll_pairing.html",
        include_str!("../templates/portal/enroll_pairing.html"),
    ),
    (
        "enroll_totp.html",
        include_str!("../templates/portal/enroll_totp.html"),
    ),
    (
        "recovery_codes.html",
        include_str!("../templates/portal/recovery_codes.html"),
    ),
    ("factors.html", include_str!("../templates/portal/factors.html")),
    ("denied.html", include_str!("../templates/portal/denied.html")),
    (
        "passkey_link.html",
        include_str!("../templates/portal/passkey_link.html"),
    ),
    ("webauthn.html", include_str!("../templates/portal/webauthn.html")),
    (
        "webauthn_rename.html",
        include_str!("../templates/portal/webauthn_rename.html"),
    ),
    (
        "passwordless_username.html",
        include_str!("../templates/portal/passwordless_username.html"),
    ),
    (
        "passwordless_factors.html",
        include_str!("../templates/portal/passwordless_factors.html"),
    ),
    (
        "password_link.html",
        include_str!("../templates/portal/password_link.html"),
    ),
    ("demo/echo.html", include_str!("../templates/demo/echo.html")),
    // The admin console (`crate::console`), inside the same layout.
    (
        "console/layout.html",
        include_str!("../templates/console/layout.html"),
    ),
    (
        "console/users.html",
        include_str!("../templates/console/users.html"),
    ),
    (
        "console/user.html",
        include_str!("../templates/console/user.html"),
    ),
    (
        "console/events.html",
        include_str!("../templates/console/events.html"),
    ),
    (
        "console/new_user.html",
        include_str!("../templates/console/new_user.html"),
    ),
    (
        "console/recovery_codes.html",
        include_str!("../templates/console/recovery_codes.html"),
    ),
];

/// The page templates, ready to render.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Templates {
    /// The templates compiled into the binary.
    ///
    /// # Errors
    /// A template that does not parse (a bug caught by the tests).
    pub fn builtin() -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        // A misspelt variable is an error (caught by the tests), not an empty string.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(escape_html);
        // Block tags on their own lines leave no blank lines behind.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()?,
        );
        env.add_global("STYLESHEET", STYLESHEET);
        env.add_global("PUSH_SCRIPT", PUSH_SCRIPT);
        env.add_global("CODES_SCRIPT", CODES_SCRIPT);
        env.add_global("BRAND_STYLESHEET", BRAND_STYLESHEET);
        // `t("key", name=value)`: the message in the request's language.
        env.add_function(
            "t",
            |key: &str, kwargs: minijinja::value::Kwargs| -> Result<String, minijinja::Error> {
                let text = crate::i18n::t(key);
                let mut out = text.to_owned();
                for name in kwargs.args() {
                    let v: Value = kwargs.get(name)?;
                    out = out.replace(&format!("{{{name}}}"), &v.to_string());
                }
                Ok(out)
            },
        );
        env.add_global("WEBAUTHN_SCRIPT", WEBAUTHN_SCRIPT);
        for (name, source) in SOURCES {
            env.add_template(name, source)?;
        }
        Ok(Self { env })
    }

    /// Renders the template `name` with `ctx`.
    ///
    /// # Errors
    /// A template error (a missing input, a bug caught by the tests).
    pub fn render(&self, name: &str, ctx: Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }
}

/// The built-in templates, parsed once.
static TEMPLATES: LazyLock<Option<Templates>> = LazyLock::new(|| match Templates::builtin() {
    Ok(t) => Some(t),
    Err(e) => {
        tracing::error!(error = %e, "a built-in page template does not parse");
        None
    }
});

/// What a page shows when its template fails (never seen unless a template
/// has a bug): a bare page with no inputs, so nothing can go unescaped.
const BROKEN_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
    <title>Error</title></head><body><h1>Error</h1>\
    <p>This page cannot be shown. Try again later.</p></body></html>\n";

/// Renders the portal page `name` under the portal `prefix` (see the module
/// documentation). A template error is logged and answered with a bare page.
pub fn render(name: &str, prefix: &str, ctx: Value) -> String {
    render_app(
        name,
        context! { prefix => prefix, lang => crate::i18n::lang(), brand => brand_context(), ..ctx },
    )
}

/// Renders a template that is not a portal page (the demo app's).
pub fn render_app(name: &str, ctx: Value) -> String {
    match TEMPLATES.as_ref().map(|t| t.render(name, ctx)) {
        Some(Ok(page)) => page,
        Some(Err(e)) => {
            tracing::error!(template = name, error = %e, "rendering a page failed");
            BROKEN_PAGE.to_owned()
        }
        None => BROKEN_PAGE.to_owned(),
    }
}

/// The formatter: in auto-escaped templates every value not marked safe is
/// escaped for element content and quoted attribute values (`& < > " '`).
/// minijinja's own escaper also writes `/` as `&#x2f;`, which HTML does not
/// need and which would turn every URL in a page into entities.
fn escape_html(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if *state.auto_escape() != AutoEscape::Html || value.is_safe() {
        return minijinja::escape_formatter(out, state, value);
    }
    let text;
    let s = match value.as_str() {
        Some(s) => s,
        None if value.is_undefined() || value.is_none() => "",
        None => {
            text = value.to_string();
            &text
        }
    };
    out.write_str(&esc(s))
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write failed").with_source(e))
}

/// Escapes text for HTML element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The Content-Security-Policy of every portal page (no inline script or style).
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The security headers every portal page sends (SPEC section 5).
pub fn security_headers(h: &mut HeaderMap) {
    security_headers_with_logo(h, None);
}

/// [`security_headers`], letting images load from `logo_origin` too (a
/// `portal.logo_url` on another host).
pub fn security_headers_with_logo(h: &mut HeaderMap, logo_origin: Option<&str>) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let csp = match logo_origin {
        Some(o) => {
            HeaderValue::from_str(&CSP.replace("img-src 'self' data:", &format!("img-src 'self' data: {o}")))
                .unwrap_or_else(|_| HeaderValue::from_static(CSP))
        }
        None => HeaderValue::from_static(CSP),
    };
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// The stylesheet.
pub const CSS: &str = r#"
:root{--accent:#1d4ed8}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f3f4f6;color:#111827;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center;padding:1rem}
main{background:#fff;padding:2rem 2.25rem;border-radius:12px;box-shadow:0 4px 24px rgba(0,0,0,.08);width:100%;max-width:26rem;overflow-wrap:anywhere}
@media (max-width:480px){body{padding:.5rem;align-items:flex-start}main{padding:1.5rem 1.25rem}}
.logo{display:block;max-width:12rem;max-height:3.5rem;margin:0 0 1.25rem}
h1{font-size:1.35rem;margin:0 0 1.25rem}
a{color:var(--accent)}
label{display:block;font-size:.9rem;margin:.9rem 0 .3rem;color:#374151}
input[type=text],input[type=password],input[type=email],input[type=tel]{width:100%;padding:.6rem .7rem;border:1px solid #d1d5db;border-radius:8px;font-size:1rem}
input:focus{outline:2px solid var(--accent);border-color:var(--accent)}
button,.button{display:block;text-align:center;text-decoration:none;margin-top:1.25rem;width:100%;padding:.65rem;border:0;border-radius:8px;background:var(--accent);color:#fff;font-size:1rem;cursor:pointer;font-family:inherit}
button.secondary,.button.secondary{background:#e5e7eb;color:#111827}
.error{background:#fef2f2;color:#991b1b;border:1px solid #fecaca;padding:.6rem .75rem;border-radius:8px;font-size:.9rem}
.note{color:#4b5563;font-size:.9rem}
.user{font-weight:600}
table{width:100%;border-collapse:collapse;margin:1rem 0}td,th{text-align:left;padding:.35rem .25rem;border-bottom:1px solid #e5e7eb;font-size:.9rem}
form.inline button{margin:0;width:auto;padding:.3rem .7rem;font-size:.85rem}
select{width:100%;padding:.55rem;border:1px solid #d1d5db;border-radius:8px;font-size:1rem}
details{margin-top:1.25rem}summary{cursor:pointer}
code{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f3f4f6;padding:.1rem .3rem;border-radius:4px}
code#secret{white-space:normal;word-spacing:.2rem}
.qr{text-align:center}.qr img{max-width:100%;height:auto}
ul#recovery-codes{list-style:none;padding:0;margin:1rem 0;display:grid;grid-template-columns:repeat(auto-fill,minmax(9.5rem,1fr));gap:.5rem}
ul#recovery-codes code{display:block;white-space:nowrap;text-align:center;font-size:1rem;padding:.4rem .5rem;letter-spacing:.03em}
.actions{display:flex;gap:.5rem;flex-wrap:wrap}.actions .button,.actions button{flex:1 1 8rem;margin-top:.5rem}
.row{display:flex;gap:.75rem;align-items:center;justify-content:space-between;flex-wrap:wrap;margin-top:1.5rem}
.row form button{margin:0;width:auto;padding:.45rem .9rem;font-size:.9rem}
.hidden{display:none}
"#;

/// A page with a title and one message (errors, notices, access denied),
/// under the portal `prefix`.
pub fn message_page(prefix: &str, title: &str, message: &str) -> String {
    render(
        "message.html",
        prefix,
        context! { title => title, message => message },
    )
}

/// The 404 page a browser gets under the portal prefix, with a way back in.
pub fn not_found_page(prefix: &str) -> String {
    render(
        "message.html",
        prefix,
        context! {
            title => crate::i18n::t("not_found.title"),
            message => crate::i18n::t("not_found.message"),
            link => format!("{prefix}/"),
            link_text => crate::i18n::t("account.title"),
        },
    )
}

/// `portal.title` as shown: the default is shown in the page's language.
pub fn shown_title(title: &str) -> &str {
    if title == crate::config::defaults::PORTAL_TITLE {
        crate::i18n::t("login.sign_in")
    } else {
        title
    }
}

/// The password login form.
pub fn login_page(
    title: &str,
    prefix: &str,
    csrf: &str,
    rd: &str,
    username: &str,
    error: Option<&str>,
) -> String {
    login_page_with(title, prefix, csrf, rd, username, error, None)
}

/// [`login_page`] with a "Sign in with a passkey" link to `passkey`.
pub fn login_page_with(
    title: &str,
    prefix: &str,
    csrf: &str,
    rd: &str,
    username: &str,
    error: Option<&str>,
    passkey: Option<&str>,
) -> String {
    render(
        "login.html",
        prefix,
        context! { title => shown_title(title), csrf, rd, username, error, passkey },
    )
}

/// The signed-in page: who you are, and a sign-out button.
pub fn signed_in_page(prefix: &str, csrf: &str, username: &str, level: u8, note: Option<&str>) -> String {
    render("account.html", prefix, context! { csrf, username, level, note })
}

/// The page after signing out.
pub fn signed_out_page(prefix: &str) -> String {
    render("signed_out.html", prefix, context! {})
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "\"><script>alert('x')</script>&";

    #[test]
    fn escapes_everything_dangerous() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn every_template_parses() {
        let t = Templates::builtin().unwrap();
        for (name, _) in SOURCES {
            t.env.get_template(name).unwrap();
        }
    }

    #[test]
    fn login_page_escapes_reflected_values() {
        let p = login_page("Sign in", "/_p", "tok", "\"><script>", "<b>", Some("<i>"));
        assert!(!p.contains("<script>"));
        assert!(!p.contains("<b>"));
        assert!(p.contains("&lt;i&gt;"));
        assert!(p.contains("name=\"csrf\" value=\"tok\""), "{p}");
        assert!(p.contains("<link rel=\"stylesheet\" href=\"/_p/static/portal.css\">"));
        assert!(p.contains("action=\"/_p/login\""));
    }

    #[test]
    fn every_input_is_escaped_in_every_place() {
        // Title, username, note and the CSRF value all carry markup.
        let pages = [
            login_page(HOSTILE, "/_p", HOSTILE, HOSTILE, HOSTILE, Some(HOSTILE)),
            signed_in_page("/_p", HOSTILE, HOSTILE, 2, Some(HOSTILE)),
            message_page("/_p", HOSTILE, HOSTILE),
        ];
        for p in pages {
            assert!(!p.contains("<script>"), "{p}");
            assert!(!p.contains("\"><script"), "{p}");
            assert!(
                p.contains("&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"),
                "{p}"
            );
        }
    }

    #[test]
    fn message_pages_link_the_stylesheet_under_the_prefix() {
        let p = message_page("/auth/gw", "Access denied", "No.");
        assert!(p.contains("href=\"/auth/gw/static/portal.css\""), "{p}");
        assert!(p.contains("<h1>Access denied</h1>"));
    }

    /// Every template, in each of its branches, with the inputs its handler
    /// passes: a misspelt or missing input fails here (undefined is strict).
    #[test]
    fn every_branch_of_every_page_renders() {
        let t = Templates::builtin().unwrap();
        let factor = |id: &str, totp: bool| context! { id, totp };
        let cases: Vec<(&str, Value)> = vec![
            ("message.html", context! { title => "T", message => "M" }),
            (
                "login.html",
                context! { title => "T", csrf => "c", rd => "/", username => "u", error => None::<&str>, passkey => None::<&str> },
            ),
            (
                "login.html",
                context! { title => "T", csrf => "c", rd => "/", username => "u", error => None::<&str>, passkey => Some("/_p/login/passkey") },
            ),
            (
                "webauthn.html",
                context! {
                    mode => "create", title => "T", intro => "I", button => "B", action => "/a", name => "n",
                    back => Some("/b"), error => Some("e"), options => "{\"challenge\":\"x\"}",
                    fields => vec![context! { name => "csrf", value => "c" }],
                },
            ),
            (
                "webauthn.html",
                context! {
                    mode => "get", title => "T", intro => "I", button => "B", action => "/a", name => "",
                    back => None::<&str>, error => None::<&str>, options => "{}", fields => Vec::<Value>::new(),
                },
            ),
            (
                "webauthn_rename.html",
                context! { csrf => "c", factor => "f1", name => "n", error => Some("e") },
            ),
            (
                "account.html",
                context! { csrf => "c", username => "u", level => 1, note => Some("n") },
            ),
            ("signed_out.html", context! {}),
            (
                "denied.html",
                context! { back => "/", csrf => "c", signed_in => true },
            ),
            (
                "denied.html",
                context! { back => "/_p/", csrf => "", signed_in => false },
            ),
            (
                "challenge.html",
                context! {
                    csrf => "c", rd => "/", fresh => true, recovery => true, error => Some("e"),
                    totp => vec![context! { id => "t1" }, context! { id => "t2" }],
                    oob => vec![context! { id => "o1", action => "send", button => "Send a code", description => "d" }],
                },
            ),
            (
                "challenge.html",
                context! {
                    csrf => "c", rd => "/", fresh => false, recovery => false, error => None::<&str>,
                    totp => vec![context! { id => "t1" }], oob => Vec::<Value>::new(),
                },
            ),
            (
                "code.html",
                context! { csrf => "c", rd => "/", fresh => true, factor => "f", enrolling => true, what => "w", error => None::<&str> },
            ),
            (
                "push_wait.html",
                context! {
                    title => "T", check_action => "mfa/push/check", tx => "x", number => 42, ttl => 65,
                    error => Some("e"), fields => vec![context! { name => "csrf", value => "c" }],
                },
            ),
            (
                "password.html",
                context! { csrf => "c", rd => "/", username => "u", error => None::<&str> },
            ),
            (
                "enroll_chooser.html",
                context! { rd_query => "%2F", types => vec![context! { query => "sms", label => "L" }] },
            ),
            (
                "enroll_address.html",
                context! {
                    title => "T", label => "L", input_type => "tel", kind => "sms", csrf => "c",
                    rd => "/", value => "v", error => None::<&str>,
                },
            ),
            (
                "enroll_pairing.html",
                context! {
                    csrf => "c", rd => "/", rd_query => "%2F", factor => "f", token => Some("tok"),
                    uri => "u", qr => Some("data:x"), ttl => 600, error => None::<&str>,
                },
            ),
            (
                "enroll_pairing.html",
                context! {
                    csrf => "c", rd => "/", rd_query => "%2F", factor => "f", token => None::<&str>,
                    uri => "", qr => None::<&str>, ttl => 600, error => Some("e"),
                },
            ),
            (
                "enroll_totp.html",
                context! {
                    csrf => "c", rd => "/", factor => "f", secret => "ABCDEFGH",
                    secret_groups => vec!["ABCD", "EFGH"], qr => "data:x", error => None::<&str>,
                    uri => "otpauth://totp/x?secret=ABCDEFGH",
                },
            ),
            (
                "recovery_codes.html",
                context! { codes => vec!["a-b", "c-d"], next => "/", download => "data:text/plain,a-b" },
            ),
            (
                "factors.html",
                context! {
                    username => "u", notice => Some("n"), back_query => "%2F", recovery => true,
                    codes_left => 3, csrf => "c", back => "/app",
                    factors => vec![
                        context! { id => "f1", name => "Push", active => true, managed => false, rename => false },
                        context! { id => "f2", name => "E-mail", active => false, managed => true, rename => false },
                        context! { id => "f3", name => "Key", active => true, managed => false, rename => true },
                    ],
                    add => vec![context! { query => "totp", label => "L" }],
                },
            ),
            (
                "passwordless_username.html",
                context! { title => "T", csrf => "c", rd => "/", rd_query => "%2F", username => "u", error => None::<&str>, passkey => Some("/p") },
            ),
            (
                "passwordless_factors.html",
                context! {
                    csrf => "c", rd => "/", rd_query => "%2F", state => "s", error => Some("e"),
                    factors => vec![factor("a", true), factor("b", false)],
                },
            ),
            (
                "demo/echo.html",
                context! {
                    user => "u", method => "GET", path => "/",
                    headers => vec![context! { name => "remote-user", value => "u", identity => true }],
                },
            ),
        ];
        for (name, ctx) in cases {
            let page = t
                .render(
                    name,
                    context! { prefix => "/_p", lang => "en", brand => brand_context(), ..ctx },
                )
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            if name != "demo/echo.html" {
                assert!(page.contains("href=\"/_p/static/portal.css\""), "{name}: {page}");
            }
            let shown = page.replace("autocapitalize=\"none\"", "");
            assert!(!shown.contains("none"), "{name} printed a missing value: {page}");
        }
    }

    #[test]
    fn branding_and_language_reach_the_layout() {
        let brand = std::sync::Arc::new(Branding {
            title: "Acme".into(),
            logo_url: Some("https://cdn.example.com/l.svg".into()),
            accent_color: Some("#0a7".into()),
        });
        let p = sync_scope(brand.clone(), Some("fr-CH, en;q=0.5"), || {
            message_page("/_p", "T", "M")
        });
        assert!(p.contains("<html lang=\"fr\">"), "{p}");
        assert!(
            p.contains("<img class=\"logo\" src=\"https://cdn.example.com/l.svg\" alt=\"Acme\">"),
            "{p}"
        );
        assert!(p.contains("href=\"/_p/static/brand.css\""), "{p}");
        assert!(!p.contains("style="), "no inline style: {p}");
        assert_eq!(brand.css(), ":root{--accent:#0a7}\n");
        assert_eq!(brand.logo_origin().as_deref(), Some("https://cdn.example.com"));
        let mut h = HeaderMap::new();
        security_headers_with_logo(&mut h, brand.logo_origin().as_deref());
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("img-src 'self' data: https://cdn.example.com;"),
            "{csp}"
        );
        let plain = message_page("/_p", "T", "M");
        assert!(
            plain.contains("<html lang=\"en\">") && !plain.contains("logo") && !plain.contains("brand.css")
        );
        let login = sync_scope(std::sync::Arc::default(), Some("de"), || {
            login_page(crate::config::defaults::PORTAL_TITLE, "/_p", "c", "/", "", None)
        });
        assert!(
            login.contains("<h1>Anmelden</h1>") && login.contains("Passwort"),
            "{login}"
        );
    }

    #[test]
    fn a_missing_input_is_an_error_not_an_empty_string() {
        let t = Templates::builtin().unwrap();
        assert!(t.render("message.html", context! { prefix => "/p" }).is_err());
        // The public entry point answers a bare page instead (and logs).
        assert!(render("message.html", "/p", context! {}).contains("cannot be shown"));
    }
}
