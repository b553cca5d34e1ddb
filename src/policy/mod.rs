//! Access policy: which rule applies to a request, and what the caller's
//! session must show to pass it.
//!
//! Rules match on host, path (a regex searched in the normalized path),
//! method and client network; the first match wins and `default_policy`
//! applies when none does. `groups` and `max_age` are *requirements* of the
//! matched rule, never matching conditions: a signed-in caller outside the
//! groups gets 403, so a later catch-all can never let anyone around a group
//! rule. Everything here is plain data and functions of time; no I/O.

pub mod normalize;

use std::net::IpAddr;

use http::Method;

use crate::clock::UnixTime;
use crate::config::{PolicyKind, RuleConfig};
use crate::session::SessionClaims;

/// The compiled rule set.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<RuleConfig>,
    default: PolicyKind,
}

/// The facts about a request that rules match on.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Lower-cased host without port.
    pub host: &'a str,
    /// Normalized path.
    pub path: &'a str,
    pub method: &'a Method,
    /// Client address after `trusted_proxies`.
    pub client_addr: IpAddr,
}

/// What the matched rule (or the default) requires.
#[derive(Debug, Clone, Copy)]
pub struct Requirement<'a> {
    pub policy: PolicyKind,
    /// Groups of which the caller must be in one (empty = any signed-in user).
    pub groups: &'a [String],
    /// Step-up: the factor that satisfies the level must be at most this old (seconds).
    pub max_age: Option<u64>,
    /// Index of the matched rule; `None` for the default policy.
    pub rule: Option<usize>,
}

impl Requirement<'_> {
    /// The session level this requirement needs (0 for bypass and deny).
    pub fn level(&self) -> u8 {
        match self.policy {
            PolicyKind::OneFactor => 1,
            PolicyKind::TwoFactor => 2,
            PolicyKind::Bypass | PolicyKind::Deny => 0,
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward without a session (identity headers stripped, never set).
    Bypass,
    /// Forward as the session's user.
    Allow,
    /// The caller must (re-)authenticate to reach `level`; `step_up` when they
    /// have the level but their factor is older than `max_age`.
    Challenge { level: u8, step_up: bool },
    /// Signed in with enough level, but not in the rule's groups.
    Forbidden,
    /// The rule denies everyone.
    Deny,
}

impl Decision {
    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Bypass => "bypass",
            Decision::Allow => "allow",
            Decision::Challenge { .. } => "challenge",
            Decision::Forbidden => "forbidden",
            Decision::Deny => "deny",
        }
    }
}

impl Policy {
    /// Builds the policy from validated rules.
    pub fn new(rules: Vec<RuleConfig>, default: PolicyKind) -> Self {
        Self { rules, default }
    }

    /// The requirement for a request: the first matching rule, else the default.
    pub fn requirement(&self, facts: &RequestFacts<'_>) -> Requirement<'_> {
        for (i, rule) in self.rules.iter().enumerate() {
            if matches(rule, facts) {
                return Requirement {
                    policy: rule.policy,
                    groups: &rule.groups,
                    max_age: rule.max_age.map(|d| d.as_secs()),
                    rule: Some(i),
                };
            }
        }
        Requirement {
            policy: self.default,
            groups: &[],
            max_age: None,
            rule: None,
        }
    }
}

fn matches(rule: &RuleConfig, facts: &RequestFacts<'_>) -> bool {
    (rule.hosts.is_empty() || rule.hosts.iter().any(|h| h == facts.host))
        && (rule.methods.is_empty() || rule.methods.iter().any(|m| m == facts.method))
        && (rule.networks.is_empty() || rule.networks.iter().any(|n| n.contains(&facts.client_addr)))
        && rule.path.as_ref().is_none_or(|re| re.is_match(facts.path))
}

/// Decides a request given its requirement and the caller's verified session
/// (already checked for signature, expiry and revocation) and group membership.
pub fn decide(
    req: &Requirement<'_>,
    session: Option<(&SessionClaims, &[String])>,
    now: UnixTime,
) -> Decision {
    let needed = match req.policy {
        PolicyKind::Bypass => return Decision::Bypass,
        PolicyKind::Deny => return Decision::Deny,
        PolicyKind::OneFactor => 1,
        PolicyKind::TwoFactor => 2,
    };
    let Some((claims, groups)) = session else {
        return Decision::Challenge {
            level: needed,
            step_up: false,
        };
    };
    if claims.lvl < needed {
        return Decision::Challenge {
            level: needed,
            step_up: false,
        };
    }
    if let Some(max_age) = req.max_age {
        // The factor that gave the needed level: sign-in for one factor, the
        // second factor for two.
        let at = if needed >= 2 {
            claims.mfa.unwrap_or(i64::MIN)
        } else {
            claims.auth
        };
        if now.saturating_sub(at) > i64::try_from(max_age).unwrap_or(i64::MAX) {
            return Decision::Challenge {
                level: needed,
                step_up: true,
            };
        }
    }
    if !req.groups.is_empty() && !req.groups.iter().any(|g| groups.iter().any(|mine| mine == g)) {
        return Decision::Forbidden;
    }
    Decision::Allow
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rule(path: &str, policy: PolicyKind) -> RuleConfig {
        RuleConfig {
            hosts: vec![],
            path: Some(regex::Regex::new(path).unwrap()),
            methods: vec![],
            networks: vec![],
            policy,
            groups: vec![],
            max_age: None,
        }
    }

    fn facts<'a>(host: &'a str, path: &'a str, method: &'a Method) -> RequestFacts<'a> {
        RequestFacts {
            host,
            path,
            method,
            client_addr: "192.0.2.7".parse().unwrap(),
        }
    }

    fn claims(lvl: u8, auth: i64, mfa: Option<i64>) -> SessionClaims {
        SessionClaims {
            sid: "s".into(),
            sin: "i".into(),
            uid: "u".into(),
            lvl,
            amr: vec![],
            auth,
            mfa,
            iat: auth,
            last: auth,
            ep: 0,
        }
    }

    #[test]
    fn first_match_wins_and_default_applies() {
        let p = Policy::new(
            vec![
                rule("^/static/", PolicyKind::Bypass),
                rule("^/", PolicyKind::OneFactor),
            ],
            PolicyKind::TwoFactor,
        );
        let get = Method::GET;
        assert_eq!(
            p.requirement(&facts("a", "/static/x.css", &get)).policy,
            PolicyKind::Bypass
        );
        assert_eq!(p.requirement(&facts("a", "/x", &get)).rule, Some(1));
        let p = Policy::new(vec![rule("^/static/", PolicyKind::Bypass)], PolicyKind::TwoFactor);
        let r = p.requirement(&facts("a", "/x", &get));
        assert_eq!((r.policy, r.rule), (PolicyKind::TwoFactor, None));
    }

    #[test]
    fn all_conditions_must_hold() {
        let mut r = rule("^/api/", PolicyKind::Bypass);
        r.hosts = vec!["app.example.com".into()];
        r.methods = vec![Method::GET];
        r.networks = vec!["192.0.2.0/24".parse().unwrap()];
        let p = Policy::new(vec![r], PolicyKind::Deny);
        let (get, post) = (Method::GET, Method::POST);
        assert_eq!(
            p.requirement(&facts("app.example.com", "/api/x", &get)).policy,
            PolicyKind::Bypass
        );
        assert_eq!(
            p.requirement(&facts("other.example.com", "/api/x", &get)).policy,
            PolicyKind::Deny
        );
        assert_eq!(
            p.requirement(&facts("app.example.com", "/api/x", &post)).policy,
            PolicyKind::Deny
        );
        assert_eq!(
            p.requirement(&facts("app.example.com", "/x/api/", &get)).policy,
            PolicyKind::Deny
        );
        let mut f = facts("app.example.com", "/api/x", &get);
        f.client_addr = "198.51.100.1".parse().unwrap();
        assert_eq!(p.requirement(&f).policy, PolicyKind::Deny);
    }

    #[test]
    fn levels_and_challenges() {
        let p = Policy::new(vec![rule("^/one", PolicyKind::OneFactor)], PolicyKind::TwoFactor);
        let get = Method::GET;
        let one = p.requirement(&facts("a", "/one", &get));
        let two = p.requirement(&facts("a", "/two", &get));
        let c1 = claims(1, 100, None);
        let c2 = claims(2, 100, Some(110));
        assert_eq!(
            decide(&one, None, 200),
            Decision::Challenge {
                level: 1,
                step_up: false
            }
        );
        assert_eq!(decide(&one, Some((&c1, &[])), 200), Decision::Allow);
        assert_eq!(
            decide(&two, Some((&c1, &[])), 200),
            Decision::Challenge {
                level: 2,
                step_up: false
            }
        );
        assert_eq!(decide(&two, Some((&c2, &[])), 200), Decision::Allow);
        assert_eq!(decide(&one, Some((&c2, &[])), 200), Decision::Allow);
    }

    #[test]
    fn groups_are_a_requirement_not_a_condition() {
        let mut admin = rule("^/admin", PolicyKind::OneFactor);
        admin.groups = vec!["admins".into()];
        // A later catch-all bypass must not let anyone around the group rule.
        let p = Policy::new(vec![admin, rule("^/", PolicyKind::Bypass)], PolicyKind::Deny);
        let get = Method::GET;
        let req = p.requirement(&facts("a", "/admin/x", &get));
        assert_eq!(req.rule, Some(0));
        let c = claims(1, 100, None);
        assert_eq!(
            decide(&req, None, 100),
            Decision::Challenge {
                level: 1,
                step_up: false
            }
        );
        assert_eq!(
            decide(&req, Some((&c, &["users".to_string()])), 100),
            Decision::Forbidden
        );
        assert_eq!(
            decide(&req, Some((&c, &["admins".to_string()])), 100),
            Decision::Allow
        );
    }

    #[test]
    fn max_age_steps_up() {
        let mut r = rule("^/pay", PolicyKind::TwoFactor);
        r.max_age = Some(Duration::from_secs(900));
        let p = Policy::new(vec![r], PolicyKind::OneFactor);
        let get = Method::GET;
        let req = p.requirement(&facts("a", "/pay", &get));
        let c = claims(2, 0, Some(1_000));
        assert_eq!(decide(&req, Some((&c, &[])), 1_900), Decision::Allow);
        assert_eq!(
            decide(&req, Some((&c, &[])), 1_901),
            Decision::Challenge {
                level: 2,
                step_up: true
            }
        );
    }

    #[test]
    fn bypass_and_deny_ignore_sessions() {
        let p = Policy::new(vec![rule("^/open", PolicyKind::Bypass)], PolicyKind::Deny);
        let get = Method::GET;
        let c = claims(2, 0, Some(0));
        assert_eq!(
            decide(&p.requirement(&facts("a", "/open", &get)), Some((&c, &[])), 0),
            Decision::Bypass
        );
        assert_eq!(
            decide(&p.requirement(&facts("a", "/closed", &get)), Some((&c, &[])), 0),
            Decision::Deny
        );
    }
}
