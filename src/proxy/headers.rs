//! Pure header-rewriting rules applied to every proxied request and response.
//!
//! Each function takes a `HeaderMap` and rewrites it in place, without sockets or
//! state, so every rule is unit-tested on its own. They are written for the hot
//! path: nothing allocates unless a header actually has to change.
//!
//! The rules and why they exist:
//! - hop-by-hop headers describe one connection, not the message; forwarding them
//!   lets a client steer the gateway's upstream connection (RFC 9110 section 7.6.1);
//! - identity and forwarding headers are the upstream's source of truth about who
//!   and where the caller is, so inbound copies are removed in every spelling an
//!   upstream might fold together (`Remote_User` becomes `REMOTE_USER` in CGI-like
//!   environments, exactly like `Remote-User`) before the gateway sets its own;
//! - the gateway's cookies never leave the gateway, and the upstream cannot set them.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::config::IdentityHeaders;
use crate::identity::{IdentityValues, Principal, PrincipalInfo};

/// `Keep-Alive` (not among `http`'s constants).
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `HTTP2-Settings`, sent with `Upgrade: h2c`; it describes one connection.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
/// `Proxy-Connection`, a non-standard `Connection` some clients still send.
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP`.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Identity values: controls and non-ASCII are always encoded (by
/// `utf8_percent_encode`); `%` too, so an encoded value decodes unambiguously.
const VALUE_SET: &AsciiSet = &CONTROLS.add(b'%');
/// Group names additionally encode `,`, the separator of the groups header.
const GROUP_SET: &AsciiSet = &VALUE_SET.add(b',');

/// Compares a header name with a canonical (lower-case, `-`) name, ignoring case
/// and treating `_` as `-`.
pub fn same_name_loosely(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len() && name.iter().zip(canonical).all(|(&a, &b)| fold(a) == fold(b))
}

fn fold(b: u8) -> u8 {
    if b == b'_' { b'-' } else { b.to_ascii_lowercase() }
}

/// True for a request asking to switch protocols: a `Connection` header listing
/// `upgrade` and an `Upgrade` header.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"upgrade")))
}

/// True for an upgrade request to WebSocket, the only protocol ever spliced:
/// an upgrade request (above) whose `Upgrade` lists `websocket`. Any other
/// protocol (`h2c`, `TLS/1.0`, ...) is not offered upstream: the request goes
/// on as an ordinary one, without `Upgrade` (RFC 9110 section 7.8 lets a
/// server ignore it).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    is_upgrade_request(headers)
        && headers
            .get_all(header::UPGRADE)
            .iter()
            .any(|v| tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"websocket")))
}

/// Non-empty, trimmed items of a comma-separated header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers: the fixed list of RFC 9110 / RFC 2616 and every
/// header named in a `Connection` value.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none of them (an HTTP/1.1 client keeps alive without
    // saying so): one pass over the names instead of a lookup per listed name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Clone the Connection values (cheap: shared bytes) so the named headers can
    // be removed from the same map; the Vec only allocates for a second value.
    let mut first = None;
    let mut rest = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        if first.is_none() {
            first = Some(value.clone());
        } else {
            rest.push(value.clone());
        }
    }
    for value in first.iter().chain(rest.iter()) {
        for token in tokens(value.as_bytes()) {
            // `remove(&str)` parses the name case-insensitively and ignores junk.
            if let Ok(name) = std::str::from_utf8(token) {
                headers.remove(name);
            }
        }
    }
    headers.remove(header::CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    headers.remove(&HTTP2_SETTINGS);
}

/// True for a header of the fixed hop-by-hop list (`Connection` included).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == HTTP2_SETTINGS
}

/// Headers some back ends and frameworks believe over the request line or the
/// socket: a path override (IIS URL Rewrite, old Symfony/Zend), a client
/// address, a method override. The policy never saw them, so a client must
/// not be able to send them through (a bypass rule would otherwise reach
/// another path, method or client identity).
const OVERRIDES: [&[u8]; 16] = [
    b"x-original-url",
    b"x-rewrite-url",
    b"x-original-uri",
    b"true-client-ip",
    b"x-client-ip",
    // PHP's classic "client address" helpers read `HTTP_CLIENT_IP` first.
    b"client-ip",
    b"x-originating-ip",
    b"x-remote-ip",
    b"x-remote-addr",
    b"cf-connecting-ip",
    b"x-cluster-client-ip",
    b"fastly-client-ip",
    b"x-host",
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
];

/// True for a header only the gateway may set upstream: one of the configured
/// identity headers, `Forwarded`, `X-Real-IP` or any `X-Forwarded-*`, or one of
/// the [`OVERRIDES`], in any case and with `_` for `-`.
pub fn is_reserved_inbound(name: &HeaderName, identity: &IdentityHeaders) -> bool {
    let n = name.as_str().as_bytes();
    // Most request headers (Host, Accept, User-Agent, Cookie, ...) have no
    // fixed reserved name's first letter and length: a table lookup rules
    // them out of the fixed list (this runs for every header of every request).
    let fixed = may_be_fixed_reserved(n) && is_fixed_reserved(n);
    fixed
        || [&identity.user, &identity.groups, &identity.email, &identity.name]
            .iter()
            .any(|id| same_name_loosely(n, id.as_str().as_bytes()))
}

/// `X-Forwarded-*` (the prefix of the fixed names below).
const XF: &[u8] = b"x-forwarded-";
/// The other fixed reserved names (besides the [`OVERRIDES`]). `Proxy` is
/// no HTTP header at all: CGI hands it to the application as `HTTP_PROXY`,
/// the variable HTTP client libraries take their outbound proxy from
/// ("httpoxy", CVE-2016-5385 and its kin), so a client could route the
/// application's own outbound calls through a host of its choosing.
const FIXED: [&[u8]; 3] = [b"forwarded", b"x-real-ip", b"proxy"];

/// True for `X-Forwarded-*`, one of [`FIXED`] or one of the [`OVERRIDES`], in
/// any case and with `_` for `-`.
fn is_fixed_reserved(n: &[u8]) -> bool {
    (n.len() > XF.len() && same_name_loosely(&n[..XF.len()], XF))
        || FIXED
            .iter()
            .chain(OVERRIDES.iter())
            .any(|f| same_name_loosely(n, f))
}

/// False when `n` is surely none of the fixed reserved names: by its first
/// letter (folded) and its length, looked up in [`FIXED_SHAPES`].
fn may_be_fixed_reserved(n: &[u8]) -> bool {
    let Some(&first) = n.first() else {
        return false;
    };
    let lengths = FIXED_SHAPES[usize::from(fold(first))];
    match u32::try_from(n.len()) {
        Ok(len) if len < u64::BITS => (lengths >> len) & 1 == 1,
        // Longer than any fixed name but `X-Forwarded-*` ones.
        _ => (lengths >> (u64::BITS - 1)) & 1 == 1,
    }
}

/// For each first byte, the lengths (bit `len`, the last bit for 63 bytes and
/// more) of the fixed reserved names starting with it, derived from the lists
/// themselves. `Host`, `Cookie`, `Accept` and the like match none of them.
const FIXED_SHAPES: [u64; 256] = {
    let mut shapes = [0u64; 256];
    // `x-forwarded-` and at least one more byte: every longer length.
    shapes[XF[0] as usize] |= !0u64 << (XF.len() + 1);
    let mut i = 0;
    while i < FIXED.len() + OVERRIDES.len() {
        let name = if i < FIXED.len() {
            FIXED[i]
        } else {
            OVERRIDES[i - FIXED.len()]
        };
        assert!(name.len() < u64::BITS as usize);
        shapes[name[0] as usize] |= 1 << name.len();
        i += 1;
    }
    shapes
};

/// Removes every inbound identity and forwarding header (see [`is_reserved_inbound`]).
pub fn strip_reserved_inbound(headers: &mut HeaderMap, identity: &IdentityHeaders) {
    // Allocates only when a client actually sent one of them.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_reserved_inbound(n, identity))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Real-IP`
/// and `Forwarded` from what the gateway established (never from the client).
/// `authority` is `None` when the client's Host is not a valid header value; the
/// host parts are then left out rather than guessed.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    client: IpAddr,
    scheme: &str,
    authority: Option<&HeaderValue>,
) {
    // An IPv4 client on a dual-stack listener shows up as ::ffff:a.b.c.d; upstreams
    // expect the IPv4 form.
    let client = client.to_canonical();
    let mut addr = String::with_capacity(48);
    match client {
        IpAddr::V4(v4) => push_ipv4(&mut addr, v4),
        IpAddr::V6(v6) => {
            let _ = write!(addr, "{v6}");
        }
    }
    let proto = match scheme {
        "https" => HeaderValue::from_static("https"),
        "http" => HeaderValue::from_static("http"),
        other => match HeaderValue::from_str(other) {
            Ok(v) => v,
            Err(_) => HeaderValue::from_static("http"),
        },
    };

    // Allocated at its exact length: `Bytes` then takes the buffer as it is.
    let host = authority.and_then(|a| a.to_str().ok());
    let exact = match client {
        IpAddr::V4(_) => "for=".len(),
        IpAddr::V6(_) => "for=\"[]\"".len(),
    } + addr.len()
        + ";proto=".len()
        + scheme.len()
        + host.map_or(0, |h| {
            ";host=\"\"".len() + h.len() + h.bytes().filter(|b| matches!(b, b'"' | b'\\')).count()
        });
    let mut forwarded = String::with_capacity(exact);
    match client {
        IpAddr::V4(_) => {
            forwarded.push_str("for=");
            forwarded.push_str(&addr);
        }
        IpAddr::V6(_) => {
            forwarded.push_str("for=\"[");
            forwarded.push_str(&addr);
            forwarded.push_str("]\"");
        }
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(scheme);
    if let Some(host) = host {
        forwarded.push_str(";host=\"");
        // quoted-string (RFC 7239): escape what would end or break the quotes.
        let mut rest = host;
        while let Some(at) = rest.find(['"', '\\']) {
            forwarded.push_str(&rest[..at]);
            forwarded.push('\\');
            forwarded.push_str(&rest[at..=at]);
            rest = &rest[at + 1..];
        }
        forwarded.push_str(rest);
        forwarded.push('"');
    }
    debug_assert_eq!(forwarded.len(), exact);

    if let Ok(addr) = HeaderValue::from_maybe_shared(Bytes::from(addr)) {
        headers.insert(X_FORWARDED_FOR.clone(), addr.clone());
        headers.insert(X_REAL_IP.clone(), addr);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    if let Some(authority) = authority {
        headers.insert(X_FORWARDED_HOST.clone(), authority.clone());
    }
    if let Ok(forwarded) = HeaderValue::from_maybe_shared(Bytes::from(forwarded)) {
        headers.insert(header::FORWARDED, forwarded);
    }
}

/// `a.b.c.d`, as `Display` writes it, without the formatter.
fn push_ipv4(out: &mut String, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// The index of the first `needle` in `haystack` (`memchr`, with the CPU's
/// vector instructions): the session cookie's value (a few hundred bytes) is
/// scanned on every signed-in request.
pub fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    memchr::memchr(needle, haystack)
}

/// `bytes.split(|&b| b == sep)`, searching with [`find_byte`].
pub fn split_byte(bytes: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let r = rest?;
        match find_byte(r, sep) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// True when `name` is one of `gateway` (case-insensitively, to be strict).
fn is_gateway_cookie(name: &[u8], gateway: &[String]) -> bool {
    gateway.iter().any(|g| g.as_bytes().eq_ignore_ascii_case(name))
}

/// The name of a `name=value` cookie pair, trimmed; the whole pair when it has
/// no `=` (browsers treat that as a nameless cookie, but stripping it is safer).
fn pair_name(pair: &[u8]) -> &[u8] {
    let name = match find_byte(pair, b'=') {
        Some(i) => &pair[..i],
        None => pair,
    };
    name.trim_ascii()
}

/// Removes the gateway's cookies from `Cookie`, dropping the header when nothing
/// remains. Several `Cookie` headers (HTTP/2 sends one per cookie) are merged
/// into one with `"; "`, as RFC 9113 section 8.2.3 requires before forwarding over
/// HTTP/1.1. A single header without gateway cookies is left untouched.
pub fn strip_gateway_cookies(headers: &mut HeaderMap, gateway: &[String]) {
    // One pass over the pairs decides, measures and remembers what is kept
    // (the first `INLINE` pairs on the stack), so the new value is allocated
    // once at its exact size (`Bytes` then takes the buffer as it is, without
    // a second allocation to share it) and no header is scanned twice.
    const INLINE: usize = 16;
    let mut inline: [&[u8]; INLINE] = [&[]; INLINE];
    let mut spilled: Vec<&[u8]> = Vec::new();
    let mut kept_pairs = 0usize;
    let mut count = 0usize;
    let mut exact = 0usize;
    let mut dirty = false;
    for value in headers.get_all(header::COOKIE) {
        count += 1;
        for pair in split_byte(value.as_bytes(), b';').map(<[u8]>::trim_ascii) {
            if pair.is_empty() {
                continue;
            }
            if is_gateway_cookie(pair_name(pair), gateway) {
                dirty = true;
                continue;
            }
            exact += if exact == 0 { pair.len() } else { pair.len() + 2 };
            match inline.get_mut(kept_pairs) {
                Some(slot) => *slot = pair,
                None => spilled.push(pair),
            }
            kept_pairs += 1;
        }
    }
    if !dirty && count <= 1 {
        return;
    }
    let mut kept = Vec::with_capacity(exact);
    for pair in inline[..kept_pairs.min(INLINE)].iter().chain(&spilled) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    debug_assert_eq!(kept.len(), exact);
    drop(spilled);
    // The pairs came from valid header values, so this cannot fail; if it did,
    // sending no cookie is the safe side.
    let value = (!kept.is_empty())
        .then(|| HeaderValue::from_maybe_shared(Bytes::from(kept)).ok())
        .flatten();
    match (count, value) {
        // One header (HTTP/1.1's usual case): its value replaced where it is.
        (1, Some(value)) => {
            if let Some(slot) = headers.get_mut(header::COOKIE) {
                *slot = value;
            }
        }
        (_, value) => {
            headers.remove(header::COOKIE);
            if let Some(value) = value {
                headers.insert(header::COOKIE, value);
            }
        }
    }
}

/// The cookie name a `Set-Cookie` value sets, as browsers send it back. A
/// nameless cookie (`=portcullis_session=x`, RFC 6265bis: the name is
/// empty, the value `portcullis_session=x`) comes back as its bare value,
/// which reads as the name and value it holds: that name is the one it sets.
fn set_cookie_name(value: &[u8]) -> &[u8] {
    let pair = match value.iter().position(|&b| b == b';') {
        Some(i) => &value[..i],
        None => value,
    };
    match (pair_name(pair), find_byte(pair, b'=')) {
        (b"", Some(i)) => pair_name(&pair[i + 1..]),
        (name, _) => name,
    }
}

/// Drops every `Set-Cookie` that would set one of the gateway's cookies.
pub fn filter_set_cookies(headers: &mut HeaderMap, gateway: &[String]) {
    let hit = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| is_gateway_cookie(set_cookie_name(v.as_bytes()), gateway));
    if !hit {
        return;
    }
    let kept: Vec<HeaderValue> = match headers.entry(header::SET_COOKIE) {
        header::Entry::Occupied(e) => e
            .remove_entry_mult()
            .1
            .filter(|v| !is_gateway_cookie(set_cookie_name(v.as_bytes()), gateway))
            .collect(),
        header::Entry::Vacant(_) => return,
    };
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

/// Keeps a response that now carries a session cookie out of shared caches
/// (a CDN or caching proxy in front of the gateway): whatever the app said,
/// its `Cache-Control` becomes `private` (its `public` and `s-maxage`
/// dropped, its other directives kept for the browser's own cache), left as
/// it is when it already says `private` or `no-store`; the CDN-targeted
/// controls (`CDN-Cache-Control`, `Surrogate-Control` and kin) and nginx's
/// `X-Accel-Expires` are removed.
pub fn keep_from_shared_caches(headers: &mut HeaderMap) {
    let mut private = false;
    let mut value = String::from("private");
    for cache_control in headers.get_all(header::CACHE_CONTROL) {
        // A value that is not text cannot be read: dropped, `private` holds.
        let Ok(text) = cache_control.to_str() else {
            continue;
        };
        for directive in directives(text) {
            let name = directive.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("private") {
                private = true;
            } else if !name.eq_ignore_ascii_case("public") && !name.eq_ignore_ascii_case("s-maxage") {
                value.push_str(", ");
                value.push_str(directive);
            }
        }
    }
    // Targeted controls (RFC 9213) and cache timers that CDNs and nginx's
    // cache obey over `Cache-Control`.
    for targeted in [
        "cdn-cache-control",
        "surrogate-control",
        "cloudflare-cdn-cache-control",
        "edge-control",
        "akamai-cache-control",
        "x-accel-expires",
    ] {
        headers.remove(targeted);
    }
    // From a valid header value's own text, so it cannot fail.
    if !private && let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(header::CACHE_CONTROL, value);
    }
}

/// The comma-separated directives of a `Cache-Control` value, trimmed, with
/// commas inside quoted arguments (`no-cache="a, b"`) kept.
fn directives(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let mut quoted = false;
            let mut escaped = false;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    if escaped {
                        escaped = false;
                    } else if quoted && c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        quoted = !quoted;
                    } else if c == ',' && !quoted {
                        return true;
                    }
                    false
                })
                .map_or(rest.len(), |(i, _)| i);
            let directive = rest[..end].trim();
            rest = rest.get(end + 1..).unwrap_or("");
            if !directive.is_empty() {
                return Some(directive);
            }
        }
    })
}

/// Percent-encodes an identity value: `%`, controls and non-ASCII (as UTF-8).
pub fn encode_value(value: &str) -> Cow<'_, str> {
    utf8_percent_encode(value, VALUE_SET).into()
}

/// Joins group names with `,`, each encoded like [`encode_value`] plus `,`.
pub fn encode_groups(groups: &[String]) -> String {
    let mut out = String::with_capacity(groups.iter().map(|g| g.len() + 1).sum());
    for (i, group) in groups.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.extend(utf8_percent_encode(group, GROUP_SET));
    }
    out
}

/// An encoded identity value as a header value.
fn encoded(value: &str) -> Option<HeaderValue> {
    // Encoded values are visible ASCII and spaces, always valid header values.
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes())).ok()
}

/// The identity header values of a principal: the login, the groups joined
/// by `,`, the e-mail address and the display name, percent-encoded (see
/// [`encode_value`], [`encode_groups`]); no groups, or an absent or empty
/// e-mail address or name, has none. Built once per principal
/// ([`Principal::new`]), not per request.
pub fn identity_values(p: &PrincipalInfo) -> IdentityValues {
    let text = |v: &Option<String>| {
        v.as_deref()
            .filter(|v| !v.is_empty())
            .and_then(|v| encoded(&encode_value(v)))
    };
    IdentityValues {
        user: encoded(&encode_value(&p.username)),
        groups: (!p.groups.is_empty())
            .then(|| encoded(&encode_groups(&p.groups)))
            .flatten(),
        email: text(&p.email),
        name: text(&p.display_name),
    }
}

/// Sets the identity headers for `principal` (its values were encoded when it
/// was built); an absent or empty value leaves its header out (inbound copies
/// must already be stripped).
pub fn set_identity(headers: &mut HeaderMap, identity: &IdentityHeaders, principal: &Principal) {
    let values = principal.identity_values();
    for (name, value) in [
        (&identity.user, &values.user),
        (&identity.groups, &values.groups),
        (&identity.email, &values.email),
        (&identity.name, &values.name),
    ] {
        if let Some(value) = value {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> IdentityHeaders {
        IdentityHeaders {
            user: HeaderName::from_static("remote-user"),
            groups: HeaderName::from_static("remote-groups"),
            email: HeaderName::from_static("remote-email"),
            name: HeaderName::from_static("remote-name"),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    fn info() -> PrincipalInfo {
        PrincipalInfo {
            user_id: "00u1".into(),
            username: "alice".into(),
            display_name: Some("Alice Example".into()),
            email: Some("alice@example.com".into()),
            groups: vec!["admins".into(), "ops".into()],
            level: 2,
            session_id: "sid".into(),
        }
    }

    fn principal() -> Principal {
        Principal::new(info())
    }

    #[test]
    fn path_address_and_method_overrides_are_reserved() {
        let id = identity();
        for name in [
            "x-original-url",
            "X_Rewrite_URL",
            "true-client-ip",
            "CF-Connecting-IP",
            "x-http-method-override",
            "Client-IP",
            "client_ip",
            "X-Originating-IP",
            "X-Remote-IP",
            "X-Remote-Addr",
            "Proxy",
            "PROXY",
        ] {
            let n = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(is_reserved_inbound(&n, &id), "{name}");
        }
        assert!(!is_reserved_inbound(
            &HeaderName::from_static("x-original-thing"),
            &id
        ));
        assert!(!is_reserved_inbound(&HeaderName::from_static("accept"), &id));
        for kept in ["proxy-x", "proxies", "client-ips", "x-remote-user", "ip"] {
            assert!(
                !is_reserved_inbound(&HeaderName::from_static(kept), &id),
                "{kept}"
            );
        }
    }

    #[test]
    fn identity_headers_are_stripped_in_every_spelling() {
        let mut h = map(&[
            ("Remote_User", "a"),
            ("REMOTE-USER", "b"),
            ("remote_user", "c"),
            ("Remote-Groups", "admins"),
            ("remote_GROUPS", "admins"),
            ("Remote_Email", "x@y"),
            ("REMOTE_NAME", "X"),
            ("Remote-Userx", "kept"),
            ("x-remote-user", "kept"),
            ("accept", "*/*"),
        ]);
        strip_reserved_inbound(&mut h, &identity());
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["accept", "remote-userx", "x-remote-user"]);
    }

    #[test]
    fn custom_identity_header_names_are_matched_loosely() {
        let ids = IdentityHeaders {
            user: HeaderName::from_static("x-auth-request-user"),
            ..identity()
        };
        let mut h = map(&[
            ("X_Auth_Request_User", "a"),
            ("x-auth_request-USER", "b"),
            ("remote-user", "c"),
        ]);
        strip_reserved_inbound(&mut h, &ids);
        assert!(!h.contains_key("x_auth_request_user"));
        assert!(!h.contains_key("x-auth_request-user"));
        assert!(
            h.contains_key("remote-user"),
            "only the configured names are identity headers"
        );
    }

    #[test]
    fn forwarding_headers_are_stripped_in_every_spelling() {
        let mut h = map(&[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X_Forwarded_For", "1.2.3.4"),
            ("x-forwarded_host", "evil"),
            ("X-FORWARDED-PROTO", "https"),
            ("x-forwarded-prefix", "/admin"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("x_real_ip", "1.2.3.4"),
            ("x-forwardedfor", "kept"),
            ("x-forwarded-", "kept"),
        ]);
        strip_reserved_inbound(&mut h, &identity());
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["x-forwarded-", "x-forwardedfor"]);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, x-other"),
            ("connection", "Foo"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("foo", "3"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer t"),
            ("x-kept", "4"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "x-kept"]);
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        // Without a Connection header too (the fast path's check).
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
        ] {
            let mut h = map(&[(name, "x"), ("x-kept", "1")]);
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name}");
            assert_eq!(all(&h, "x-kept"), ["1"]);
        }
        let mut h = map(&[("x-kept", "1"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "nothing else is touched");
    }

    #[test]
    fn junk_in_connection_is_ignored() {
        let mut h = map(&[("connection", " , ,close,  "), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(all(&h, "x-a"), ["1"]);
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn upgrade_requests_are_recognized() {
        assert!(is_upgrade_request(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(is_upgrade_request(&map(&[
            ("connection", "x"),
            ("connection", "UPGRADE"),
            ("upgrade", "h2c")
        ])));
        assert!(is_websocket_upgrade(&map(&[
            ("connection", "Upgrade"),
            ("upgrade", "WebSocket")
        ])));
        assert!(is_websocket_upgrade(&map(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c, websocket")
        ])));
        for other in ["h2c", "TLS/1.0", "HTTP/2.0", "websockets"] {
            assert!(
                !is_websocket_upgrade(&map(&[("connection", "upgrade"), ("upgrade", other)])),
                "{other}"
            );
        }
        assert!(!is_websocket_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
        assert!(!is_upgrade_request(&map(&[
            ("connection", "upgrades"),
            ("upgrade", "websocket")
        ])));
    }

    fn gateway() -> Vec<String> {
        vec!["portcullis_session".into(), "portcullis_csrf".into()]
    }

    #[test]
    fn bytes_are_found_and_split_as_the_slice_methods_do() {
        let text: Vec<u8> = b";a=1; portcullis_session=v1.abc.def;;b=\xff\x80;c;".to_vec();
        for start in 0..text.len() {
            for end in start..=text.len() {
                let hay = &text[start..end];
                for needle in [b';', b'=', b'\xff', b'\x80', b'z', 0] {
                    assert_eq!(
                        find_byte(hay, needle),
                        hay.iter().position(|&b| b == needle),
                        "{hay:?} {needle}"
                    );
                    let ours: Vec<&[u8]> = split_byte(hay, needle).collect();
                    let std: Vec<&[u8]> = hay.split(|&b| b == needle).collect();
                    assert_eq!(ours, std);
                }
            }
        }
        // Every position of a long haystack, and bytes one apart from the needle.
        let mut long = vec![b'<'; 100];
        for i in 0..long.len() {
            long[i] = b';';
            assert_eq!(find_byte(&long, b';'), Some(i));
            assert_eq!(find_byte(&long, b':'), None);
            long[i] = b'<';
        }
    }

    #[test]
    fn gateway_cookies_are_removed_from_one_header() {
        let mut h = map(&[("cookie", "a=1; portcullis_session=s; b=2;PORTCULLIS_CSRF=t ;c=3")]);
        strip_gateway_cookies(&mut h, &gateway());
        assert_eq!(all(&h, "cookie"), ["a=1; b=2; c=3"]);
    }

    #[test]
    fn gateway_cookies_are_removed_from_several_headers_which_are_merged() {
        let mut h = map(&[
            ("cookie", "portcullis_session=s"),
            ("cookie", "a=1"),
            ("cookie", "b=2; portcullis_csrf=t"),
            ("cookie", " portcullis_session =again"),
        ]);
        strip_gateway_cookies(&mut h, &gateway());
        assert_eq!(all(&h, "cookie"), ["a=1; b=2"]);
    }

    #[test]
    fn cookie_header_disappears_when_only_gateway_cookies_were_sent() {
        let mut h = map(&[
            ("cookie", "portcullis_session=s"),
            ("cookie", "portcullis_csrf=t;"),
        ]);
        strip_gateway_cookies(&mut h, &gateway());
        assert!(!h.contains_key("cookie"));
    }

    #[test]
    fn other_cookies_stay_untouched() {
        let mut h = map(&[(
            "cookie",
            "a=1;b=2; portcullis_session_x=keep; xportcullis_session=keep",
        )]);
        strip_gateway_cookies(&mut h, &gateway());
        assert_eq!(
            all(&h, "cookie"),
            ["a=1;b=2; portcullis_session_x=keep; xportcullis_session=keep"]
        );
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        strip_gateway_cookies(&mut h, &gateway());
        assert_eq!(all(&h, "cookie"), ["a=1; b=2"]);
    }

    #[test]
    fn set_cookie_for_gateway_names_is_dropped() {
        let mut h = map(&[
            ("set-cookie", "app=1; Path=/"),
            ("set-cookie", "portcullis_session=forged; Path=/; HttpOnly"),
            ("set-cookie", "Portcullis_CSRF=x"),
            ("set-cookie", " portcullis_session =y"),
            ("set-cookie", "portcullis_session"),
            ("set-cookie", "other=2; Domain=portcullis_session"),
            // Nameless: browsers send these back as `portcullis_session=..`.
            ("set-cookie", "=portcullis_session=forged; Path=/app"),
            ("set-cookie", " = PORTCULLIS_SESSION =x"),
            ("set-cookie", "=app=3"),
        ]);
        filter_set_cookies(&mut h, &gateway());
        assert_eq!(
            all(&h, "set-cookie"),
            ["app=1; Path=/", "other=2; Domain=portcullis_session", "=app=3"]
        );
        let mut untouched = map(&[("set-cookie", "a=1"), ("set-cookie", "b=2")]);
        filter_set_cookies(&mut untouched, &gateway());
        assert_eq!(all(&untouched, "set-cookie"), ["a=1", "b=2"]);
    }

    #[test]
    fn answers_with_a_session_cookie_are_kept_from_shared_caches() {
        let after = |pairs: &[(&str, &str)]| {
            let mut h = map(pairs);
            keep_from_shared_caches(&mut h);
            all(&h, "cache-control")
        };
        assert_eq!(after(&[]), ["private"]);
        assert_eq!(
            after(&[("cache-control", "public, max-age=3600, s-maxage=600")]),
            ["private, max-age=3600"]
        );
        assert_eq!(
            after(&[
                ("cache-control", "PUBLIC"),
                ("cache-control", r#"no-cache="set-cookie, x", max-age=5"#)
            ]),
            [r#"private, no-cache="set-cookie, x", max-age=5"#]
        );
        assert_eq!(
            after(&[("cache-control", "max-age=0, private")]),
            ["max-age=0, private"]
        );
        assert_eq!(after(&[("cache-control", "no-store")]), ["no-store"]);
        let mut h = map(&[
            ("cache-control", "private"),
            ("cdn-cache-control", "max-age=600"),
            ("surrogate-control", "max-age=600"),
            ("cloudflare-cdn-cache-control", "max-age=600"),
        ]);
        keep_from_shared_caches(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(
            after(&[("cache-control", r#"x="a\",public", , max-age=1"#)]),
            [r#"private, x="a\",public", max-age=1"#]
        );
    }

    #[test]
    fn identity_values_are_percent_encoded() {
        assert_eq!(encode_value("alice"), "alice");
        assert!(matches!(encode_value("plain ascii, ok!"), Cow::Borrowed(_)));
        assert_eq!(encode_value("Zoë Ünal"), "Zo%C3%AB %C3%9Cnal");
        assert_eq!(encode_value("100%"), "100%25");
        assert_eq!(encode_value("a\r\nInjected: 1"), "a%0D%0AInjected: 1");
        assert_eq!(
            encode_value("Doe, Jane"),
            "Doe, Jane",
            "commas only matter in groups"
        );
        assert_eq!(
            encode_groups(&[
                "admins".into(),
                "R&D, Europe".into(),
                "ünits".into(),
                "50%".into()
            ]),
            "admins,R&D%2C Europe,%C3%BCnits,50%25"
        );
        assert_eq!(encode_groups(&[]), "");
    }

    #[test]
    fn identity_headers_are_set_from_the_principal() {
        let mut h = HeaderMap::new();
        set_identity(&mut h, &identity(), &principal());
        assert_eq!(all(&h, "remote-user"), ["alice"]);
        assert_eq!(all(&h, "remote-groups"), ["admins,ops"]);
        assert_eq!(all(&h, "remote-email"), ["alice@example.com"]);
        assert_eq!(all(&h, "remote-name"), ["Alice Example"]);

        let bare = Principal::new(PrincipalInfo {
            username: "bj\u{f6}rn".into(),
            display_name: None,
            email: Some(String::new()),
            groups: vec![],
            ..info()
        });
        let mut h = HeaderMap::new();
        set_identity(&mut h, &identity(), &bare);
        assert_eq!(all(&h, "remote-user"), ["bj%C3%B6rn"]);
        assert!(!h.contains_key("remote-groups"));
        assert!(!h.contains_key("remote-email"));
        assert!(!h.contains_key("remote-name"));
    }

    #[test]
    fn forwarding_headers_for_ipv4() {
        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("app.example.com:8443");
        set_forwarding(&mut h, "192.0.2.7".parse().unwrap(), "https", Some(&host));
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(all(&h, "x-real-ip"), ["192.0.2.7"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["app.example.com:8443"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=192.0.2.7;proto=https;host=\"app.example.com:8443\""]
        );
    }

    #[test]
    fn forwarding_headers_for_ipv6() {
        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("[::1]:8080");
        set_forwarding(&mut h, "::1".parse().unwrap(), "http", Some(&host));
        assert_eq!(all(&h, "x-forwarded-for"), ["::1"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=\"[::1]\";proto=http;host=\"[::1]:8080\""]
        );

        let mut h = HeaderMap::new();
        set_forwarding(&mut h, "2001:db8::5".parse().unwrap(), "https", None);
        assert_eq!(all(&h, "forwarded"), ["for=\"[2001:db8::5]\";proto=https"]);
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn ipv4_mapped_clients_are_shown_as_ipv4() {
        let mut h = HeaderMap::new();
        set_forwarding(&mut h, "::ffff:192.0.2.9".parse().unwrap(), "http", None);
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.9"]);
        assert_eq!(all(&h, "forwarded"), ["for=192.0.2.9;proto=http"]);
    }

    #[test]
    fn forwarded_host_is_a_safe_quoted_string() {
        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("a\"b\\c");
        set_forwarding(&mut h, "192.0.2.1".parse().unwrap(), "http", Some(&host));
        assert_eq!(
            all(&h, "forwarded"),
            ["for=192.0.2.1;proto=http;host=\"a\\\"b\\\\c\""]
        );
    }

    #[test]
    fn ipv4_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "192.0.2.7",
            "255.255.255.255",
            "1.20.100.9",
            "100.10.1.0",
        ] {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            let mut out = String::new();
            push_ipv4(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn many_cookies_with_a_gateway_one_among_them_keep_their_order() {
        // More kept pairs than the stack holds: the rest are remembered on the heap.
        let pairs: Vec<String> = (0..40).map(|i| format!("c{i}={i}")).collect();
        let mut sent = pairs.clone();
        sent.insert(20, "portcullis_session=s".into());
        let mut h = map(&[("cookie", &sent.join(";"))]);
        strip_gateway_cookies(&mut h, &gateway());
        assert_eq!(all(&h, "cookie"), [pairs.join("; ")]);
        // The same over several headers, merged.
        let (first, second) = sent.split_at(25);
        let mut h = map(&[("cookie", &first.join("; ")), ("cookie", &second.join("; "))]);
        strip_gateway_cookies(&mut h, &gateway());
        assert_eq!(all(&h, "cookie"), [pairs.join("; ")]);
    }

    #[test]
    fn a_lone_gateway_cookie_takes_its_header_with_it() {
        let mut h = map(&[("cookie", " portcullis_session=s ; "), ("x-kept", "1")]);
        strip_gateway_cookies(&mut h, &gateway());
        assert!(!h.contains_key("cookie"));
        assert_eq!(all(&h, "x-kept"), ["1"]);
    }

    /// The definition of a reserved inbound name, without the shortcut of
    /// [`is_reserved_inbound`] (first letter and length).
    fn reserved_by_definition(n: &[u8], identity: &IdentityHeaders) -> bool {
        (n.len() > XF.len() && same_name_loosely(&n[..XF.len()], XF))
            || same_name_loosely(n, b"forwarded")
            || same_name_loosely(n, b"x-real-ip")
            || [&identity.user, &identity.groups, &identity.email, &identity.name]
                .iter()
                .any(|id| same_name_loosely(n, id.as_str().as_bytes()))
            || OVERRIDES.iter().any(|o| same_name_loosely(n, o))
    }

    #[test]
    fn every_fixed_reserved_name_is_caught_in_any_spelling() {
        let identity = identity();
        let names = OVERRIDES
            .iter()
            .chain(FIXED.iter())
            .map(|n| String::from_utf8(n.to_vec()).unwrap())
            .chain(["x-forwarded-port".to_owned(), "x-forwarded-prefix".to_owned()])
            // Longer than the lengths the shortcut tells apart.
            .chain([format!("x-forwarded-{}", "a".repeat(70))]);
        for name in names {
            for spelling in [name.clone(), name.to_ascii_uppercase(), name.replace('-', "_")] {
                let parsed = HeaderName::from_bytes(spelling.as_bytes()).unwrap();
                assert!(is_reserved_inbound(&parsed, &identity), "{spelling}");
            }
        }
        let long = format!("x-{}", "a".repeat(70));
        for kept in [
            "host",
            "accept",
            "cookie",
            "user-agent",
            "content-type",
            "x-request-id",
            "forwardedx",
            &long,
        ] {
            assert!(
                !is_reserved_inbound(&HeaderName::from_bytes(kept.as_bytes()).unwrap(), &identity),
                "{kept}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_shortcut_by_first_letter_and_length_agrees_with_the_definition(
            name in "([xX][-_][fF][oO][rR][wW][aA][rR][dD][eE][dD][-_])?[a-zA-Z_-][a-zA-Z0-9_-]{0,70}",
            custom in "[a-z][a-z0-9-]{0,16}",
        ) {
            // Names made of the letters the reserved names are made of, and an
            // identity header named anything (it is checked in full, whatever
            // its first letter).
            let mut identity = identity();
            identity.email = HeaderName::from_bytes(custom.as_bytes()).unwrap();
            let parsed = HeaderName::from_bytes(name.as_bytes()).unwrap();
            proptest::prop_assert_eq!(
                is_reserved_inbound(&parsed, &identity),
                reserved_by_definition(parsed.as_str().as_bytes(), &identity)
            );
            let email = HeaderName::from_bytes(custom.to_ascii_uppercase().as_bytes()).unwrap();
            proptest::prop_assert!(is_reserved_inbound(&email, &identity));
        }

        #[test]
        fn any_ipv4_address_is_written_as_display_writes_it(bits: u32) {
            let ip = std::net::Ipv4Addr::from(bits);
            let mut out = String::new();
            push_ipv4(&mut out, ip);
            proptest::prop_assert_eq!(out, ip.to_string());
        }
    }
}
