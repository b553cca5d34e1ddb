//! `default_policy`, `case_insensitive_paths` and `[[rules]]`.

use std::time::Duration;

use regex::RegexBuilder;

use super::context::Ctx;
use super::duration::parse_duration;
use super::fields::{choice, cidrs, each, hosts, non_empty_strings};
use super::raw::RawRule;
use super::shape::array_section;
use super::{PolicyKind, RuleConfig, defaults};

const POLICIES: [(&str, PolicyKind); 4] = [
    ("bypass", PolicyKind::Bypass),
    ("one_factor", PolicyKind::OneFactor),
    ("two_factor", PolicyKind::TwoFactor),
    ("deny", PolicyKind::Deny),
];

pub(super) fn convert_default_policy(cx: &mut Ctx<'_>, value: Option<toml::Value>) -> Option<PolicyKind> {
    let word = match value {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(other) => {
            cx.error(
                "default_policy",
                format!("must be a string, not a {}", other.type_str()),
            );
            return None;
        }
    };
    let policy = choice(cx, "default_policy", word, defaults::DEFAULT_POLICY, &POLICIES);
    if policy == PolicyKind::Bypass {
        cx.warn(
            "default_policy",
            "\"bypass\" lets every path no rule matches through without signing in; \
             prefer \"two_factor\" (or \"deny\") with bypass rules for the public paths",
        );
    }
    Some(policy)
}

pub(super) fn convert_case_insensitive_paths(cx: &mut Ctx<'_>, value: Option<toml::Value>) -> Option<bool> {
    match value {
        None => Some(defaults::CASE_INSENSITIVE_PATHS),
        Some(toml::Value::Boolean(b)) => Some(b),
        Some(other) => {
            cx.error(
                "case_insensitive_paths",
                format!("must be true or false, not a {}", other.type_str()),
            );
            None
        }
    }
}

pub(super) fn convert_rules(
    cx: &mut Ctx<'_>,
    value: Option<toml::Value>,
    case_insensitive: bool,
) -> Option<Vec<RuleConfig>> {
    let items = array_section::<RawRule>(cx, "rules", value)?;
    let before = cx.error_count();
    let malformed = items.iter().any(Option::is_none);
    let mut out = Vec::new();
    let mut catch_all: Option<usize> = None;
    for (i, raw) in items.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let Some(rule) = convert_rule(cx, i, raw, case_insensitive) else {
            continue;
        };
        if let Some(first) = catch_all {
            cx.warn(
                format!("rules[{i}]"),
                format!("unreachable: rules[{first}] has no conditions and matches every request"),
            );
        } else if rule.hosts.is_empty()
            && rule.path.is_none()
            && rule.methods.is_empty()
            && rule.networks.is_empty()
        {
            catch_all = Some(i);
        }
        out.push(rule);
    }
    (!malformed && cx.error_count() == before).then_some(out)
}

/// Spellings in a rule's path regex that a normalized path never contains
/// (see [`crate::policy::normalize`]), so the rule could never match there: a
/// raw non-ASCII character (paths carry it percent-encoded, upper-case hex),
/// an escape with lower-case hex (unless matching ignores case), and an
/// escape of a character that is decoded (`%24` is always `$`).
fn never_matching_spellings(pattern: &str, case_insensitive: bool) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(c) = pattern.chars().find(|c| !c.is_ascii()) {
        let mut buf = [0; 4];
        let encoded: String = c
            .encode_utf8(&mut buf)
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect();
        out.push(format!(
            "contains the raw non-ASCII character {c:?}, which never matches: paths are matched \
             percent-encoded with upper-case hex, so write {encoded} (in {pattern:?})"
        ));
    }
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).copied().filter(u8::is_ascii_hexdigit);
        let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) else {
            i += 1;
            continue;
        };
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        let text = &pattern[i..i + 3];
        let hex_val = |d: u8| {
            char::from(d)
                .to_digit(16)
                .and_then(|v| u8::try_from(v).ok())
                .unwrap_or(0)
        };
        let v = hex_val(h) * 16 + hex_val(l);
        if crate::policy::normalize::decodes(v) {
            let c = char::from(v);
            out.push(format!(
                "the escape {text} never matches: paths are matched with it decoded, so write {c:?} \
                 (escaped for the regex if needed) (in {pattern:?})"
            ));
        } else if !case_insensitive && text.bytes().any(|b| b.is_ascii_lowercase()) {
            out.push(format!(
                "the lower-case escape {text} never matches: paths are matched with upper-case hex, \
                 so write {} (in {pattern:?})",
                text.to_ascii_uppercase()
            ));
        }
        i += 3;
    }
    out
}

fn convert_rule(cx: &mut Ctx<'_>, i: usize, raw: RawRule, case_insensitive: bool) -> Option<RuleConfig> {
    let k = |field: &str| format!("rules[{i}].{field}");
    let before = cx.error_count();
    let hosts = hosts(cx, &k("hosts"), raw.hosts);
    // With `case_insensitive_paths` the upstream ignores case, so must the rules.
    let compiled = |pattern: &str| {
        RegexBuilder::new(pattern)
            .case_insensitive(case_insensitive)
            .build()
    };
    if let Some(pattern) = raw.path.as_deref() {
        for problem in never_matching_spellings(pattern, case_insensitive) {
            cx.error(k("path"), problem);
        }
    }
    let path = raw.path.as_deref().and_then(|pattern| match compiled(pattern) {
        Ok(re) => Some(re),
        Err(e) => {
            // regex's message draws a caret under the pattern over several
            // lines; keep one problem per line and name the pattern instead.
            let detail = e.to_string();
            let last = detail.lines().last().unwrap_or_default();
            let last = last.strip_prefix("error: ").unwrap_or(last);
            cx.error(k("path"), format!("invalid regex: {last} (in {pattern:?})"));
            None
        }
    });
    let methods = each(
        cx,
        &k("methods"),
        raw.methods,
        |m| match http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
            // The gateway refuses any other spelling at the door, so such a
            // rule could never match.
            Ok(method) if crate::context::is_canonical_method(&method) => Ok(method),
            _ => Err(format!("is not an HTTP method (letters, '-' and '_'; got {m:?})")),
        },
    );
    let networks = cidrs(cx, &k("networks"), raw.networks);
    let policy = match raw.policy {
        None => {
            cx.error(
                k("policy"),
                "is required (bypass, one_factor, two_factor or deny)",
            );
            None
        }
        some => Some(choice(
            cx,
            &k("policy"),
            some,
            defaults::DEFAULT_POLICY,
            &POLICIES,
        )),
    };
    let groups = non_empty_strings(cx, &k("groups"), raw.groups);
    let max_age = raw.max_age.and_then(|text| match parse_duration(&text) {
        Ok(d) if d < Duration::from_secs(1) => {
            cx.error(k("max_age"), "must be at least 1s");
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            cx.error(k("max_age"), e);
            None
        }
    });
    if let Some(p @ (PolicyKind::Bypass | PolicyKind::Deny)) = policy {
        let name = if p == PolicyKind::Bypass { "bypass" } else { "deny" };
        if !groups.is_empty() {
            cx.error(
                k("groups"),
                format!("has no effect on a {name} rule (nobody signs in)"),
            );
        }
        if max_age.is_some() {
            cx.error(
                k("max_age"),
                format!("has no effect on a {name} rule (nobody signs in)"),
            );
        }
    }
    if policy == Some(PolicyKind::Bypass)
        && let Some(pattern) = &raw.path
        && !pattern.starts_with('^')
    {
        cx.warn(
            k("path"),
            "unanchored bypass path matches anywhere in the path; start it with \"^\"",
        );
    }
    let policy = policy?;
    (cx.error_count() == before).then_some(RuleConfig {
        hosts,
        path,
        methods,
        networks,
        policy,
        groups,
        max_age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn rule_paths_that_can_never_match_a_normalized_path_are_refused() {
        let errs = errors(&with(
            r#"
[[rules]]
path = "^/über/"
policy = "deny"

[[rules]]
path = "^/caf%c3%a9/"
policy = "deny"

[[rules]]
path = "^/odata/%24metadata"
policy = "deny"

[[rules]]
path = "^/a%3ab"
policy = "deny"
"#,
        ));
        assert_has(&errs, "rules[0].path", "raw non-ASCII character 'ü'");
        assert_has(&errs, "rules[0].path", "write %C3%BC");
        assert_has(&errs, "rules[1].path", "lower-case escape %c3 never matches");
        assert_has(&errs, "rules[1].path", "write %A9");
        assert_has(&errs, "rules[2].path", "the escape %24 never matches");
        assert_has(&errs, "rules[3].path", "the escape %3a never matches");
        // The spellings a normalized path has load, and so does a kept escape.
        ok(&with(
            r#"
[[rules]]
path = "^/%C3%BCber/"
policy = "deny"

[[rules]]
path = "^/odata/\\$metadata(/|$)"
policy = "deny"

[[rules]]
path = "^/a%20b%3F%25/"
policy = "deny"
"#,
        ));
        // Matching that ignores case matches lower-case escapes too.
        ok(&format!(
            "case_insensitive_paths = true\n{}",
            with("[[rules]]\npath = \"^/caf%c3%a9/\"\npolicy = \"deny\"\n")
        ));
    }

    #[test]
    fn rules_are_parsed() {
        let loaded = ok(&with(
            r#"
[[rules]]
hosts = ["App.Example.com"]
path = "^/static/"
methods = ["get", "HEAD"]
networks = ["10.0.0.0/8", "::1"]
policy = "bypass"

[[rules]]
path = "^/admin/"
policy = "two_factor"
groups = ["admins"]
max_age = "15m"
"#,
        ));
        let r = &loaded.config.rules;
        assert_eq!(r[0].hosts, ["app.example.com"]);
        assert_eq!(r[0].methods, [http::Method::GET, http::Method::HEAD]);
        assert_eq!(r[0].networks.len(), 2);
        assert_eq!(r[1].policy, PolicyKind::TwoFactor);
        assert_eq!(r[1].groups, ["admins"]);
        assert_eq!(r[1].max_age, Some(Duration::from_secs(900)));
        assert!(
            loaded.warnings.iter().all(|w| !w.key.starts_with("rules")),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn rules_are_checked() {
        let errs = errors(&with(
            r#"
[[rules]]
path = "^/health"
policy = "bypass"
groups = ["ops"]

[[rules]]
path = "^/old"
policy = "deny"
max_age = "5m"

[[rules]]
methods = ["GE T", "GET!", "M-SEARCH", "propfind"]
networks = ["10.0.0.0/40"]
policy = "two_factor"
max_age = "500ms"

[[rules]]
hosts = ["x.example.com"]
"#,
        ));
        assert_has(&errs, "rules[0].groups", "no effect on a bypass rule");
        assert_has(&errs, "rules[1].max_age", "no effect on a deny rule");
        assert_has(&errs, "rules[2].methods[0]", "not an HTTP method");
        assert_has(&errs, "rules[2].methods[1]", "not an HTTP method");
        assert!(
            !errs
                .iter()
                .any(|e| e.contains("methods[2]") || e.contains("methods[3]")),
            "{errs:?}"
        );
        assert_has(&errs, "rules[2].networks[0]", "CIDR");
        assert_has(&errs, "rules[2].max_age", "at least 1s");
        assert_has(&errs, "rules[3].policy", "is required");
        let errs = errors(&with("rules = 5\n"));
        assert_has(&errs, "upstreams[0].rules", "unknown key");
        let errs = errors(&format!("rules = 5\n{MINIMAL}"));
        assert_has(&errs, "rules", "array of tables");
    }

    #[test]
    fn rule_warnings() {
        let loaded = ok(&with(
            "[[rules]]\npath = \"/static/\"\npolicy = \"bypass\"\n[[rules]]\npolicy = \"one_factor\"\n\
             [[rules]]\npath = \"^/x\"\npolicy = \"deny\"\n",
        ));
        let w = warnings(&loaded);
        assert_has(
            &w,
            "rules[0].path",
            "unanchored bypass path matches anywhere in the path",
        );
        assert_has(&w, "rules[2]", "unreachable: rules[1]");
    }
}
