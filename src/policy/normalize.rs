//! Path normalization: the one canonical form that rules match and that is
//! forwarded upstream.
//!
//! Rules are regexes over paths, so every spelling of a path must reach them in
//! one form, or `/admin` could be reached as `/%61dmin`, `/public/../admin` or
//! `//admin`. We therefore:
//! - decode percent-encoded *unreserved* characters (`%61` -> `a`, `%2e` -> `.`)
//!   and upper-case the hex of every other escape;
//! - resolve `.` and `..` segments (never above the root) and merge `//`;
//! - refuse what back ends disagree about: an encoded `/` or `\` (`%2F`,
//!   `%5C`), a raw `\`, a NUL (raw or `%00`), a malformed escape, and a dot
//!   segment carrying parameters (`..;x`, `.;x`: Tomcat treats `..;` as `..`).

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
pub fn normalize(path: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: the common clean path needs no work beyond one scan.
    if is_clean(bytes)? {
        return Ok(std::borrow::Cow::Borrowed(path));
    }

    // Pass 1: decode unreserved escapes, canonicalize the rest.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (h, l) = match (
                bytes.get(i + 1).copied().and_then(hex_val),
                bytes.get(i + 2).copied().and_then(hex_val),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadEscape),
            };
            let v = h * 16 + l;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0 => return Err(PathError::Nul),
                v if is_unreserved(v) => decoded.push(char::from(v)),
                v => {
                    decoded.push('%');
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(v & 15)]));
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
                if let Some((name, _params)) = s.split_once(';')
                    && (name == "." || name == "..")
                {
                    return Err(PathError::DotSegmentParameters);
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
    Ok(std::borrow::Cow::Owned(result))
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

fn is_dot_like(seg: &[u8]) -> bool {
    seg == b"." || seg == b".." || seg.starts_with(b".;") || seg.starts_with(b"..;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn clean_paths_are_borrowed() {
        assert!(matches!(
            normalize("/a/b/c.html"),
            Ok(std::borrow::Cow::Borrowed(_))
        ));
        assert!(matches!(normalize("/"), Ok(std::borrow::Cow::Borrowed(_))));
        assert!(matches!(normalize("/a/b/"), Ok(std::borrow::Cow::Borrowed(_))));
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
    fn parameters_on_ordinary_segments_are_kept() {
        assert_eq!(n("/app;jsessionid=1/x").unwrap(), "/app;jsessionid=1/x");
    }

    #[test]
    fn normalizing_is_idempotent() {
        for p in ["/a/../b//c/./d/", "/%61%2e%2e/x", "/x/%7e/%20", "/..", "/a/b/.."] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }
}
