//! Pass 3 field helpers shared by the sections: choices, addresses, CIDRs,
//! host names, URLs and lists, each reporting its problems under its key.

use std::fmt::Display;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

use ipnet::IpNet;

use super::context::Ctx;

/// One of a fixed set of words (case-insensitive).
pub(super) fn choice<T: Copy>(
    cx: &mut Ctx<'_>,
    key: &str,
    value: Option<String>,
    default: &str,
    options: &[(&str, T)],
) -> T {
    let lookup = |word: &str| {
        options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(word))
            .map(|(_, v)| *v)
    };
    let fallback = lookup(default).unwrap_or(options[0].1);
    let Some(word) = value else { return fallback };
    match lookup(word.trim()) {
        Some(v) => v,
        None => {
            let names: Vec<String> = options.iter().map(|(name, _)| format!("\"{name}\"")).collect();
            cx.error(key, format!("must be one of {} (got {word:?})", names.join(", ")));
            fallback
        }
    }
}

pub(super) fn listen_addr(cx: &mut Ctx<'_>, key: &str, value: Option<String>, default: &str) -> SocketAddr {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
    let text = value.unwrap_or_else(|| default.to_owned());
    match text.trim().parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            cx.error(
                key,
                format!(
                    "must be an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::]:443\" (got {text:?})"
                ),
            );
            fallback
        }
    }
}

/// A CIDR, or a bare address meaning just that address.
pub(super) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        // `10.0.0.1/8` is most likely a typo for a host or for `10.0.0.0/8`:
        // refused rather than silently widened or narrowed.
        if net.trunc() != net {
            return Err(format!(
                "{t:?} has host bits set; did you mean \"{}\" (the network) or \"{}\" (the address alone)?",
                net.trunc(),
                net.addr()
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "must be a CIDR like \"10.0.0.0/8\" or an IP address (got {text:?})"
    ))
}

pub(super) fn cidrs(cx: &mut Ctx<'_>, key: &str, values: Option<Vec<String>>) -> Vec<IpNet> {
    each(cx, key, values, parse_cidr)
}

/// Converts each entry of a list; a bad entry is reported as `key[i]` and left out.
pub(super) fn each<T>(
    cx: &mut Ctx<'_>,
    key: &str,
    values: Option<Vec<String>>,
    mut convert: impl FnMut(&str) -> Result<T, String>,
) -> Vec<T> {
    let mut out = Vec::new();
    for (i, text) in values.unwrap_or_default().iter().enumerate() {
        match convert(text) {
            Ok(value) => out.push(value),
            Err(e) => cx.error(format!("{key}[{i}]"), e),
        }
    }
    out
}

/// `value` when it lies in `range`; otherwise an error naming the range
/// (`unit` follows its upper bound, e.g. `" seconds"`) and `None`, so that
/// the caller falls back to its default.
pub(super) fn in_range<T: PartialOrd + Display>(
    cx: &mut Ctx<'_>,
    key: &str,
    value: T,
    range: RangeInclusive<T>,
    unit: &str,
) -> Option<T> {
    if range.contains(&value) {
        return Some(value);
    }
    cx.error(
        key,
        format!(
            "must be between {} and {}{unit} (got {value})",
            range.start(),
            range.end()
        ),
    );
    None
}

/// A `Host` name as the gateway compares it: lower-case, no port, no trailing dot.
pub(super) fn normalize_host(text: &str) -> Result<String, String> {
    let host = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err("must not be empty".into());
    }
    if host.contains("://") || host.contains('/') {
        return Err(format!(
            "must be a bare host name, without scheme or path (got {text:?})"
        ));
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => Ok(host),
            _ => Err(format!(
                "must be a host name or a bracketed IPv6 address, without a port (got {text:?})"
            )),
        };
    }
    if host.contains(':') {
        return Err(format!("must not include a port (got {text:?})"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(format!("is not a valid host name (got {text:?})"));
    }
    Ok(host)
}

pub(super) fn hosts(cx: &mut Ctx<'_>, key: &str, values: Option<Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, text) in values.unwrap_or_default().iter().enumerate() {
        match normalize_host(text) {
            Ok(host) if out.contains(&host) => {
                cx.error(format!("{key}[{i}]"), format!("{host:?} is listed twice"))
            }
            Ok(host) => out.push(host),
            Err(e) => cx.error(format!("{key}[{i}]"), e),
        }
    }
    out
}

pub(super) fn non_empty_strings(cx: &mut Ctx<'_>, key: &str, values: Option<Vec<String>>) -> Vec<String> {
    each(cx, key, values, |text| {
        if text.trim().is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(text.to_owned())
        }
    })
}

/// An `http`/`https` URL with a host and without credentials, query or fragment.
pub(super) fn http_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text.trim()).map_err(|e| format!("invalid URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("scheme must be http or https (got {:?})", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must have a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(url)
}

pub(super) fn is_loopback_url(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => false,
    }
}
