//! HTML pages. Plain server-rendered forms that work without JavaScript;
//! every value is escaped; every page carries the security headers.

use http::{HeaderMap, HeaderValue, header};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
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

/// The security headers every portal page sends (SPEC section 5).
pub fn security_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// Where the stylesheet is served, relative to the prefix.
pub const STYLESHEET: &str = "/static/portal.css";

/// The stylesheet.
pub const CSS: &str = r#"
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f3f4f6;color:#111827;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}
main{background:#fff;padding:2rem 2.25rem;border-radius:12px;box-shadow:0 4px 24px rgba(0,0,0,.08);width:100%;max-width:24rem}
h1{font-size:1.35rem;margin:0 0 1.25rem}
label{display:block;font-size:.9rem;margin:.9rem 0 .3rem;color:#374151}
input[type=text],input[type=password]{width:100%;padding:.6rem .7rem;border:1px solid #d1d5db;border-radius:8px;font-size:1rem}
input:focus{outline:2px solid #2563eb;border-color:#2563eb}
button{margin-top:1.25rem;width:100%;padding:.65rem;border:0;border-radius:8px;background:#1d4ed8;color:#fff;font-size:1rem;cursor:pointer}
button.secondary{background:#e5e7eb;color:#111827}
.error{background:#fef2f2;color:#991b1b;border:1px solid #fecaca;padding:.6rem .75rem;border-radius:8px;font-size:.9rem}
.note{color:#4b5563;font-size:.9rem}
.user{font-weight:600}
table{width:100%;border-collapse:collapse;margin:1rem 0}td,th{text-align:left;padding:.35rem .25rem;border-bottom:1px solid #e5e7eb;font-size:.9rem}
form.inline button{margin:0;width:auto;padding:.3rem .7rem;font-size:.85rem}
select{width:100%;padding:.55rem;border:1px solid #d1d5db;border-radius:8px;font-size:1rem}
details{margin-top:1.25rem}summary{cursor:pointer}
code{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f3f4f6;padding:.1rem .3rem;border-radius:4px}
ul#recovery-codes{columns:2;padding-left:1.2rem}
"#;

/// Wraps page content in the common layout.
pub fn layout(title: &str, prefix: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><link rel=\"stylesheet\" href=\"{prefix}{STYLESHEET}\"></head>\
         <body><main>{body}</main></body></html>\n",
        title = esc(title),
        prefix = esc(prefix),
    )
}

/// A page with a title and one message (errors, notices).
pub fn message_page(title: &str, message: &str) -> String {
    // No prefix known here: styles come from the default location.
    layout(
        title,
        crate::config::defaults::PORTAL_PREFIX,
        &format!("<h1>{}</h1><p class=\"note\">{}</p>", esc(title), esc(message)),
    )
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
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    layout(
        title,
        prefix,
        &format!(
            "<h1>{title}</h1>{error}\
             <form method=\"post\" action=\"{prefix}/login\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"rd\" value=\"{rd}\">\
             <label for=\"username\">Username</label>\
             <input type=\"text\" id=\"username\" name=\"username\" value=\"{username}\" autocomplete=\"username\" autocapitalize=\"none\" required autofocus>\
             <label for=\"password\">Password</label>\
             <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
             <button type=\"submit\">Sign in</button></form>",
            title = esc(title),
            prefix = esc(prefix),
            csrf = esc(csrf),
            rd = esc(rd),
            username = esc(username),
        ),
    )
}

/// The signed-in page: who you are, and a sign-out button.
pub fn signed_in_page(prefix: &str, csrf: &str, username: &str, level: u8, note: Option<&str>) -> String {
    let note = note
        .map(|n| format!("<p class=\"note\">{}</p>", esc(n)))
        .unwrap_or_default();
    layout(
        "Your account",
        prefix,
        &format!(
            "<h1>Your account</h1><p>Signed in as <span class=\"user\">{user}</span> \
             ({factors}).</p>{note}\
             <p><a href=\"{prefix}/factors\">Your sign-in methods</a></p>\
             <form method=\"post\" action=\"{prefix}/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" class=\"secondary\">Sign out</button></form>",
            user = esc(username),
            factors = if level >= 2 {
                "two factors"
            } else {
                "password only"
            },
            prefix = esc(prefix),
            csrf = esc(csrf),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_dangerous() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn login_page_escapes_reflected_values() {
        let p = login_page("Sign in", "/_p", "tok", "\"><script>", "<b>", Some("<i>"));
        assert!(!p.contains("<script>"));
        assert!(!p.contains("<b>"));
        assert!(p.contains("&lt;i&gt;"));
    }
}
