//! Where `rd=` may send a browser: a relative path, the request's own host,
//! or one of `portal.allowed_redirect_hosts`; anything else becomes `/`.
//! Open redirects are how phishing borrows a trusted login page.

/// Returns the safe target for `rd` on a request to `own_host`.
pub fn safe_target(rd: Option<&str>, own_host: &str, allowed_hosts: &[String]) -> String {
    let Some(rd) = rd.map(str::trim).filter(|s| !s.is_empty()) else {
        return "/".into();
    };
    if rd.chars().any(|c| c.is_control() || c == '\\') {
        return "/".into();
    }
    if rd.starts_with('/') {
        // `//host` and `/\host` are protocol-relative: other hosts.
        if rd.starts_with("//") {
            return "/".into();
        }
        return rd.to_owned();
    }
    let Ok(url) = url::Url::parse(rd) else {
        return "/".into();
    };
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
        return "/".into();
    }
    let Some(host) = url
        .host_str()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
    else {
        return "/".into();
    };
    if host == own_host || allowed_hosts.contains(&host) {
        url.to_string()
    } else {
        "/".into()
    }
}

/// A "back to the application" link: `rd` only when it stays on this origin
/// (a relative path, or an absolute URL on the request's own host, given back
/// as its path so scheme and port cannot differ), else `/`. Stricter than
/// [`safe_target`]: the link is shown, not followed, so nothing listed in
/// `allowed_redirect_hosts` is needed.
pub fn same_origin_target(rd: Option<&str>, own_host: &str) -> String {
    let safe = safe_target(rd, own_host, &[]);
    if safe.starts_with('/') {
        return safe;
    }
    match url::Url::parse(&safe) {
        // `https://own.example//evil.example/x` has the path `//evil.example/x`,
        // which as a link on its own names another host.
        Ok(u) if u.path().starts_with("//") => "/".into(),
        Ok(u) => match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        },
        Err(_) => "/".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_links_stay_on_this_origin() {
        assert_eq!(same_origin_target(Some("/app?x=1"), "a.example"), "/app?x=1");
        assert_eq!(
            same_origin_target(Some("https://a.example:8443/p?q"), "a.example"),
            "/p?q"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "javascript:alert(1)",
            "/\\evil",
            "https://a.example//evil.example/x",
            "https://a.example/\\evil.example/x",
            "https://a.example:8443//evil.example",
        ] {
            assert_eq!(same_origin_target(Some(bad), "a.example"), "/", "{bad}");
        }
        assert_eq!(same_origin_target(None, "a.example"), "/");
    }

    #[test]
    fn allows_relative_own_and_listed_hosts() {
        let allowed = vec!["intranet.example.com".to_string()];
        assert_eq!(safe_target(Some("/x?y=1"), "app.example.com", &allowed), "/x?y=1");
        assert_eq!(
            safe_target(Some("https://app.example.com/a"), "app.example.com", &allowed),
            "https://app.example.com/a"
        );
        assert_eq!(
            safe_target(Some("https://INTRANET.example.com/"), "app.example.com", &allowed),
            "https://intranet.example.com/"
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "javascript:alert(1)",
            "https://app.example.com@evil.example/",
            "https://user@app.example.com/",
            "data:text/html,x",
            "/x\r\nSet-Cookie: a=b",
            "https://app.example.com.evil.example/",
        ] {
            assert_eq!(safe_target(Some(bad), "app.example.com", &[]), "/", "{bad}");
        }
        assert_eq!(safe_target(None, "a", &[]), "/");
    }
}
