//! Per-request facts the gateway establishes before policy and the proxy run,
//! and how they are established: who the client is (honouring
//! `trusted_proxies` only), which scheme and host it asked for.
//!
//! The gateway inserts one [`RequestContext`] into the request extensions as soon
//! as it has decided who the peer is, which host was asked for and which upstream
//! serves it. Everything downstream (policy, enforcement, the proxy) reads it from
//! there instead of re-deriving it from headers a client could forge.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Facts about a request established by the gateway before policy runs.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The TCP peer.
    pub peer_addr: std::net::SocketAddr,
    /// The client address after `trusted_proxies` (the gateway computes it).
    pub client_addr: std::net::IpAddr,
    /// `"http"` or `"https"`, as the client sees it.
    pub scheme: &'static str,
    /// The Host the client asked for, as sent (may include a port).
    pub authority: Authority,
    /// Lower-cased host without port.
    pub host: String,
    /// Index into `Config.upstreams` chosen by Host (`None` = no upstream).
    pub upstream: Option<usize>,
    /// The request id (also in logs and the response).
    pub request_id: RequestId,
}

/// A request's id: 16 random letters and digits (about 95 bits), made for
/// every request, written in its access line and sent back as
/// `X-Request-Id`. A value of fixed size: copied, never allocated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    bytes: [u8; RequestId::LEN],
    len: u8,
}

impl RequestId {
    /// The length of the ids the gateway makes.
    pub const LEN: usize = 16;

    /// A new random id.
    pub fn random() -> Self {
        let mut bytes = [0; Self::LEN];
        crate::crypto::fill_id(&mut bytes);
        Self {
            bytes,
            len: Self::LEN as u8,
        }
    }

    /// No id (a context made outside the gateway's own request handling).
    pub const fn none() -> Self {
        Self {
            bytes: [0; Self::LEN],
            len: 0,
        }
    }

    /// `text` as an id, if it is at most [`Self::LEN`] ASCII letters,
    /// digits, `-` or `_` (for tests and ids made elsewhere).
    pub fn from_text(text: &str) -> Option<Self> {
        let mut bytes = [0; Self::LEN];
        bytes.get_mut(..text.len())?.copy_from_slice(text.as_bytes());
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            .then_some(Self {
                bytes,
                len: text.len() as u8,
            })
    }

    fn used(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The id as text (empty for [`Self::none`]).
    pub fn as_str(&self) -> &str {
        // ASCII letters and digits (`random`, `from_text`): always UTF-8.
        std::str::from_utf8(self.used()).unwrap_or_default()
    }

    /// The id as a header value (`X-Request-Id`); `None` for [`Self::none`].
    pub fn header_value(&self) -> Option<HeaderValue> {
        let bytes = Some(self.used()).filter(|b| !b.is_empty())?;
        HeaderValue::from_bytes(bytes).ok()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// How a connection reached us; inserted by the server into every request.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// True when the connection is TLS.
    pub tls: bool,
}

fn trusted(addr: IpAddr, proxies: &[IpNet]) -> bool {
    let addr = canonical(addr);
    proxies.iter().any(|n| n.contains(&addr))
}

/// IPv4-mapped IPv6 addresses as plain IPv4, so rules and limits see one form.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The address bucket counted for per-address limits: the address itself for
/// IPv4, its /64 for IPv6 (one host usually owns a whole /64).
pub fn address_bucket(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

// Header names built once: a lookup by `&str` parses the name every time.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The client address: the peer, or, when the peer is a trusted proxy, the
/// right-most untrusted hop of `X-Forwarded-For`. An unparseable hop ends the
/// walk at the hop to its right (never trusting what the client wrote).
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if proxies.is_empty() || !trusted(peer, proxies) {
        return peer;
    }
    let mut current = peer;
    // Right to left, across the field lines in order (no list is built).
    // Split on a one-character array rather than a `char`: a hop is a few
    // bytes, which a plain scan reads sooner than `memrchr` sets up.
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',']))
        .map(str::trim);
    for hop in hops.rev() {
        let Some(addr) = parse_hop(hop) else {
            return current;
        };
        current = canonical(addr);
        if !trusted(current, proxies) {
            return current;
        }
    }
    current
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    // `1.2.3.4:5678` or `[::1]:5678`
    hop.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// The scheme as the client sees it: TLS, or a trusted proxy's `X-Forwarded-Proto`.
pub fn scheme(conn: &ConnInfo, headers: &HeaderMap, proxies: &[IpNet]) -> &'static str {
    if conn.tls {
        return "https";
    }
    if trusted(conn.peer.ip(), proxies)
        && let Some(p) = headers.get(&X_FORWARDED_PROTO).and_then(|v| v.to_str().ok())
    {
        let last = p.rsplit([',']).next().unwrap_or_default().trim();
        if last.eq_ignore_ascii_case("https") {
            return "https";
        }
        if last.eq_ignore_ascii_case("http") {
            return "http";
        }
    }
    "http"
}

/// True when `method` is spelled as methods are: upper-case letters, `-` and
/// `_` (nginx's rule; every registered method, WebDAV's included, fits).
/// Methods are case-sensitive, so `delete` is not `DELETE` to a rule with
/// `methods = ["DELETE"]`, while many applications upper-case what they
/// receive: such a request would pass a rule meant to stop it. Refused
/// (400) at the door and in a forward-auth call's original method.
pub fn is_canonical_method(method: &http::Method) -> bool {
    let m = method.as_str();
    !m.is_empty()
        && m.bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// The authority a client asked for, as it was sent: a host and perhaps a
/// port that passed [`is_plain_authority`] (so plain ASCII). Kept as the
/// header value it came in, so that it goes upstream as `Host` without a
/// copy, and read as text where a URL is written with it.
#[derive(Clone, PartialEq, Eq)]
pub struct Authority(HeaderValue);

impl Authority {
    /// `text` if it is a plain authority ([`is_plain_authority`]).
    pub fn new(text: &str) -> Option<Self> {
        plain_host_len(text.as_bytes())?;
        HeaderValue::from_str(text).ok().map(Self)
    }

    /// The authority as text.
    pub fn as_str(&self) -> &str {
        // ASCII, checked when it was made.
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }

    /// The authority as a header value (the same bytes; a cheap clone).
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The authority the client asked for (URI authority for HTTP/2 and absolute
/// form, else `Host`), and its lower-cased host without port. `None` when
/// missing or malformed, when there are two `Host` headers, or when a `Host`
/// header disagrees with the URI's authority (an absolute-form target or
/// HTTP/2's `:authority`): the policy and the upstream must see one host.
///
/// The usual request (HTTP/1.1, origin form, one `Host`) is read in one pass
/// over its bytes and kept as the header value it is: a plain authority is
/// always one the `http` crate parses, with the same host (a property test
/// holds the two to each other), so it is not parsed again.
pub fn authority(uri: &http::Uri, headers: &HeaderMap) -> Option<(Authority, String)> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    let value = match (uri.authority(), host_header) {
        (Some(a), Some(h)) => {
            let h: http::uri::Authority = h.to_str().ok()?.parse().ok()?;
            if !same_authority(a, &h, uri.scheme_str()) {
                return None;
            }
            HeaderValue::from_str(a.as_str()).ok()?
        }
        (Some(a), None) => HeaderValue::from_str(a.as_str()).ok()?,
        (None, Some(h)) => h.clone(),
        (None, None) => return None,
    };
    let host = plain_host(value.as_bytes())?;
    // ASCII (`plain_host_len` refuses any other byte): one char per byte.
    let host = host.iter().map(|&b| char::from(b.to_ascii_lowercase())).collect();
    Some((Authority(value), host))
}

/// True when `text` is a host name or IPv4 address of letters, digits, `.`,
/// `-` and `_` (or a bracketed IPv6 address), with at most a port of 1 to 5
/// digits. The `http` crate also lets through what no configured host can
/// be (`hosts` entries are plain names) but what upstreams may read as
/// something else: `,` (a list: Spring and Express take the first entry of
/// `X-Forwarded-Host: admin.example,x`, others the last), `;`, `=`, `(`,
/// `*`, userinfo (`@`), an empty or non-numeric port.
pub fn is_plain_authority(text: &str) -> bool {
    plain_host_len(text.as_bytes()).is_some()
}

/// The host of a plain authority ([`is_plain_authority`]) without its
/// trailing dots, as its policy and upstream choice read it (not lower-cased);
/// `None` for any other text, and for a host of dots only.
pub fn plain_host(b: &[u8]) -> Option<&[u8]> {
    let mut host = b.get(..plain_host_len(b)?)?;
    while let [name @ .., b'.'] = host {
        host = name;
    }
    (!host.is_empty()).then_some(host)
}

/// For a plain authority ([`is_plain_authority`]), the length of its host
/// (a name, an IPv4 address or a bracketed IPv6 address; what
/// `http::uri::Authority::host` returns); `None` for any other text (any
/// byte outside ASCII included).
fn plain_host_len(b: &[u8]) -> Option<usize> {
    /// The bytes of a plain host name: letters, digits, `.`, `-`, `_`.
    const HOST_BYTE: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let c = i as u8;
            t[i] = c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'_';
            i += 1;
        }
        t
    };
    // One pass over the bytes (every request's Host comes through here).
    let host_len = if b.first() == Some(&b'[') {
        let close = b.iter().position(|&c| c == b']')?;
        // An IPv6 address: not just its characters (`[::::]`, `[1.2.3.4]`
        // and a ninth colon, which `http` refuses, are no address).
        std::str::from_utf8(b.get(1..close)?)
            .ok()?
            .parse::<std::net::Ipv6Addr>()
            .ok()?;
        close + 1
    } else {
        let name = b
            .iter()
            .position(|&c| !HOST_BYTE[usize::from(c)])
            .unwrap_or(b.len());
        if name == 0 {
            return None;
        }
        name
    };
    let plain = match b.get(host_len..)? {
        [] => true,
        [b':', port @ ..] => (1..=5).contains(&port.len()) && port.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    plain.then_some(host_len)
}

/// True when two authorities name the same host and port (case-insensitive
/// host, trailing dot ignored, a missing port being the scheme's default).
fn same_authority(a: &http::uri::Authority, b: &http::uri::Authority, scheme: Option<&str>) -> bool {
    let default = if scheme.is_some_and(|s| s.eq_ignore_ascii_case("https")) {
        443
    } else {
        80
    };
    a.host()
        .trim_end_matches('.')
        .eq_ignore_ascii_case(b.host().trim_end_matches('.'))
        && a.port_u16().unwrap_or(default) == b.port_u16().unwrap_or(default)
        && !a.as_str().contains('@')
        && !b.as_str().contains('@')
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn h(xff: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in xff {
            m.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn ignores_forwarded_for_from_untrusted_peers() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(client_addr(peer, &h(&["1.1.1.1"]), &proxies), peer);
        assert_eq!(client_addr(peer, &h(&["1.1.1.1"]), &[]), peer);
    }

    #[test]
    fn takes_the_rightmost_untrusted_hop() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        // The client forged "6.6.6.6"; the real client is 198.51.100.7.
        let got = client_addr(peer, &h(&["6.6.6.6, 198.51.100.7", "10.0.0.9"]), &proxies);
        assert_eq!(got, "198.51.100.7".parse::<IpAddr>().unwrap());
        // Across field lines too: the last line's hops come first.
        let got = client_addr(peer, &h(&["198.51.100.7", "6.6.6.6, 10.0.0.9"]), &proxies);
        assert_eq!(got, "6.6.6.6".parse::<IpAddr>().unwrap());
        assert_eq!(client_addr(peer, &h(&[]), &proxies), peer);
        assert_eq!(client_addr(peer, &h(&["garbage"]), &proxies), peer);
        assert_eq!(
            client_addr(peer, &h(&["[2001:db8::1]:443"]), &proxies),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn reads_the_authority() {
        let mut hm = HeaderMap::new();
        hm.insert("host", HeaderValue::from_static("App.Example.com:8443"));
        let uri: http::Uri = "/x".parse().unwrap();
        // As sent (an `Authority` compares without case: compare the text).
        let (auth, host) = authority(&uri, &hm).unwrap();
        assert_eq!(
            (auth.as_str(), host.as_str()),
            ("App.Example.com:8443", "app.example.com")
        );
        let uri: http::Uri = "https://other.example/x".parse().unwrap();
        assert_eq!(authority(&uri, &HeaderMap::new()).unwrap().1, "other.example");
        let mut bad = HeaderMap::new();
        bad.insert("host", HeaderValue::from_static("user@evil"));
        assert_eq!(authority(&"/".parse().unwrap(), &bad), None);
        assert_eq!(authority(&"/".parse().unwrap(), &HeaderMap::new()), None);
    }

    #[test]
    fn hosts_are_plain_names_and_ports_digits() {
        for ok in [
            "a.example",
            "A-b_c.example.:8080",
            "10.0.0.1",
            "10.0.0.1:1",
            "[::1]",
            "[2001:db8::1]:443",
            "[::1:2:3:4:5:6:7]",
            "[::ffff:192.0.2.1]:8080",
            "localhost",
        ] {
            assert!(is_plain_authority(ok), "{ok}");
            let mut h = HeaderMap::new();
            h.insert("host", HeaderValue::from_str(ok).unwrap());
            assert!(authority(&"/".parse().unwrap(), &h).is_some(), "{ok}");
        }
        for bad in [
            "admin.example,x",
            "x,admin.example",
            "a.example;x",
            "a=b",
            "a(b)",
            "a*b",
            "a!$&'+b",
            "user@a.example",
            "a.example:",
            "a.example:x",
            "a.example:123456",
            "a.example:80:80",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[fe80::1%25eth0]",
            "[]",
            "[1:2:3:4:5:6:7:8:9]",
            "[:::::::::]:80",
            "[::::]",
            "[1.2.3.4]",
            "[::1::2]",
            ":80",
            "",
        ] {
            assert!(!is_plain_authority(bad), "{bad}");
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(bad) {
                h.insert("host", v);
                assert_eq!(authority(&"/".parse().unwrap(), &h), None, "{bad}");
            }
        }
    }

    #[test]
    fn refuses_two_hosts_and_disagreeing_authorities() {
        let mut two = HeaderMap::new();
        two.append("host", HeaderValue::from_static("a.example"));
        two.append("host", HeaderValue::from_static("b.example"));
        assert_eq!(authority(&"/".parse().unwrap(), &two), None);
        let mut same_twice = HeaderMap::new();
        same_twice.append("host", HeaderValue::from_static("a.example"));
        same_twice.append("host", HeaderValue::from_static("a.example"));
        assert_eq!(authority(&"/".parse().unwrap(), &same_twice), None);

        let mut b = HeaderMap::new();
        b.insert("host", HeaderValue::from_static("b.example"));
        let abs: http::Uri = "http://a.example/x".parse().unwrap();
        assert_eq!(authority(&abs, &b), None);
        let mut port = HeaderMap::new();
        port.insert("host", HeaderValue::from_static("a.example:8080"));
        assert_eq!(authority(&abs, &port), None);

        // The same authority spelt differently is one host.
        for same in ["a.example", "A.Example", "a.example:80", "a.example."] {
            let mut h = HeaderMap::new();
            h.insert("host", HeaderValue::from_str(same).unwrap());
            assert_eq!(authority(&abs, &h).unwrap().1, "a.example", "{same}");
        }
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a.example"));
        let tls: http::Uri = "https://a.example:443/x".parse().unwrap();
        assert!(authority(&tls, &h).is_some());
    }

    #[test]
    fn scheme_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut hm = HeaderMap::new();
        hm.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let untrusted = ConnInfo {
            peer: "203.0.113.1:1".parse().unwrap(),
            tls: false,
        };
        let proxy = ConnInfo {
            peer: "10.1.1.1:1".parse().unwrap(),
            tls: false,
        };
        assert_eq!(scheme(&untrusted, &hm, &proxies), "http");
        assert_eq!(scheme(&proxy, &hm, &proxies), "https");
        assert_eq!(
            scheme(
                &ConnInfo {
                    tls: true,
                    ..untrusted
                },
                &HeaderMap::new(),
                &proxies
            ),
            "https"
        );
    }

    #[test]
    fn request_ids_are_sixteen_random_letters_and_digits() {
        let a = RequestId::random();
        let b = RequestId::random();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.as_str().len(), RequestId::LEN);
            assert!(id.as_str().bytes().all(|c| c.is_ascii_alphanumeric()), "{id}");
            assert_eq!(id.header_value().unwrap().as_bytes(), id.as_str().as_bytes());
            assert_eq!(id.to_string(), id.as_str());
        }
        assert_eq!(RequestId::none().as_str(), "");
        assert_eq!(RequestId::none().header_value(), None);
        assert_eq!(RequestId::from_text("req-1").unwrap().as_str(), "req-1");
        assert_eq!(RequestId::from_text("x".repeat(17).as_str()), None);
        assert_eq!(RequestId::from_text("a b"), None);
        assert_eq!(RequestId::from_text("\n"), None);
    }

    proptest::proptest! {
        /// The fast path's promise: text the one-pass check calls plain is an
        /// authority the `http` crate parses, as written, with the same host
        /// (so `Host` is not parsed a second time). Strings are drawn from
        /// the bytes that matter (name bytes, brackets, colons, digits, and
        /// a few the check must refuse), and fully arbitrary ones besides.
        #[test]
        fn what_the_scan_calls_plain_the_http_crate_parses_with_the_same_host(
            text in proptest::prop_oneof![
                "[a-zA-Z0-9._\\-]{0,12}(:[0-9]{0,7})?",
                "\\[[0-9a-fA-F:.%]{0,10}\\](:[0-9]{0,6})?",
                "\\[[0-9a-f:.]{0,48}\\](:[0-9]{1,5})?",
                "\\[(:|[0-9a-f]{1,4}:|::){1,10}[0-9a-f]{0,4}\\]",
                "[a-z0-9.:\\[\\]@,;=%*_-]{0,16}",
                "\\PC{0,16}",
            ]
        ) {
            if let Some(n) = plain_host_len(text.as_bytes()) {
                let parsed: http::uri::Authority = text.parse().expect("a plain authority parses");
                proptest::prop_assert_eq!(parsed.as_str(), text.as_str());
                proptest::prop_assert_eq!(parsed.host(), &text[..n]);
                proptest::prop_assert!(HeaderValue::from_str(&text).is_ok());
                let mut h = HeaderMap::new();
                h.insert("host", HeaderValue::from_str(&text).unwrap());
                let got = authority(&"/".parse().unwrap(), &h);
                let want = parsed.host().trim_end_matches('.').to_ascii_lowercase();
                if want.is_empty() {
                    proptest::prop_assert!(got.is_none());
                } else {
                    let (auth, host) = got.expect("a plain authority is read");
                    proptest::prop_assert_eq!(auth.as_str(), text.as_str());
                    proptest::prop_assert_eq!(host, want);
                }
            } else {
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&text) {
                    h.insert("host", v);
                    proptest::prop_assert!(authority(&"/".parse().unwrap(), &h).is_none());
                }
            }
        }
    }
}
