//! Path normalization: the one canonical form that rules match and that is
//! forwarded upstream, and the other readings an upstream may give it.
//!
//! Rules are regexes over paths, so every spelling of a path must reach them in
//! one form, or `/admin` could be reached as `/%61dmin`, `/public/../admin` or
//! `//admin`. We therefore:
//! - make every character's spelling canonical, as nginx, Apache and Tomcat
//!   all decode both spellings to the same path: escapes of characters that
//!   may appear raw in a segment are decoded (the unreserved `A-Z a-z 0-9 - .
//!   _ ~`, the sub-delims `! $ & ' ( ) * + , =`, and `:` `@`: `%61` -> `a`,
//!   `%24` -> `$`); every other escape keeps its form with upper-case hex
//!   (`%c3%a9` -> `%C3%A9`); every raw byte that may not appear raw in a path
//!   (non-ASCII, controls, space, `"` `<` `>` `[` `]` `^` `` ` `` `{` `|` `}`)
//!   is percent-encoded (`é` -> `%C3%A9`). So the normalized path is ASCII,
//!   and `/café`, `/caf%c3%a9` and `/caf%C3%A9` are all `/caf%C3%A9`;
//! - resolve `.` and `..` segments (never above the root) and merge `//`;
//! - refuse what back ends disagree about: an encoded `/` or `\` (`%2F`,
//!   `%5C`), a raw `\`, a NUL or another control character (raw or
//!   escaped, `%00`-`%1F` and `%7F`: Spring trims a `%09` at a segment's end,
//!   so `/admin%09/x` would be `/admin/x` there), a segment starting with a
//!   space (`/%20admin/x`: `String::trim` again), a malformed escape, a dot
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
    #[error("control character in path")]
    Control,
    #[error("segment starting with a space")]
    LeadingSpace,
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
    /// Forward-auth only: the front proxy forwards the path as sent, and
    /// apps differ on how (and whether) they resolve it.
    #[error("dot segment in a path forwarded as sent")]
    DotSegment,
    /// WebDAV's `Destination`: doubled, not a URL or path, or of another host.
    #[error("invalid Destination")]
    BadDestination,
    /// More methods named by overrides than are decided on.
    #[error("too many method overrides")]
    MethodOverrides,
}

/// The path of a COPY's or MOVE's WebDAV `Destination` header (they act on
/// it as well as on the request's own path; see `Readings::of`), raw as the
/// upstream will read it, with its normal form; `Ok(None)` without the
/// header. Refused: two headers, a value that is not an absolute path or an
/// `http(s)` URL of the request's own `host` (a network-path reference
/// `//host/path` included: Go's and Python's WebDAV servers read its host),
/// a path [`normalize`] refuses, a dot segment (the header goes upstream as
/// sent, unlike the request's own path). Raw UTF-8 is read as the path's
/// own characters, as [`normalize`] reads them.
pub fn destination<'h>(
    headers: &'h http::HeaderMap,
    host: &str,
) -> Result<Option<(&'h str, Cow<'h, str>)>, PathError> {
    let mut values = headers.get_all("destination").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(PathError::BadDestination);
    }
    let text = std::str::from_utf8(value.as_bytes()).map_err(|_| PathError::BadDestination)?;
    // A scheme is a letter, then letters, digits, `+`, `-`, `.`: a `://`
    // later in a path (`/files/http://x`) is no URL.
    let scheme_end = text.find("://").filter(|&i| {
        let scheme = &text.as_bytes()[..i];
        scheme.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    });
    let path_and_query = match scheme_end {
        Some(i) => {
            let scheme = &text[..i];
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return Err(PathError::BadDestination);
            }
            let rest = &text[i + 3..];
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..end];
            if !crate::context::is_plain_authority(authority) {
                return Err(PathError::BadDestination);
            }
            let named = authority
                .rsplit_once(':')
                .filter(|(_, p)| !p.contains(']'))
                .map_or(authority, |(h, _)| h);
            if !named.trim_end_matches('.').eq_ignore_ascii_case(host) {
                return Err(PathError::BadDestination);
            }
            &rest[end..]
        }
        None if text.starts_with("//") => return Err(PathError::BadDestination),
        None => text,
    };
    let path = path_and_query.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(PathError::BadDestination);
    }
    if has_dot_segment(path) {
        return Err(PathError::DotSegment);
    }
    let normal = normalize(path)?;
    Ok(Some((path, normal)))
}

/// True when a segment of the raw `path` is `.` or `..`, spelled with `%2e`
/// or not. Inline, such segments are resolved and the result is forwarded;
/// forward-auth cannot rewrite what the front proxy forwards, so it refuses
/// them (browsers resolve them before sending).
pub fn has_dot_segment(path: &str) -> bool {
    // Split as bytes: segments are short, and a `char` pattern would call
    // `memchr` for each.
    path.as_bytes().split(|&b| b == b'/').any(|seg| {
        let mut rest = seg;
        let mut dots = 0;
        while !rest.is_empty() {
            if rest[0] == b'.' {
                rest = &rest[1..];
            } else if rest.len() >= 3
                && rest[0] == b'%'
                && rest[1] == b'2'
                && rest[2].eq_ignore_ascii_case(&b'e')
            {
                rest = &rest[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The definition behind [`decodes`] (see there); [`CLASS`] holds its answer
/// for every byte.
const fn decodes_def(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

/// The definition behind [`stays_raw`].
const fn stays_raw_def(b: u8) -> bool {
    decodes_def(b) || matches!(b, b'/' | b';' | b'%')
}

/// [`CLASS`] bit: [`decodes`].
const DECODES: u8 = 1;
/// [`CLASS`] bit: [`stays_raw`].
const STAYS_RAW: u8 = 2;
/// [`CLASS`] bit: stays raw and needs no second look in a clean path (not
/// `/` or `%`), so [`is_clean`] passes it with one lookup.
const PLAIN: u8 = 4;

/// Each byte's classes: one load per byte of a path instead of a dozen
/// comparisons (every request's path is normalized).
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut class = 0;
        if decodes_def(b) {
            class |= DECODES;
        }
        if stays_raw_def(b) {
            class |= STAYS_RAW;
            if b != b'/' && b != b'%' {
                class |= PLAIN;
            }
        }
        table[i] = class;
        i += 1;
    }
    table
};

/// Characters whose escape is decoded: they may appear raw in a segment and
/// mean the same raw or encoded to every upstream (RFC 3986 `pchar` without
/// `;`, which starts parameters for some upstreams). A rule that spells one
/// of them as an escape can never match.
pub fn decodes(b: u8) -> bool {
    CLASS[usize::from(b)] & DECODES != 0
}

/// Raw bytes kept raw: those whose escape is decoded, plus `/`, `;` and `%`
/// (an escape). Every other raw byte is percent-encoded.
fn stays_raw(b: u8) -> bool {
    CLASS[usize::from(b)] & STAYS_RAW != 0
}

fn push_escape(out: &mut String, v: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(v >> 4)]));
    out.push(char::from(HEX[usize::from(v & 15)]));
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

    // Pass 1: one spelling per character (see the module docs).
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
                1..=0x1F | 0x7F => return Err(PathError::Control),
                b';' => return Err(PathError::EncodedSemicolon),
                v if decodes(v) => decoded.push(char::from(v)),
                v => {
                    non_ascii_escape |= v >= 0x80;
                    push_escape(&mut decoded, v);
                }
            }
            i += 3;
        } else {
            match b {
                b'\\' => return Err(PathError::Backslash),
                0 => return Err(PathError::Nul),
                1..=0x1F | 0x7F => return Err(PathError::Control),
                b if stays_raw(b) => decoded.push(char::from(b)),
                // Each byte of a raw non-ASCII character (valid UTF-8: `path`
                // is a str) and every raw byte not allowed in a path.
                b => push_escape(&mut decoded, b),
            }
            i += 1;
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
                // Spring's `trimTokens` (`String::trim`) reads `/%20admin/x`
                // as `/admin/x`; no rule would see that reading.
                if name.starts_with("%20") {
                    return Err(PathError::LeadingSpace);
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
    // A path already in its normal form (kept escapes such as `%20` or
    // `%C3%A9` are not clean, yet often normal) is borrowed: the caller
    // keeps the request's target as it is instead of rebuilding it.
    if result == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(result))
}

/// Why a request target was refused by [`normalize_target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The path is one back ends disagree about (see the module docs).
    #[error(transparent)]
    Path(#[from] PathError),
    /// The normal form did not make a valid URI again (never seen: the
    /// normal form is ASCII without spaces); refused rather than decided on
    /// the old spelling.
    #[error("normalized path does not form a valid URI")]
    Unrepresentable,
}

/// Proof that a request target's path is in normal form. Only
/// [`normalize_target`] makes one, so code that takes it (the gateway's
/// enforcement, [`crate::enforce::Mfa`]'s `forward`) cannot be handed a
/// request nobody normalized. It holds the target it vouches for (a shared
/// reference to its immutable bytes, which a move of the request does not
/// move and which stay allocated while the proof lives), so
/// [`NormalTarget::holds_for`] tells in two comparisons, without scanning the
/// path again, whether a target is still that one: the same address and
/// length can only be the same bytes. A rebuilt or replaced target, even an
/// equal copy, fails it.
#[derive(Debug, Clone)]
#[must_use]
pub struct NormalTarget {
    target: http::uri::PathAndQuery,
}

impl NormalTarget {
    /// True when `uri`'s path and query are the very bytes this proof was
    /// made for. `/` is normal however it is spelt: an empty path (`GET
    /// http://host HTTP/1.1`) reads as a `/` that is a constant of the `http`
    /// crate, whose address the compiler does not promise to be one, so that
    /// one target is compared by its text.
    pub fn holds_for(&self, uri: &http::Uri) -> bool {
        let Some(target) = uri.path_and_query() else {
            return false;
        };
        let (now, then) = (target.as_str(), self.target.as_str());
        (now.as_ptr() == then.as_ptr() && now.len() == then.len()) || (now == "/" && then == "/")
    }
}

/// Normalizes the path of a request target in place (query and the rest
/// kept; a target already normal is left untouched, without a copy) and
/// returns the proof of it. On an error `uri` is left as it was.
pub fn normalize_target(uri: &mut http::Uri) -> Result<NormalTarget, TargetError> {
    match normalize(uri.path())? {
        Cow::Borrowed(_) => {}
        Cow::Owned(normal) => *uri = replace_path(uri, &normal).ok_or(TargetError::Unrepresentable)?,
    }
    // A target with a path has a path-and-query part (`path()` is empty
    // without one, and refused above as not absolute).
    match uri.path_and_query() {
        Some(target) => Ok(NormalTarget {
            target: target.clone(),
        }),
        None => Err(TargetError::Path(PathError::NotAbsolute)),
    }
}

/// `uri` with its path replaced by `path` (query kept).
fn replace_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    http::Uri::from_parts(parts).ok()
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

/// True when `bytes` is already normal: no escapes, no byte to encode, no
/// `//`, no dot segments.
/// Errors early on the refused raw bytes.
fn is_clean(bytes: &[u8]) -> Result<bool, PathError> {
    let mut prev_slash = false;
    let mut seg_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // Most bytes of a path: letters, digits, `-._~` and the like.
        if CLASS[usize::from(b)] & PLAIN != 0 {
            prev_slash = false;
            continue;
        }
        match b {
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            1..=0x1F | 0x7F => return Err(PathError::Control),
            b'%' => return Ok(false),
            b if !stays_raw(b) => return Ok(false),
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
    // Most segments start with another byte: no scan for their `;`.
    if !matches!(seg.first(), Some(b'.' | b' ')) {
        return false;
    }
    let name = seg.split(|&b| b == b';').next().unwrap_or_default();
    !name.is_empty() && name.iter().all(|&b| b == b'.' || b == b' ')
}

/// The readings other than itself that common upstreams give the normalized
/// path `path`, to be decided on as well:
/// - each segment without its `;params`, empty segments merged (Tomcat,
///   Jetty, Spring: `/admin;x/y` and `/;x/admin/y` are `/admin/y`);
/// - each segment with trailing dots and spaces (raw or `%20`) trimmed (IIS:
///   `/admin./y` is `/admin/y`);
/// - both;
/// - the path and each reading above without a trailing `/` (Express and
///   Spring MVC up to 5.3 route `/secret/` as `/secret`).
///
/// Empty (and allocation-free) for the common path with no `;`, no segment
/// ending in a dot or a space and no trailing `/` (other than `/` itself);
/// never lists `path` itself or a reading twice; at most seven readings.
pub fn readings(path: &str) -> Vec<Cow<'_, str>> {
    let bytes = path.as_bytes();
    let params = bytes.contains(&b';');
    let trims = has_trimmable_segment(bytes);
    let slash = path.len() > 1 && path.ends_with('/');
    let mut out: Vec<Cow<'_, str>> = Vec::new();
    if !params && !trims && !slash {
        return out;
    }
    fn push<'a>(out: &mut Vec<Cow<'a, str>>, path: &str, r: Cow<'a, str>) {
        if r != path && !out.contains(&r) {
            out.push(r);
        }
    }
    if params {
        push(&mut out, path, Cow::Owned(rebuild(path, true, false)));
    }
    if trims {
        push(&mut out, path, Cow::Owned(rebuild(path, false, true)));
    }
    if params || trims {
        // Parameters removed first: the trim then also reaches the name
        // (`/admin.;x/y` is `/admin/y`).
        push(&mut out, path, Cow::Owned(rebuild(path, true, true)));
    }
    if slash {
        push(&mut out, path, Cow::Borrowed(&path[..path.len() - 1]));
    }
    for k in 0..out.len() {
        let r = &out[k];
        if r.len() > 1
            && let Some(cut) = r.strip_suffix('/')
        {
            let cut = Cow::Owned(cut.to_owned());
            push(&mut out, path, cut);
        }
    }
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

/// True when a segment of the normalized `path` names a file through an alias
/// that IIS and Windows resolve but the rules cannot see: an NTFS stream
/// (`admin::$INDEX_ALLOCATION`, `file.txt:secret`), an 8.3 short name
/// (`ADMINI~1`), or an ASP.NET cookieless segment (`(S(abc))`), which ASP.NET
/// removes before routing. Only meant for `case_insensitive_paths`
/// deployments: elsewhere `:` and `~1` are ordinary characters.
pub fn windows_alias(path: &str) -> bool {
    path.split('/').any(|seg| {
        let b = seg.as_bytes();
        b.contains(&b':')
            || b.windows(2).any(|w| w[0] == b'~' && w[1].is_ascii_digit())
            || (b.first() == Some(&b'(') && b.last() == Some(&b')'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    /// `is_dot_like` without its first-byte shortcut.
    fn is_dot_like_by_definition(seg: &[u8]) -> bool {
        let name = seg.split(|&b| b == b';').next().unwrap_or_default();
        !name.is_empty() && name.iter().all(|&b| b == b'.' || b == b' ')
    }

    /// `is_clean` as it was before the byte table: every byte through the
    /// definitions, no fast path.
    fn is_clean_by_definition(bytes: &[u8]) -> Result<bool, PathError> {
        let mut prev_slash = false;
        let mut seg_start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\\' => return Err(PathError::Backslash),
                0 => return Err(PathError::Nul),
                1..=0x1F | 0x7F => return Err(PathError::Control),
                b'%' => return Ok(false),
                b if !stays_raw_def(b) => return Ok(false),
                b'/' => {
                    if prev_slash || (i > 0 && is_dot_like_by_definition(&bytes[seg_start..i])) {
                        return Ok(false);
                    }
                    prev_slash = true;
                    seg_start = i + 1;
                }
                _ => prev_slash = false,
            }
        }
        Ok(!is_dot_like_by_definition(&bytes[seg_start..]))
    }

    #[test]
    fn the_byte_table_agrees_with_the_definitions() {
        for b in 0..=255u8 {
            assert_eq!(decodes(b), decodes_def(b), "decodes({b:#04x})");
            assert_eq!(stays_raw(b), stays_raw_def(b), "stays_raw({b:#04x})");
        }
        // Every path of up to three bytes after the leading `/` (all 256
        // bytes in the first place, the interesting ones after it): the
        // clean-path scan answers as the definitions do.
        let interesting = b"a.;/%-_~ \\\0\x01\x7f\x80!:@=\"<";
        for a in 0..=255u8 {
            for &b in interesting {
                for &c in interesting {
                    for path in [
                        vec![b'/', a],
                        vec![b'/', a, b],
                        vec![b'/', a, b, c],
                        vec![b'/', b, a, c],
                    ] {
                        assert_eq!(is_clean(&path), is_clean_by_definition(&path), "{path:?}");
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Longer paths than the exhaustive test reaches: runs of plain
        /// bytes, dots, `;`, `/` and the refused or encoded bytes in any
        /// order. The clean-path scan answers as the definitions do, and a
        /// path it calls clean is normalized to itself.
        #[test]
        fn the_clean_path_scan_agrees_on_long_paths(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "a", "Z9", "-_~", "...", ".", "..", ";", ";x=1", "/", "//", "%", "%2e", " ",
                    "\\", "\u{0}", "\u{1}", "\u{7f}", "é", "!$&'()*+,=:@", "\"", "<", "summary.html",
                ]),
                0..24,
            )
        ) {
            let path = format!("/{}", pieces.concat());
            let scanned = is_clean(path.as_bytes());
            proptest::prop_assert_eq!(scanned, is_clean_by_definition(path.as_bytes()), "{:?}", path);
            if scanned == Ok(true) {
                let normal = normalize(&path);
                proptest::prop_assert_eq!(normal.as_deref(), Ok(path.as_str()));
            }

        }
    }

    #[test]
    fn destinations_are_paths_of_the_same_host() {
        let of = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(
                    "destination",
                    http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
                );
            }
            destination(&h, "app.example")
                .map(|d| d.map(|(raw, normal)| (raw.to_owned(), normal.into_owned())))
        };
        assert_eq!(of(&[]), Ok(None));
        for (value, raw, normal) in [
            ("/a/b", "/a/b", "/a/b"),
            ("http://app.example/a//%62?q#f", "/a//%62", "/a/b"),
            ("HTTPS://App.Example.:8443/a", "/a", "/a"),
            ("http://app.example/", "/", "/"),
            ("/files/http://x", "/files/http://x", "/files/http:/x"),
            (
                "/caf\u{e9} au lait",
                "/caf\u{e9} au lait",
                "/caf%C3%A9%20au%20lait",
            ),
        ] {
            assert_eq!(of(&[value]), Ok(Some((raw.into(), normal.into()))), "{value}");
        }
        for value in [
            "a/b",
            "http://other.example/a",
            "http://app.example.evil/a",
            "http://user@app.example/a",
            "http://app.example,x/a",
            "http://app.example",
            "ftp://app.example/a",
            "http://app.example/a/%2f/b",
            "http://app.example/a/../b",
            "/a/%2E/b",
            "//app.example/admin/x",
            "gopher://app.example/a",
            "",
        ] {
            assert!(of(&[value]).is_err(), "{value}");
        }
        assert_eq!(of(&["/a", "/a"]), Err(PathError::BadDestination));
    }

    #[test]
    fn dot_segments_are_found_however_spelled() {
        for path in [
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/a/.",
            "/..",
            "/.",
            "/a/%2e%2E/b",
            "/a/.%2e/b",
            "/a/%2E/b",
            "/a//../b",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/",
            "/a/b",
            "/a/.b",
            "/a/b.",
            "/a/.../b",
            "/a/..b/c",
            "/a/%2e%2e%2e/b",
            "/a/%2ex",
            "/a/%2f",
            "/a//b",
            "/.well-known/x",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn clean_paths_are_borrowed() {
        assert!(matches!(normalize("/a/b/c.html"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a/b/"), Ok(Cow::Borrowed(_))));
        // Not clean (escapes to look at), but normal already.
        assert!(matches!(normalize("/caf%C3%A9/a%20b"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/100%25"), Ok(Cow::Borrowed(_))));
        // Changed: owned.
        assert!(matches!(normalize("/caf%c3%a9"), Ok(Cow::Owned(_))));
        assert!(matches!(normalize("/a/../b"), Ok(Cow::Owned(_))));
    }

    #[test]
    fn targets_are_normalized_in_place_with_a_proof_of_their_bytes() {
        // Normal already: the very bytes are kept, and the proof holds for
        // the request however it is moved.
        let mut uri: http::Uri = "/a%20b/c?x=%2e%2e".parse().unwrap();
        let before = uri.path().as_ptr();
        let proof = normalize_target(&mut uri).unwrap();
        assert_eq!(uri.path().as_ptr(), before);
        assert_eq!(uri, "/a%20b/c?x=%2e%2e");
        let moved = Box::new(uri);
        assert!(proof.holds_for(&moved));
        // Rebuilt: the normal path, the query as it was (not normalized).
        let mut uri: http::Uri = "http://app.example/x/../%61dmin?q=/../".parse().unwrap();
        let proof = normalize_target(&mut uri).unwrap();
        assert_eq!(uri, "http://app.example/admin?q=/../");
        assert!(proof.holds_for(&uri));
        // A proof is for those bytes only: not for an equal copy, not for a
        // target that replaced them, of the same length or not.
        let copy: http::Uri = uri.to_string().parse().unwrap();
        assert_eq!(copy, uri);
        assert!(!proof.holds_for(&copy));
        let mut replaced = uri.clone();
        assert!(proof.holds_for(&replaced), "a clone shares the bytes");
        replaced = "http://app.example/%61dmin?q=/../".parse().unwrap();
        assert!(!proof.holds_for(&replaced));
        // The proof keeps its bytes: once the target it was made for is
        // gone, a target of the same length parsed next (which an allocator
        // likes to place where the old one was) is still not vouched for.
        let mut uri: http::Uri = "/public".parse().unwrap();
        let proof = normalize_target(&mut uri).unwrap();
        drop(uri);
        for _ in 0..10 {
            let next: http::Uri = "/%70ubl".parse().unwrap();
            assert!(!proof.holds_for(&next));
        }
        // An empty path reads as `/`: vouched for by its text, with or
        // without a query beside it (the query's bytes are compared).
        let mut uri: http::Uri = "http://app.example".parse().unwrap();
        let proof = normalize_target(&mut uri).unwrap();
        assert!(proof.holds_for(&uri));
        assert!(proof.holds_for(&"/".parse().unwrap()));
        assert!(!proof.holds_for(&"/a".parse().unwrap()));
        let mut uri: http::Uri = "http://app.example?x=1".parse().unwrap();
        let proof = normalize_target(&mut uri).unwrap();
        assert!(proof.holds_for(&uri));
        assert!(!proof.holds_for(&"http://app.example?x=1".parse().unwrap()));
        // Refused: no proof, the target left as it was.
        let mut uri: http::Uri = "/a/%2e%2e;x/b?y".parse().unwrap();
        assert_eq!(
            normalize_target(&mut uri).unwrap_err(),
            TargetError::Path(PathError::DotSegmentParameters)
        );
        assert_eq!(uri, "/a/%2e%2e;x/b?y");
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
        for bad in [
            "/admin%09/x",
            "/a%0Ab",
            "/a%0d",
            "/a%1F",
            "/a%7f",
            "/a\tb",
            "/a\x7f",
        ] {
            assert_eq!(n(bad), Err(PathError::Control), "{bad:?}");
        }
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
        // A name starting with a space (Spring trims it): refused too.
        for p in ["/%20admin/x", "/ admin/x", "/a/%20b", "/a/%20.x/"] {
            assert_eq!(n(p), Err(PathError::LeadingSpace), "{p}");
        }
        assert_eq!(n("/a/b%20c").unwrap(), "/a/b%20c");
        // Dots and spaces inside a name are ordinary.
        assert_eq!(n("/a/.well-known/x").unwrap(), "/a/.well-known/x");
        assert_eq!(n("/a/..b/c").unwrap(), "/a/..b/c");
        assert_eq!(n("/a/b%20c/").unwrap(), "/a/b%20c/");
        assert_eq!(n("/a/x./y").unwrap(), "/a/x./y");
    }

    #[test]
    fn readings_of_parameters_and_trailing_dots() {
        let r = |p: &'static str| readings(p);
        assert!(r("/admin/secret").is_empty());
        assert!(r("/").is_empty());
        assert!(r("/a/b.html").is_empty());
        assert_eq!(r("/admin;x/secret"), ["/admin/secret"]);
        assert_eq!(r("/admin;/secret"), ["/admin/secret"]);
        assert_eq!(r("/;x/admin"), ["/admin"]);
        assert_eq!(r("/app;jsessionid=1"), ["/app"]);
        assert_eq!(r("/a/;x"), ["/a/", "/a"]);
        assert_eq!(r("/;x"), ["/"]);
        assert_eq!(r("/admin./x"), ["/admin/x"]);
        assert_eq!(r("/admin%20/x"), ["/admin/x"]);
        assert_eq!(r("/admin. %20./"), ["/admin/", "/admin. %20.", "/admin"]);
        assert_eq!(r("/admin."), ["/admin"]);
        assert_eq!(r("/admin.;x/y"), ["/admin./y", "/admin/y"]);
        assert_eq!(r("/admin;x./y"), ["/admin/y", "/admin;x/y"]);
    }

    #[test]
    fn one_spelling_per_character() {
        // Sub-delims, `:` and `@` are decoded, like the unreserved ones.
        assert_eq!(n("/odata/%24metadata").unwrap(), "/odata/$metadata");
        assert_eq!(
            n("/%21%24%26%27%28%29%2A%2b%2C%3D%3a%40").unwrap(),
            "/!$&'()*+,=:@"
        );
        assert!(matches!(normalize("/odata/$metadata;x=1"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a:b@c/!$&'()*+,="), Ok(Cow::Borrowed(_))));
        // Raw non-ASCII is encoded; escapes of it get upper-case hex.
        for p in [
            "/café/x",
            "/caf%c3%a9/x",
            "/caf%C3%A9/x",
            "/caf%c3%A9/x",
            "/café/x",
        ] {
            assert_eq!(n(p).unwrap(), "/caf%C3%A9/x", "{p}");
        }
        assert_eq!(n("/über/x").unwrap(), "/%C3%BCber/x");
        assert_eq!(n("/%C3%BCber/x").unwrap(), "/%C3%BCber/x");
        assert_eq!(n("/a\u{a0}b").unwrap(), "/a%C2%A0b");
        assert_eq!(n("/\u{2028}").unwrap(), "/%E2%80%A8");
        assert_eq!(n("/🦀").unwrap(), "/%F0%9F%A6%80");
        // Raw characters not allowed in a path are encoded.
        assert_eq!(n("/a\"{}|^`<>[]b").unwrap(), "/a%22%7B%7D%7C%5E%60%3C%3E%5B%5Db");
        assert_eq!(n("/a b").unwrap(), "/a%20b");
        assert_eq!(n("/a%7b%22").unwrap(), "/a%7B%22");
        // What stays encoded or refused.
        assert_eq!(n("/a%3f%23%25%20").unwrap(), "/a%3F%23%25%20");
        assert_eq!(n("/a%3B"), Err(PathError::EncodedSemicolon));
        assert_eq!(n("/a%2F"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5c"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%2524"), Err(PathError::DoubleEncoding));
        // A raw character completing an encoded one is still not UTF-8.
        assert_eq!(n("/é%A9"), Err(PathError::InvalidUtf8));
        // Raw dots and spaces: a space-only segment is still refused.
        assert_eq!(n("/a/ /b"), Err(PathError::DotLookalike));
        for p in ["/café/x", "/a\"b", "/odata/%24metadata", "/über/%2e%2e/x"] {
            let once = n(p).unwrap();
            assert!(once.is_ascii(), "{p}");
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn readings_without_a_trailing_slash() {
        let r = |p: &'static str| readings(p);
        assert_eq!(r("/secret/"), ["/secret"]);
        assert_eq!(r("/a/b/"), ["/a/b"]);
        assert!(r("/").is_empty());
        assert_eq!(r("/secret./"), ["/secret/", "/secret.", "/secret"]);
        assert_eq!(r("/secret;x/"), ["/secret/", "/secret;x", "/secret"]);
        // Borrowed from the path: no copy for the common case.
        assert!(matches!(r("/app/")[0], Cow::Borrowed(_)));
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

    #[test]
    fn windows_aliases_are_recognised() {
        for p in [
            "/admin::$INDEX_ALLOCATION/x",
            "/admin:stream/x",
            "/ADMINI~1/x",
            "/(S(abc))/admin/x",
            "/x/(A(b))",
        ] {
            assert!(windows_alias(p), "{p}");
        }
        for p in ["/admin/x", "/~user/x", "/a~b/x", "/f(1).txt", "/", "/a/b/"] {
            assert!(!windows_alias(p), "{p}");
        }
    }
}
