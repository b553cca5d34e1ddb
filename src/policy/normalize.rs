//! Path normalization: the one canonical form that rules match and that is
//! forwarded upstream, and the other readings an upstream may give it.
//!
//! Rules are regexes over paths, so every spelling of a path must reach them in
//! one form, or `/admin` could be reached as `/%61dmin`, `/public/../admin` or
//! `//admin`. We therefore:
//! - decode percent-encoded *unreserved* characters (`%61` -> `a`, `%2e` -> `.`)
//!   and upper-case the hex of every other escape;
//! - resolve `.` and `..` segments (never above the root) and merge `//`;
//! - refuse what back ends disagree about: an encoded `/` or `\` (`%2F`,
//!   `%5C`), a raw `\`, a NUL (raw or `%00`), a malformed escape, a dot
//!   segment carrying parameters (`..;x`, `.;x`: Tomcat treats `..;` as `..`),
//!   a double encoding (`%25` and two hex digits: `%252e` is `.` to an upstream
//!   that decodes twice), escapes that do not decode to valid UTF-8 (overlong
//!   forms such as `%C0%AE` are `.` to some decoders), an encoded `;` (`%3B`:
//!   a decoding upstream such as Spring would then cut a parameter the gateway
//!   never saw), and a segment made only of dots and spaces other than `.` and
//!   `..` (`...`, `..%20`, `.%20`: IIS trims trailing dots and spaces, so they
//!   turn into dot segments after the gateway resolved them).
//!
//! The normalized path is forwarded unchanged (so `;jsessionid=` URLs keep
//! working), but upstreams still read it differently: Tomcat, Jetty and Spring
//! drop `;params` from each segment (`/admin;x/y` is `/admin/y`), IIS trims
//! trailing dots and spaces (`/admin./y` is `/admin/y`). [`readings`] lists
//! those other readings so the policy can decide on the strictest
//! (see [`crate::policy::Policy::evaluate`]).

use std::borrow::Cow;

/// Why a path was refused (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("malformed percent-encoding")]
    BadEscape,
    #[error("encoded slash or backslash")]
    EncodedSeparator,
    #[error("backslash in path")]
    Backslash,
    #[error("NUL in path")]
    Nul,
    #[error("dot segment with parameters")]
    DotSegmentParameters,
    #[error("double percent-encoding")]
    DoubleEncoding,
    #[error("percent-encoding that is not valid UTF-8")]
    InvalidUtf8,
    #[error("encoded semicolon")]
    EncodedSemicolon,
    #[error("segment of dots and spaces")]
    DotLookalike,
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Returns the normalized form of `path` (the path part of a request target,
/// without the query), or why it is refused. Allocates only when the path
/// changes.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: the common clean path needs no work beyond one scan.
    if is_clean(bytes)? {
        return Ok(Cow::Borrowed(path));
    }

    // Pass 1: decode unreserved escapes, canonicalize the rest.
    let mut decoded = String::with_capacity(path.len());
    let mut non_ascii_escape = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let v = escape_at(bytes, i).ok_or(PathError::BadEscape)?;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0 => return Err(PathError::Nul),
                b';' => return Err(PathError::EncodedSemicolon),
                v if is_unreserved(v) => decoded.push(char::from(v)),
                v => {
                    non_ascii_escape |= v >= 0x80;
                    decoded.push('%');
                    decoded.push(char::from(HEX[usize::from(v >> 4)]));
                    decoded.push(char::from(HEX[usize::from(v & 15)]));
                }
            }
            i += 3;
        } else {
            match b {
                b'\\' => return Err(PathError::Backslash),
                0 => return Err(PathError::Nul),
                _ => {}
            }
            // Non-escape bytes are copied through as the str they are part of.
            let start = i;
            while i < bytes.len() && bytes[i] != b'%' && bytes[i] != b'\\' && bytes[i] != 0 {
                i += 1;
            }
            decoded.push_str(&path[start..i]);
        }
    }
    // `%25` (an encoded `%`) followed by two hex digits, here or once the
    // unreserved escapes are decoded (`%25%32%65`), is `%2e` after one
    // decoding and `.` after a second.
    if has_double_encoding(decoded.as_bytes()) {
        return Err(PathError::DoubleEncoding);
    }
    if non_ascii_escape && !decodes_to_utf8(bytes) {
        return Err(PathError::InvalidUtf8);
    }

    // Pass 2: segments.
    let trailing_slash = decoded.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => {
                let name = s.split_once(';').map_or(s, |(name, _params)| name);
                if name == "." || name == ".." {
                    return Err(PathError::DotSegmentParameters);
                }
                if is_dots_and_spaces(name.as_bytes()) {
                    return Err(PathError::DotLookalike);
                }
                out.push(s);
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if result.is_empty() || (trailing_slash && !out.is_empty()) {
        result.push('/');
    }
    // A trailing `/.` or `/..` also denotes a directory.
    let ends_dir = decoded.ends_with("/.") || decoded.ends_with("/..");
    if ends_dir && !result.ends_with('/') {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The byte of the escape `%XY` starting at `i`, if well formed.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let h = bytes.get(i + 1).copied().and_then(hex_val)?;
    let l = bytes.get(i + 2).copied().and_then(hex_val)?;
    Some(h * 16 + l)
}

/// True when `%25` is followed by two hex digits.
fn has_double_encoding(bytes: &[u8]) -> bool {
    bytes.windows(5).any(|w| {
        w[0] == b'%' && w[1] == b'2' && w[2] == b'5' && hex_val(w[3]).is_some() && hex_val(w[4]).is_some()
    })
}

/// True when `path` (escapes already known to be well formed) percent-decodes
/// to valid UTF-8: no overlong forms, surrogates or truncated sequences.
fn decodes_to_utf8(bytes: &[u8]) -> bool {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], escape_at(bytes, i)) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// True for a non-empty name made only of dots and spaces (raw or `%20`).
fn is_dots_and_spaces(mut name: &[u8]) -> bool {
    if name.is_empty() {
        return false;
    }
    while !name.is_empty() {
        name = if name[0] == b'.' || name[0] == b' ' {
            &name[1..]
        } else if name.starts_with(b"%20") {
            &name[3..]
        } else {
            return false;
        };
    }
    true
}

/// True when `bytes` is already normal: no escapes, no `//`, no dot segments.
/// Errors early on the refused raw bytes.
fn is_clean(bytes: &[u8]) -> Result<bool, PathError> {
    let mut prev_slash = false;
    let mut seg_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b'%' => return Ok(false),
            b'/' => {
                if prev_slash {
                    return Ok(false);
                }
                if i > 0 && is_dot_like(&bytes[seg_start..i]) {
                    return Ok(false);
                }
                prev_slash = true;
                seg_start = i + 1;
            }
            _ => prev_slash = false,
        }
    }
    Ok(!is_dot_like(&bytes[seg_start..]))
}

/// A segment whose name (before any `;`) is made only of dots and spaces:
/// a dot segment, or one that needs refusing.
fn is_dot_like(seg: &[u8]) -> bool {
    let name = seg.split(|&b| b == b';').next().unwrap_or_default();
    !name.is_empty() && name.iter().all(|&b| b == b'.' || b == b' ')
}

/// The readings other than itself that common upstreams give the normalized
/// path `path`, to be decided on as well:
/// - each segment without its `;params`, empty segments merged (Tomcat,
///   Jetty, Spring: `/admin;x/y` and `/;x/admin/y` are `/admin/y`);
/// - each segment with trailing dots and spaces (raw or `%20`) trimmed (IIS:
///   `/admin./y` is `/admin/y`);
/// - both.
///
/// Empty (and allocation-free) for the common path with no `;` and no segment
/// ending in a dot or a space; never lists `path` itself or a reading twice.
pub fn readings(path: &str) -> Vec<String> {
    let bytes = path.as_bytes();
    let params = bytes.contains(&b';');
    let trims = has_trimmable_segment(bytes);
    let mut out: Vec<String> = Vec::new();
    if !params && !trims {
        return out;
    }
    let mut push = |r: String| {
        if r != path && !out.contains(&r) {
            out.push(r);
        }
    };
    if params {
        push(rebuild(path, true, false));
    }
    if trims {
        push(rebuild(path, false, true));
    }
    // Parameters removed first: the trim then also reaches the name
    // (`/admin.;x/y` is `/admin/y`).
    push(rebuild(path, true, true));
    out
}

/// True when some segment ends in `.`, ` ` or `%20`.
fn has_trimmable_segment(bytes: &[u8]) -> bool {
    let ends_trimmable = |end: usize| {
        end > 0 && (matches!(bytes[end - 1], b'.' | b' ') || (end >= 3 && &bytes[end - 3..end] == b"%20"))
    };
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'/' && ends_trimmable(i))
        || ends_trimmable(bytes.len())
}

fn trim_dots_and_spaces(mut s: &str) -> &str {
    loop {
        let t = s.trim_end_matches(['.', ' ']);
        match t.strip_suffix("%20") {
            Some(t) => s = t,
            None => return t,
        }
    }
}

/// `path` with each segment's parameters removed and/or trailing dots and
/// spaces trimmed; segments left empty are merged; a trailing slash is kept.
fn rebuild(path: &str, strip_params: bool, trim: bool) -> String {
    let mut out = String::with_capacity(path.len());
    let mut last_empty = false;
    for seg in path.split('/').skip(1) {
        let mut s = seg;
        if strip_params {
            s = s.split_once(';').map_or(s, |(name, _)| name);
        }
        if trim {
            s = trim_dots_and_spaces(s);
        }
        last_empty = s.is_empty();
        if !last_empty {
            out.push('/');
            out.push_str(s);
        }
    }
    if out.is_empty() || last_empty {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn clean_paths_are_borrowed() {
        assert!(matches!(normalize("/a/b/c.html"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a/b/"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn resolves_dot_segments_and_slashes() {
        assert_eq!(n("/public/../admin").unwrap(), "/admin");
        assert_eq!(n("/public/./x").unwrap(), "/public/x");
        assert_eq!(n("//admin").unwrap(), "/admin");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/..").unwrap(), "/");
        assert_eq!(n("/a/b/").unwrap(), "/a/b/");
    }

    #[test]
    fn decodes_unreserved_escapes_only() {
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
        assert_eq!(n("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(n("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/%7euser").unwrap(), "/~user");
    }

    #[test]
    fn refuses_ambiguous_paths() {
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%00b"), Err(PathError::Nul));
        assert_eq!(n("/a\0b"), Err(PathError::Nul));
        assert_eq!(n("/public/..;/admin"), Err(PathError::DotSegmentParameters));
        assert_eq!(n("/public/.;x/admin"), Err(PathError::DotSegmentParameters));
        assert_eq!(n("/public/%2e%2e;x/admin"), Err(PathError::DotSegmentParameters));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn refuses_double_encoding() {
        for p in [
            "/%252e%252e/admin",
            "/a/%252E",
            "/a%2541",
            "/a%25%32%65",
            "/a%25%32e",
            "/a/%25ff",
        ] {
            assert_eq!(n(p), Err(PathError::DoubleEncoding), "{p}");
        }
        // An encoded `%` that is not followed by two hex digits stays.
        assert_eq!(n("/a%25zz").unwrap(), "/a%25zz");
        assert_eq!(n("/100%25").unwrap(), "/100%25");
        assert_eq!(n("/a%25x1").unwrap(), "/a%25x1");
    }

    #[test]
    fn refuses_escapes_that_are_not_utf8() {
        for p in [
            "/%C0%AE%C0%AE/admin",
            "/a/%C0%AF",
            "/%E0%80%AE",
            "/%C1%81dmin",
            "/%ED%A0%80",
            "/%FF",
            "/%C3",
            "/%C3/x",
            "/%C3%28",
            "/%F8%88%80%80%80",
        ] {
            assert_eq!(n(p), Err(PathError::InvalidUtf8), "{p}");
        }
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/%F0%9F%A6%80").unwrap(), "/%F0%9F%A6%80");
        // A raw character between the bytes of one encoded one.
        assert_eq!(n("/%C3é"), Err(PathError::InvalidUtf8));
    }

    #[test]
    fn refuses_an_encoded_semicolon() {
        assert_eq!(
            n("/admin%3Bjsessionid=1/secret"),
            Err(PathError::EncodedSemicolon)
        );
        assert_eq!(n("/admin%3b/secret"), Err(PathError::EncodedSemicolon));
    }

    #[test]
    fn refuses_segments_of_dots_and_spaces() {
        for p in [
            "/a/..%20/b",
            "/a/.. /b",
            "/a/.../b",
            "/a/.%20/b",
            "/a/. /b",
            "/a/%20/b",
            "/a/%2e%2e%2e/b",
            "/a/...",
            "/a/..%20",
            "/a/%20..%20/b",
            "/a/..%20;x/b",
            "/a/...;/b",
        ] {
            assert_eq!(n(p), Err(PathError::DotLookalike), "{p}");
        }
        // Dot segments with parameters keep their own answer.
        assert_eq!(n("/a/..;x/b"), Err(PathError::DotSegmentParameters));
        // Dots and spaces inside a name are ordinary.
        assert_eq!(n("/a/.well-known/x").unwrap(), "/a/.well-known/x");
        assert_eq!(n("/a/..b/c").unwrap(), "/a/..b/c");
        assert_eq!(n("/a/b%20c/").unwrap(), "/a/b%20c/");
        assert_eq!(n("/a/x./y").unwrap(), "/a/x./y");
    }

    #[test]
    fn readings_of_parameters_and_trailing_dots() {
        let r = |p: &str| readings(p);
        assert!(r("/admin/secret").is_empty());
        assert!(r("/").is_empty());
        assert!(r("/a/b.html").is_empty());
        assert_eq!(r("/admin;x/secret"), ["/admin/secret"]);
        assert_eq!(r("/admin;/secret"), ["/admin/secret"]);
        assert_eq!(r("/;x/admin"), ["/admin"]);
        assert_eq!(r("/app;jsessionid=1"), ["/app"]);
        assert_eq!(r("/a/;x"), ["/a/"]);
        assert_eq!(r("/;x"), ["/"]);
        assert_eq!(r("/admin./x"), ["/admin/x"]);
        assert_eq!(r("/admin%20/x"), ["/admin/x"]);
        assert_eq!(r("/admin. %20./"), ["/admin/"]);
        assert_eq!(r("/admin."), ["/admin"]);
        assert_eq!(r("/admin.;x/y"), ["/admin./y", "/admin/y"]);
        assert_eq!(r("/admin;x./y"), ["/admin/y", "/admin;x/y"]);
    }

    #[test]
    fn parameters_on_ordinary_segments_are_kept() {
        assert_eq!(n("/app;jsessionid=1/x").unwrap(), "/app;jsessionid=1/x");
    }

    #[test]
    fn normalizing_is_idempotent() {
        for p in ["/a/../b//c/./d/", "/%61%2e%2e/x", "/x/%7e/a%20", "/..", "/a/b/.."] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }
}
