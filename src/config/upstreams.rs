//! `[[upstreams]]`: where requests go, chosen by host.

use std::collections::HashMap;

use super::context::Ctx;
use super::duration::duration;
use super::fields::{choice, hosts, http_url};
use super::listeners::load_certs;
use super::raw::RawUpstream;
use super::shape::array_section;
use super::{HeaderCase, UpstreamConfig, defaults};

const NONE: &str = "at least one [[upstreams]] entry is required (or [forward_auth] enabled = true, for a gateway that only answers another proxy's checks)";

/// `may_be_empty`: forward-auth is enabled, so the gateway may serve only the
/// portal and another proxy's checks, with no app of its own to forward to.
pub(super) fn convert_upstreams(
    cx: &mut Ctx<'_>,
    value: Option<toml::Value>,
    may_be_empty: bool,
) -> Option<Vec<UpstreamConfig>> {
    // Absent reads as empty.
    let items = array_section::<RawUpstream>(cx, "upstreams", value)?;
    if items.is_empty() {
        if may_be_empty {
            return Some(Vec::new());
        }
        cx.error("upstreams", NONE);
        return None;
    }
    let before = cx.error_count();
    let malformed = items.iter().any(Option::is_none);
    let mut out: Vec<UpstreamConfig> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut host_owner: HashMap<String, usize> = HashMap::new();
    let mut default_upstream: Option<usize> = None;
    for (i, raw) in items.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        // Names and the default are checked on the raw entry, so an entry with
        // another problem (a bad URL, say) is still compared in the same pass.
        let name = raw.name.as_deref().map(str::trim).unwrap_or_default().to_owned();
        if !name.is_empty() {
            if let Some(first) = names.get(&name) {
                cx.error(
                    format!("upstreams[{i}].name"),
                    format!("{name:?} is already used by upstreams[{first}]"),
                );
            } else {
                names.insert(name, i);
            }
        }
        if raw.hosts.as_ref().is_none_or(Vec::is_empty) {
            match default_upstream {
                Some(first) => cx.error(
                    format!("upstreams[{i}].hosts"),
                    format!("only one upstream may leave hosts empty (the default), and upstreams[{first}] already does"),
                ),
                None => default_upstream = Some(i),
            }
        }
        let Some(upstream) = convert_upstream(cx, i, raw) else {
            continue;
        };
        for host in &upstream.hosts {
            if let Some(first) = host_owner.get(host) {
                cx.error(
                    format!("upstreams[{i}].hosts"),
                    format!("{host:?} is already routed to upstreams[{first}]"),
                );
            } else {
                host_owner.insert(host.clone(), i);
            }
        }
        out.push(upstream);
    }
    (!malformed && cx.error_count() == before).then_some(out)
}

fn convert_upstream(cx: &mut Ctx<'_>, i: usize, raw: RawUpstream) -> Option<UpstreamConfig> {
    let k = |field: &str| format!("upstreams[{i}].{field}");
    let name = match raw.name {
        None => {
            cx.error(k("name"), "is required");
            String::new()
        }
        Some(n) if n.trim().is_empty() => {
            cx.error(k("name"), "must not be empty");
            String::new()
        }
        Some(n) => n.trim().to_owned(),
    };
    let url = match raw.url {
        None => {
            cx.error(k("url"), "is required, e.g. \"http://127.0.0.1:3000\"");
            None
        }
        Some(text) => http_url(&text).map_err(|e| cx.error(k("url"), e)).ok(),
    };
    let hosts = hosts(cx, &k("hosts"), raw.hosts);
    let timeout = duration(
        cx,
        &k("timeout"),
        raw.timeout,
        defaults::UPSTREAM_TIMEOUT_SECS,
        false,
    );
    let pool_idle_timeout = duration(
        cx,
        &k("pool_idle_timeout"),
        raw.pool_idle_timeout,
        defaults::POOL_IDLE_TIMEOUT_SECS,
        false,
    );
    let ca = match raw.ca.as_deref().map(str::trim) {
        None | Some("") => Vec::new(),
        Some(path) => {
            if url.as_ref().is_some_and(|u| u.scheme() == "http") {
                cx.warn(k("ca"), "ignored: the upstream URL is plain http");
            }
            load_certs(cx, &k("ca"), path).unwrap_or_default()
        }
    };
    let header_case = choice(
        cx,
        &k("header_case"),
        raw.header_case,
        "title",
        &[("title", HeaderCase::Title), ("lower", HeaderCase::Lower)],
    );
    Some(UpstreamConfig {
        name,
        url: url?,
        hosts,
        preserve_host: raw.preserve_host.unwrap_or(defaults::PRESERVE_HOST),
        timeout,
        pool_idle_timeout,
        ca,
        header_case,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::*;

    // --- check-config gaps: one pass, host bits, a bypass default -------------

    #[test]
    fn cidrs_with_host_bits_are_refused_with_the_network_suggested() {
        let errs = errors(&with(
            "[server]\ntrusted_proxies = [\"10.0.0.1/8\", \"fd00::1/8\", \"10.0.0.0/8\", \"192.168.1.7\"]\n\
             [[rules]]\npath = \"^/intranet/\"\npolicy = \"one_factor\"\nnetworks = [\"192.168.1.1/24\"]\n",
        ));
        assert_has(&errs, "server.trusted_proxies[0]", "did you mean \"10.0.0.0/8\"");
        assert_has(&errs, "server.trusted_proxies[1]", "did you mean \"fd00::/8\"");
        assert_has(&errs, "rules[0].networks[0]", "did you mean \"192.168.1.0/24\"");
        assert!(
            !errs
                .iter()
                .any(|e| e.starts_with("server.trusted_proxies[2]")
                    || e.starts_with("server.trusted_proxies[3]")),
            "{errs:#?}"
        );
    }

    #[test]
    fn upstream_duplicates_are_reported_beside_other_errors_and_warnings() {
        let Err(err) = load(
            r#"
default_policy = "bypass"
[[upstreams]]
name = "app"
url = "ftp://nowhere"

[[upstreams]]
name = "app"
url = "http://127.0.0.1:3001"

[[upstreams]]
name = "other"
url = "not a url"

[server]
trusted_proxies = ["10.0.0.1/8"]
"#,
        ) else {
            panic!("the config has errors");
        };
        let errs: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        // Entries with their own errors still take part in the name and
        // default checks, in the same pass as the other sections' errors.
        assert_has(&errs, "upstreams[0].url", "scheme");
        assert_has(&errs, "upstreams[1].name", "already used by upstreams[0]");
        assert_has(
            &errs,
            "upstreams[1].hosts",
            "only one upstream may leave hosts empty",
        );
        assert_has(
            &errs,
            "upstreams[2].hosts",
            "only one upstream may leave hosts empty",
        );
        assert_has(&errs, "server.trusted_proxies[0]", "host bits");
        let warns: Vec<String> = err.warnings.iter().map(ToString::to_string).collect();
        assert_has(&warns, "default_policy", "bypass");
    }

    #[test]
    fn a_bypass_default_policy_warns() {
        let loaded = ok(&format!("default_policy = \"bypass\"\n{MINIMAL}"));
        assert_has(&warnings(&loaded), "default_policy", "without signing in");
        let loaded = ok(&format!("default_policy = \"deny\"\n{MINIMAL}"));
        assert!(
            !warnings(&loaded).iter().any(|w| w.starts_with("default_policy")),
            "{:?}",
            warnings(&loaded)
        );
    }

    #[test]
    fn upstreams_are_checked() {
        let loaded = ok(r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"

[[upstreams]]
name = "wiki"
url = "https://wiki.internal:8443/base"
hosts = ["Wiki.Example.com", "docs.example.com."]
preserve_host = false
timeout = "5s"
header_case = "lower"
"#);
        assert_eq!(loaded.config.upstreams[0].header_case, HeaderCase::Title);
        let u = &loaded.config.upstreams[1];
        assert_eq!(u.header_case, HeaderCase::Lower);
        assert_eq!(u.hosts, ["wiki.example.com", "docs.example.com"]);
        assert_eq!(u.url.path(), "/base");
        assert!(!u.preserve_host);
        assert_eq!(u.timeout, Duration::from_secs(5));

        let errs = errors(
            r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"

[[upstreams]]
name = "app"
url = "http://127.0.0.1:3001"

[[upstreams]]
name = "a"
url = "http://127.0.0.1:3002"
hosts = ["a.example.com", "b.example.com:80"]
header_case = "preserve"

[[upstreams]]
name = ""
url = "http://user:pw@127.0.0.1:3003"
hosts = ["A.example.com"]

[[upstreams]]
hosts = ["c.example.com"]
"#,
        );
        assert_has(&errs, "upstreams[1].name", "already used by upstreams[0]");
        assert_has(
            &errs,
            "upstreams[1].hosts",
            "only one upstream may leave hosts empty",
        );
        assert_has(&errs, "upstreams[2].hosts[1]", "must not include a port");
        assert_has(
            &errs,
            "upstreams[2].header_case",
            "must be one of \"title\", \"lower\"",
        );
        assert_has(&errs, "upstreams[3].name", "must not be empty");
        assert_has(&errs, "upstreams[3].url", "credentials");
        assert_has(&errs, "upstreams[4].name", "is required");
        assert_has(&errs, "upstreams[4].url", "is required");
        let errs = errors(
            "[[upstreams]]\nname = \"a\"\nurl = \"http://a\"\nhosts = [\"x.example.com\"]\n\
             [[upstreams]]\nname = \"b\"\nurl = \"http://b\"\nhosts = [\"X.example.com\"]\n",
        );
        assert_has(&errs, "upstreams[1].hosts", "already routed to upstreams[0]");
    }

    #[test]
    fn upstream_ca_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "ca");
        let loaded = ok(&format!(
            "[[upstreams]]\nname = \"app\"\nurl = \"https://app.internal\"\nca = {}\n",
            toml_path(&cert)
        ));
        assert_eq!(loaded.config.upstreams[0].ca.len(), 1);
        let errs = errors(&format!(
            "[[upstreams]]\nname = \"app\"\nurl = \"https://app.internal\"\nca = {}\n",
            toml_path(&key)
        ));
        assert_has(&errs, "upstreams[0].ca", "no PEM certificate found");
    }
}
