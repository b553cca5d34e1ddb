//! Access policy: which rule applies to a request, and what the caller's
//! session must show to pass it.
//!
//! Rules match on host, path (a regex searched in the normalized path),
//! method and client network; the first match wins and `default_policy`
//! applies when none does. `groups` and `max_age` are *requirements* of the
//! matched rule, never matching conditions: a signed-in caller outside the
//! groups gets 403, so a later catch-all can never let anyone around a group
//! rule. Everything here is plain data and functions of time; no I/O.

pub mod counters;
pub mod normalize;

use std::net::IpAddr;

use http::Method;

use crate::clock::UnixTime;
use crate::config::{PolicyKind, RuleConfig};
use crate::session::SessionClaims;

/// The most methods a request may name besides its own (query `_method`s
/// and override headers together); more answer 400, as deciding on each
/// costs a pass over the rules.
pub const MAX_METHOD_ALIASES: usize = 4;

/// What a request makes an app read besides its own method and path, to be
/// decided on as well (see [`Readings::of`]).
#[derive(Debug, Default)]
pub struct Readings<'h> {
    /// Other methods it may run as.
    pub methods: Vec<Method>,
    /// A COPY's or MOVE's `Destination` path: raw, and normalized.
    pub destination: Option<(&'h str, std::borrow::Cow<'h, str>)>,
}

impl<'h> Readings<'h> {
    /// The other methods an app may run a request as: GET for HEAD
    /// (frameworks answer HEAD with the GET handler, so a rule for GET covers
    /// it), and for a POST each method its query's `_method` names (Laravel
    /// and Symfony take it, PHP the last of several, so every one counts) and
    /// each its override headers name, in any spelling of the header and
    /// each entry of a list (`X-HTTP-Method-Override`, `X-HTTP-Method`,
    /// `X-Method-Override`: stripped before an inline request is forwarded,
    /// but a front proxy in forward-auth passes them on); then, when one of
    /// the methods is COPY or MOVE, the path of its WebDAV `Destination`
    /// ([`normalize::destination`]). A form body's `_method` cannot be seen:
    /// see the README. No allocation for a request with none of these.
    pub fn of(
        method: &Method,
        query: Option<&str>,
        headers: &'h http::HeaderMap,
        host: &str,
    ) -> Result<Self, normalize::PathError> {
        let methods = method_aliases(method, query, headers)?;
        let dav = |m: &Method| matches!(m.as_str(), "COPY" | "MOVE");
        let destination = if dav(method) || methods.iter().any(dav) {
            normalize::destination(headers, host)?
        } else {
            None
        };
        Ok(Readings { methods, destination })
    }
}

fn method_aliases(
    method: &Method,
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> Result<Vec<Method>, normalize::PathError> {
    if method == Method::HEAD {
        return Ok(vec![Method::GET]);
    }
    let mut out: Vec<Method> = Vec::new();
    if method != Method::POST {
        return Ok(out);
    }
    let mut add = |name: &[u8]| -> Result<(), normalize::PathError> {
        for name in name.split(|&b| b == b',') {
            let name = name.trim_ascii().to_ascii_uppercase();
            if let Ok(m) = Method::from_bytes(&name)
                && m != Method::POST
                && !out.contains(&m)
            {
                if out.len() == MAX_METHOD_ALIASES {
                    return Err(normalize::PathError::MethodOverrides);
                }
                out.push(m);
            }
        }
        Ok(())
    };
    const OVERRIDES: [&[u8]; 3] = [b"x-http-method-override", b"x-http-method", b"x-method-override"];
    for (name, value) in headers {
        if OVERRIDES
            .iter()
            .any(|o| crate::proxy::headers::same_name_loosely(name.as_str().as_bytes(), o))
        {
            add(value.as_bytes())?;
        }
    }
    // Any spelling PHP reads as `_method`: it decodes, cuts a name at NUL,
    // drops leading spaces and turns ` `, `.` and `[` into `_`; any case.
    if let Some(query) = query
        .filter(|q| q.contains('%') || q.as_bytes().windows(6).any(|w| w.eq_ignore_ascii_case(b"method")))
    {
        let is_override = |k: &str| {
            let k = k.split('\0').next().unwrap_or("").trim_start_matches(' ');
            k.len() == 7
                && k.bytes().zip(b"_method").all(|(a, &b)| {
                    let a = if matches!(a, b' ' | b'.' | b'[') {
                        b'_'
                    } else {
                        a.to_ascii_lowercase()
                    };
                    a == b
                })
        };
        for (_, value) in url::form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| is_override(k)) {
            add(value.as_bytes())?;
        }
    }
    Ok(out)
}

/// The compiled rule set.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<RuleConfig>,
    default: PolicyKind,
    /// `/admin` for each rule whose path starts with a literal directory,
    /// `^/admin/` (see [`Policy::evaluate`]).
    directories: Vec<String>,
    /// Deny paths with a Windows alias (see [`normalize::windows_alias`]).
    windows_aliases: bool,
    /// Decisions per rule, for `/metrics`.
    counters: std::sync::Arc<counters::RuleCounters>,
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
    /// Deny whatever the rules say (a Windows alias, too many readings).
    const DENY: Requirement<'static> = Requirement {
        policy: PolicyKind::Deny,
        groups: &[],
        max_age: None,
        rule: None,
    };

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
        Self {
            counters: counters::RuleCounters::for_rules(&rules, default),
            directories: rules
                .iter()
                .filter_map(|r| r.path.as_ref().and_then(|re| literal_directory(re.as_str())))
                .collect(),
            rules,
            default,
            windows_aliases: false,
        }
    }

    /// Stops showing this policy's decision counters (a reload replaced it);
    /// the series stay while another live policy was built from the same rules.
    pub fn retire_counters(&self) {
        self.counters.retire();
    }

    /// Counts one request's decision under the rule that gave it (see
    /// [`counters`]).
    pub fn count(&self, requirement: &Requirement<'_>, decision: Decision) {
        self.counters.count(requirement.rule, decision);
    }

    /// With `case_insensitive_paths` (IIS, Windows file servers): deny every
    /// path with a segment that Windows resolves through an alias the rules
    /// cannot see (an NTFS stream, an 8.3 short name, an ASP.NET cookieless
    /// segment; see [`normalize::windows_alias`]).
    pub fn deny_windows_aliases(mut self, on: bool) -> Self {
        self.windows_aliases = on;
        self
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

/// The requirements of every reading of a request's path (see
/// [`Policy::evaluate`]): at most eight (the path and its seven other
/// readings), kept inline.
#[derive(Debug, Clone, Copy)]
pub struct Evaluation<'p> {
    requirements: [Option<Requirement<'p>>; 8],
}

impl<'p> Evaluation<'p> {
    /// The distinct requirements, the normalized path's own first.
    pub fn requirements(&self) -> impl Iterator<Item = &Requirement<'p>> {
        self.requirements.iter().flatten()
    }

    /// True when some reading needs a session to decide (not bypass or deny).
    pub fn needs_session(&self) -> bool {
        self.requirements()
            .any(|r| matches!(r.policy, PolicyKind::OneFactor | PolicyKind::TwoFactor))
    }

    /// This evaluation with the requirements of `other` (another path's
    /// readings) that it does not hold yet; more distinct requirements than
    /// fit: deny, as [`Policy::evaluate`] does.
    #[must_use]
    pub fn with(mut self, other: &Evaluation<'p>) -> Self {
        for r in other.requirements() {
            // By rule and policy: the default and a Windows alias's deny both
            // have no rule.
            if self
                .requirements()
                .any(|q| q.rule == r.rule && q.policy == r.policy)
            {
                continue;
            }
            match self.requirements.iter_mut().find(|slot| slot.is_none()) {
                Some(slot) => *slot = Some(*r),
                None => {
                    self.requirements = [None; 8];
                    self.requirements[0] = Some(Requirement::DENY);
                    return self;
                }
            }
        }
        self
    }

    /// The strictest decision over every reading, and the requirement that
    /// gave it (the first reading's on a tie). Precedence: deny, then
    /// forbidden, then challenge (for the highest level asked; step-up when
    /// any reading asks for it), then allow, then bypass.
    pub fn decide(
        &self,
        session: Option<(&SessionClaims, &[String])>,
        now: UnixTime,
    ) -> (Decision, Requirement<'p>) {
        let mut reqs = self.requirements();
        let first = reqs.next().copied().unwrap_or(Requirement {
            // `evaluate` always holds the path's own requirement; fail closed.
            policy: PolicyKind::Deny,
            groups: &[],
            max_age: None,
            rule: None,
        });
        let mut best = (decide(&first, session, now), first);
        for req in reqs {
            best = stricter(best, (decide(req, session, now), *req));
        }
        best
    }
}

/// The stricter of two outcomes (`a` on a tie); two challenges merge.
fn stricter<'p>(
    a: (Decision, Requirement<'p>),
    b: (Decision, Requirement<'p>),
) -> (Decision, Requirement<'p>) {
    match (a.0, b.0) {
        (
            Decision::Challenge {
                level: la,
                step_up: sa,
            },
            Decision::Challenge {
                level: lb,
                step_up: sb,
            },
        ) => (
            Decision::Challenge {
                level: la.max(lb),
                step_up: sa || sb,
            },
            if lb > la { b.1 } else { a.1 },
        ),
        (da, db) if rank(db) > rank(da) => b,
        _ => a,
    }
}

/// How strict a decision is, for combining readings.
fn rank(d: Decision) -> u8 {
    match d {
        Decision::Bypass => 0,
        Decision::Allow => 1,
        Decision::Challenge { .. } => 2,
        Decision::Forbidden => 3,
        Decision::Deny => 4,
    }
}

impl Policy {
    /// The requirements of a request under every reading an upstream may give
    /// its normalized path (`facts.path`): the path itself (nginx, Apache),
    /// without `;params` (Tomcat, Jetty, Spring), with trailing dots and spaces
    /// trimmed (IIS), both, and each without a trailing `/` (Express, Spring
    /// MVC; see [`normalize::readings`]; for a rule's own directory, such as
    /// `/public/` under `^/public/`, that reading counts only when a rule
    /// matches it, not through the default policy). A clean path has one
    /// reading and costs one scan more than [`Policy::requirement`].
    pub fn evaluate<'p>(&'p self, facts: &RequestFacts<'_>) -> Evaluation<'p> {
        let mut requirements = [None; 8];
        if self.windows_aliases && normalize::windows_alias(facts.path) {
            requirements[0] = Some(Requirement::DENY);
            return Evaluation { requirements };
        }
        requirements[0] = Some(self.requirement(facts));
        let mut n = 1;
        // `/public/` under a rule `^/public/`: the rule's match is the whole
        // path, so the path is that rule's directory itself. Its reading
        // without the slash (`/public`, which Express and Spring MVC route
        // as `/public/`) is then not decided by the default policy, which is
        // for paths no rule names: a strict default would otherwise refuse
        // every such rule's own directory. Any rule matching that reading
        // still counts (`^/vault$` covers `/vault/`), and a rule matching
        // only part of the path (`/static/`, `/$`) leaves the default in.
        let own_directory = facts.path.len() > 1
            && facts.path.ends_with('/')
            && requirements[0]
                .and_then(|r| r.rule)
                .and_then(|i| self.rules[i].path.as_ref())
                .and_then(|re| re.find(facts.path))
                .is_some_and(|m| m.start() == 0 && m.end() == facts.path.len());
        // (A raw path, as forward-auth decides on, may end in a character
        // of several bytes: cut at the `/` only.)
        let cut = facts.path.strip_suffix('/').unwrap_or(facts.path);
        let mut full = false;
        let mut add = |r: Requirement<'p>, requirements: &mut [Option<Requirement<'p>>; 8]| {
            let seen = requirements
                .iter()
                .flatten()
                .any(|q: &Requirement<'_>| q.rule == r.rule);
            if !seen {
                if n < requirements.len() {
                    requirements[n] = Some(r);
                    n += 1;
                } else {
                    full = true;
                }
            }
        };
        // `/admin` under a rule `^/admin/`: Express (`app.use("/admin", ..)`)
        // and servlet mappings (`/admin/*`) serve it as that directory, so the
        // directory's rule applies to it as well (only rules, not the default:
        // this reading can only make the decision stricter).
        let as_directory = |path: &str| -> Option<Requirement<'p>> {
            if path.ends_with('/') || !self.directories.iter().any(|d| d.eq_ignore_ascii_case(path)) {
                return None;
            }
            let dir = format!("{path}/");
            Some(self.requirement(&RequestFacts { path: &dir, ..*facts })).filter(|r| r.rule.is_some())
        };
        if let Some(r) = as_directory(facts.path) {
            add(r, &mut requirements);
        }
        for reading in normalize::readings(facts.path) {
            let r = self.requirement(&RequestFacts {
                path: reading.as_ref(),
                ..*facts
            });
            if own_directory && r.rule.is_none() && reading == cut {
                continue;
            }
            add(r, &mut requirements);
            if let Some(r) = as_directory(&reading) {
                add(r, &mut requirements);
            }
        }
        if full {
            // More distinct requirements than slots: never decide on fewer
            // than all of them.
            requirements = [None; 8];
            requirements[0] = Some(Requirement::DENY);
        }
        Evaluation { requirements }
    }

    /// Decides a request on the strictest reading of its path: the one
    /// decision of inline mode and forward-auth. `session` is the caller's
    /// verified session and groups, if any. Returns the decision and the
    /// requirement that gave it (for logs and metrics).
    pub fn decide_request(
        &self,
        facts: &RequestFacts<'_>,
        session: Option<(&SessionClaims, &[String])>,
        now: UnixTime,
    ) -> (Decision, Requirement<'_>) {
        self.evaluate(facts).decide(session, now)
    }
}

/// The directory a rule path starts with, without its `/`: `/admin` for
/// `^/admin/` or `^/admin/.*\.php$`; `None` unless the regex starts with `^`
/// and a literal path ending in `/` (characters with no meaning in a regex).
fn literal_directory(regex: &str) -> Option<String> {
    let rest = regex.strip_prefix('^')?;
    let literal: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "/_-%~!,=:@;'".contains(*c))
        .collect();
    let dir = literal.get(..literal.rfind('/')?)?;
    (dir.len() > 1 && dir.starts_with('/')).then(|| dir.to_owned())
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

    // --- the strictest reading ---------------------------------------------

    /// bypass / one_factor / two_factor / deny / group rules, a lax default.
    fn hostile_policy(case_insensitive: bool) -> Policy {
        let re = |p: &str| {
            regex::RegexBuilder::new(p)
                .case_insensitive(case_insensitive)
                .build()
                .unwrap()
        };
        let r = |p: &str, policy| RuleConfig {
            path: Some(re(p)),
            ..rule("^$", policy)
        };
        let mut admin = r("^/admin/", PolicyKind::OneFactor);
        admin.groups = vec!["admins".into()];
        let mut pay = r("^/pay(/|$)", PolicyKind::TwoFactor);
        pay.max_age = Some(Duration::from_secs(600));
        Policy::new(
            vec![
                r("^/public/", PolicyKind::Bypass),
                admin,
                pay,
                r("^/secret(/|$)", PolicyKind::Deny),
                r("^/app/", PolicyKind::OneFactor),
                r(r"^/odata/\$metadata", PolicyKind::Deny),
                r("^/%C3%BCber/", PolicyKind::Deny),
                r("^/vault$", PolicyKind::Deny),
            ],
            PolicyKind::Bypass,
        )
    }

    /// Strictness for comparing outcomes: the rank, then the challenged level.
    fn strictness(d: Decision) -> (u8, u8) {
        match d {
            Decision::Challenge { level, .. } => (rank(d), level),
            d => (rank(d), 0),
        }
    }

    fn decision(p: &Policy, path: &str, session: Option<(&SessionClaims, &[String])>) -> Decision {
        let get = Method::GET;
        p.decide_request(&facts("a", path, &get), session, 1_000).0
    }

    #[test]
    fn path_parameters_cannot_walk_around_rules() {
        let p = hostile_policy(false);
        let anon = Decision::Challenge {
            level: 1,
            step_up: false,
        };
        for path in [
            "/admin;x/secret",
            "/admin;/secret",
            "/;x/admin/secret",
            "/admin;jsessionid=1/x",
            "/admin./x",
            "/admin%20/x",
            "/admin.;x/y",
            "/admin;x./y",
        ] {
            assert_eq!(decision(&p, path, None), anon, "{path}");
        }
        assert_eq!(decision(&p, "/secret;x", None), Decision::Deny);
        assert_eq!(decision(&p, "/secret.", None), Decision::Deny);
        assert_eq!(
            decision(&p, "/pay;x/now", None),
            Decision::Challenge {
                level: 2,
                step_up: false
            }
        );
        // The group requirement holds under the other reading too.
        let c1 = claims(1, 900, None);
        let users = ["users".to_string()];
        let admins = ["admins".to_string()];
        assert_eq!(
            decision(&p, "/admin;x/secret", Some((&c1, &users))),
            Decision::Forbidden
        );
        // ...and lets the right people through, path parameters and all.
        assert_eq!(
            decision(&p, "/admin/x;jsessionid=1", Some((&c1, &admins))),
            Decision::Allow
        );
        assert_eq!(
            decision(&p, "/app;jsessionid=1/x", Some((&c1, &users))),
            Decision::Allow
        );
        // Bypass keeps bypassing with parameters.
        assert_eq!(decision(&p, "/public/x;v=1", None), Decision::Bypass);
        // Allow beats bypass: `/public;x/` is `/public/` to Tomcat but the
        // default to nginx (bypass here), so it stays bypass; `/app/x` with
        // parameters on the bypassed reading's side still needs the session.
        assert_eq!(decision(&p, "/public;x/y", None), Decision::Bypass);
    }

    #[test]
    fn every_spelling_of_a_character_gets_the_same_decision() {
        let p = hostile_policy(false);
        let c2 = claims(2, 900, Some(950));
        let admins = ["admins".to_string()];
        for path in [
            "/odata/$metadata",
            "/odata/%24metadata",
            "/%C3%BCber/x",
            "/%c3%bcber/x",
            "/über/x",
            "/%C3%BCber/x",
        ] {
            let normal = normalize::normalize(path).unwrap();
            assert_eq!(decision(&p, &normal, None), Decision::Deny, "{path}");
            assert_eq!(
                decision(&p, &normal, Some((&c2, &admins))),
                Decision::Deny,
                "{path}"
            );
        }
    }

    #[test]
    fn a_trailing_slash_does_not_walk_around_an_anchored_rule() {
        let p = hostile_policy(false);
        assert_eq!(decision(&p, "/vault", None), Decision::Deny);
        assert_eq!(decision(&p, "/vault/", None), Decision::Deny);
        assert_eq!(decision(&p, "/vault;x/", None), Decision::Deny);
        assert_eq!(decision(&p, "/vault./", None), Decision::Deny);
        assert_eq!(decision(&p, "/vault/x", None), Decision::Bypass);
        assert_eq!(decision(&p, "/", None), Decision::Bypass);
        // Readings of all three kinds and the path itself fit inline.
        let get = Method::GET;
        let eval = p.evaluate(&facts("a", "/vault.;x/", &get));
        assert_eq!(eval.decide(None, 1_000).0, Decision::Deny);
    }

    #[test]
    fn a_rule_covers_its_own_directory_under_a_strict_default() {
        // The demo's rules: `/public/` must be bypassed and `/reports/` must
        // take a password, though `/public` and `/reports` fall to the
        // default. An explicit rule still sees the reading without the slash.
        for default in [PolicyKind::TwoFactor, PolicyKind::Deny] {
            let p = Policy::new(
                vec![
                    rule("^/public/", PolicyKind::Bypass),
                    rule("^/reports/", PolicyKind::OneFactor),
                    rule("^/vault$", PolicyKind::Deny),
                ],
                default,
            );
            let strict = decision(&p, "/elsewhere", None);
            assert_eq!(decision(&p, "/public/", None), Decision::Bypass, "{default:?}");
            assert_eq!(decision(&p, "/public/x/", None), Decision::Bypass, "{default:?}");
            assert_eq!(decision(&p, "/public", None), strict, "{default:?}");
            let c1 = claims(1, 0, None);
            assert_eq!(
                decision(&p, "/reports/", Some((&c1, &[]))),
                Decision::Allow,
                "{default:?}"
            );
            assert_eq!(
                decision(&p, "/vault/", Some((&c1, &[]))),
                Decision::Deny,
                "{default:?}"
            );
            // Hostile spellings keep every reading, the default's too.
            assert_eq!(decision(&p, "/public;x", None), strict, "{default:?}");
            assert_eq!(decision(&p, "/public.", None), strict, "{default:?}");
            assert_eq!(decision(&p, "/public;x/", None), strict, "{default:?}");
        }
        // `/admin` is the directory `/admin/` to Express and servlets: a
        // stricter rule of that directory applies to it; a laxer one does not
        // loosen the default.
        let mut admin = rule("^/admin/", PolicyKind::TwoFactor);
        admin.groups = vec!["admins".into()];
        let p = Policy::new(
            vec![admin, rule("^/public/.*", PolicyKind::Bypass)],
            PolicyKind::OneFactor,
        );
        let c1 = claims(1, 0, None);
        let c2 = claims(2, 0, Some(0));
        assert!(matches!(
            decision(&p, "/admin", Some((&c1, &[]))),
            Decision::Challenge { level: 2, .. }
        ));
        assert_eq!(decision(&p, "/admin", Some((&c2, &[]))), Decision::Forbidden);
        assert_eq!(decision(&p, "/admin;x", Some((&c2, &[]))), Decision::Forbidden);
        assert_eq!(decision(&p, "/public", Some((&c1, &[]))), Decision::Allow);
        assert!(matches!(
            decision(&p, "/public", None),
            Decision::Challenge { level: 1, .. }
        ));
        assert_eq!(literal_directory("^/admin/"), Some("/admin".into()));
        assert_eq!(literal_directory(r"^/a-b/c/.*\.php$"), Some("/a-b/c".into()));
        assert_eq!(literal_directory("^/admin"), None);
        assert_eq!(literal_directory("/admin/"), None);
        assert_eq!(literal_directory("^/"), None);

        // A rule that matches only part of the path does not make it a
        // directory of its own: `/files/static/` is `/files/static` to
        // Express, which the default covers.
        for lax in ["/static/", "/$", r"\.well-known/"] {
            let p = Policy::new(vec![rule(lax, PolicyKind::Bypass)], PolicyKind::TwoFactor);
            let strict = decision(&p, "/elsewhere", None);
            for path in ["/files/static/", "/admin/", "/admin/x/", "/admin/.well-known/"] {
                if p.requirement(&facts("a", path, &Method::GET)).rule.is_some() {
                    assert_eq!(decision(&p, path, None), strict, "{lax} {path}");
                }
            }
        }
    }

    #[test]
    fn readings_combine_to_the_strictest() {
        let p = hostile_policy(false);
        let get = Method::GET;
        // The path's own reading is bypass (default), Tomcat's is the group rule.
        let eval = p.evaluate(&facts("a", "/admin;x/secret", &get));
        assert_eq!(eval.requirements().count(), 2);
        assert!(eval.needs_session());
        let (d, req) = eval.decide(None, 1_000);
        assert_eq!(req.rule, Some(1));
        assert!(matches!(d, Decision::Challenge { level: 1, .. }));
        // A clean path has one reading and needs no session on bypass.
        let eval = p.evaluate(&facts("a", "/public/x", &get));
        assert_eq!(eval.requirements().count(), 1);
        assert!(!eval.needs_session());
        // Two challenges merge to the highest level, step-up if either.
        let c2 = claims(2, 0, Some(0));
        let (d, _) = p.decide_request(&facts("a", "/pay;x", &get), Some((&c2, &[])), 1_000);
        assert_eq!(
            d,
            Decision::Challenge {
                level: 2,
                step_up: true
            }
        );
        // Deny wins over everything.
        let (d, req) = p.decide_request(&facts("a", "/secret;x/y", &get), Some((&c2, &[])), 1_000);
        assert_eq!((d, req.rule), (Decision::Deny, Some(3)));
    }

    #[test]
    fn methods_are_also_read_as_apps_read_them() {
        let none = http::HeaderMap::new();
        let nothing: [Method; 0] = [];
        let alias = |m: Method, q: Option<&str>| method_aliases(&m, q, &none).unwrap();
        assert_eq!(alias(Method::HEAD, None), [Method::GET]);
        assert_eq!(
            alias(Method::GET, Some("_method=DELETE")),
            nothing,
            "only a POST is overridden"
        );
        assert_eq!(alias(Method::POST, None), nothing);
        assert_eq!(alias(Method::POST, Some("a=1")), nothing);
        assert_eq!(alias(Method::POST, Some("_method=POST")), nothing);
        for q in [
            "_method=DELETE",
            "a=1&_method=delete",
            "%5Fmethod=DELETE",
            "_%6Dethod=DELETE",
            "_METHOD=DELETE",
            ".method=DELETE",
            "+_method=DELETE",
            "[method=DELETE",
            "_method%00x=DELETE",
            "_method=%20delete%20",
            "_method=POST&_method=DELETE",
            "_method=DELETE&_method=delete",
        ] {
            assert_eq!(alias(Method::POST, Some(q)), [Method::DELETE], "{q}");
        }
        assert_eq!(
            alias(Method::POST, Some("_method=GET&_method=DELETE")),
            [Method::GET, Method::DELETE]
        );
        assert_eq!(alias(Method::POST, Some("x_method=DELETE")), nothing);
        assert_eq!(
            alias(Method::POST, Some("_method=DEL%20ETE")),
            nothing,
            "no method"
        );
        let mut headers = http::HeaderMap::new();
        headers.append("x-http-method-override", http::HeaderValue::from_static("put"));
        headers.append("x-method-override", http::HeaderValue::from_static("PATCH"));
        headers.append("x_http_method", http::HeaderValue::from_static("MOVE, copy"));
        assert_eq!(
            method_aliases(&Method::POST, None, &headers).unwrap(),
            [
                Method::PUT,
                Method::PATCH,
                Method::from_bytes(b"MOVE").unwrap(),
                Method::from_bytes(b"COPY").unwrap()
            ]
        );
        assert_eq!(
            method_aliases(&Method::POST, Some("_method=DELETE"), &headers),
            Err(normalize::PathError::MethodOverrides),
            "more than {MAX_METHOD_ALIASES}"
        );
        assert_eq!(method_aliases(&Method::GET, None, &headers).unwrap(), nothing);
        // An overridden MOVE reads its Destination as a MOVE does.
        headers.insert("destination", http::HeaderValue::from_static("/admin/x"));
        let r = Readings::of(&Method::POST, None, &headers, "app.example").unwrap();
        assert_eq!(r.destination.map(|(raw, _)| raw), Some("/admin/x"));
        let r = Readings::of(&Method::PUT, None, &headers, "app.example").unwrap();
        assert!(r.methods.is_empty() && r.destination.is_none());
    }

    #[test]
    fn two_paths_combine_to_the_strictest_of_both() {
        let p = hostile_policy(false).deny_windows_aliases(true);
        let get = Method::GET;
        let eval = |path| p.evaluate(&facts("a", path, &get));
        // A bypass path beside a path some rule protects: that rule decides.
        let both = eval("/public/x").with(&eval("/admin/x"));
        assert_eq!(both.requirements().count(), 2);
        let (d, req) = both.decide(None, 1_000);
        assert_eq!(
            (d, req.rule),
            (
                Decision::Challenge {
                    level: 1,
                    step_up: false
                },
                Some(1)
            )
        );
        // The same rule twice is held once.
        assert_eq!(
            eval("/public/x").with(&eval("/public/y")).requirements().count(),
            1
        );
        // A Windows alias's deny has no rule, as the default has none: it is
        // kept beside the default, not taken for it.
        let (d, _) = eval("/other").with(&eval("/ADMINI~1/x")).decide(None, 1_000);
        assert_eq!(d, Decision::Deny);
        // Eight distinct requirements fit; a ninth leaves only a deny.
        let paths = [
            "/public/x",
            "/admin/x",
            "/pay",
            "/secret",
            "/app/x",
            "/odata/$metadata",
            "/%C3%BCber/x",
            "/vault",
        ];
        let eight = paths[1..]
            .iter()
            .fold(eval(paths[0]), |e, path| e.with(&eval(path)));
        assert_eq!(eight.requirements().count(), 8);
        let nine = eight.with(&eval("/other"));
        let all: Vec<_> = nine.requirements().map(|r| (r.policy, r.rule)).collect();
        assert_eq!(all, [(PolicyKind::Deny, None)]);
    }

    #[test]
    fn case_insensitive_rules_cover_every_case() {
        let sensitive = hostile_policy(false);
        let insensitive = hostile_policy(true);
        assert_eq!(decision(&sensitive, "/ADMIN/x", None), Decision::Bypass);
        assert_eq!(
            decision(&insensitive, "/ADMIN/x", None),
            Decision::Challenge {
                level: 1,
                step_up: false
            }
        );
        assert_eq!(decision(&insensitive, "/Secret./x", None), Decision::Deny);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::policy::normalize::{normalize, readings};

        /// Sessions to decide with: none, level 1 (users, admins), level 2.
        fn sessions() -> Vec<(SessionClaims, Vec<String>)> {
            vec![
                (claims(1, 900, None), vec!["users".into()]),
                (claims(1, 900, None), vec!["admins".into()]),
                (claims(2, 900, Some(950)), vec!["users".into()]),
                (claims(2, 0, Some(0)), vec!["admins".into()]),
            ]
        }

        fn assert_not_laxer(p: &Policy, base: &str, variant: &str) -> Result<(), TestCaseError> {
            let Ok(normal) = normalize(variant) else {
                return Ok(()); // refused: never laxer
            };
            let base = normalize(base).map_err(|e| TestCaseError::fail(format!("{base}: {e}")))?;
            let base = base.as_ref();
            let all = sessions();
            let mut cases: Vec<Option<(&SessionClaims, &[String])>> = vec![None];
            cases.extend(all.iter().map(|(c, g)| Some((c, g.as_slice()))));
            for s in cases {
                let want = decision(p, base, s);
                let got = decision(p, &normal, s);
                prop_assert!(
                    strictness(got) >= strictness(want),
                    "{variant:?} (normal {normal:?}) got {got:?}, {base:?} got {want:?}"
                );
            }
            Ok(())
        }

        /// A base path: segments that hit each rule and some that do not.
        fn base_path() -> impl Strategy<Value = String> {
            let seg = prop::sample::select(vec![
                "admin",
                "public",
                "pay",
                "secret",
                "app",
                "x",
                "a.b",
                "Admin",
                "index.html",
                "~u",
                "odata",
                "$metadata",
                "%C3%BCber",
                "vault",
                "a=b,c",
            ]);
            (prop::collection::vec(seg, 1..5), any::<bool>()).prop_map(|(segs, slash)| {
                let mut p = String::new();
                for s in segs {
                    p.push('/');
                    p.push_str(s);
                }
                if slash {
                    p.push('/');
                }
                p
            })
        }

        /// One way of spelling a segment differently.
        #[derive(Debug, Clone)]
        enum Trick {
            Encode(usize),
            DotSegment,
            DoubleSlash,
            Params(String),
            EmptyParams,
            TrailingDots(usize),
            TrailingSpace,
            Upper(usize),
            /// Escapes of non-ASCII characters written raw (`%C3%BC` -> `ü`).
            Raw,
            /// Escapes with lower-case hex.
            LowerHex,
            /// A trailing `/` after the last segment.
            TrailingSlash,
            Same,
        }

        fn trick() -> impl Strategy<Value = Trick> {
            prop_oneof![
                (0usize..8).prop_map(Trick::Encode),
                Just(Trick::DotSegment),
                Just(Trick::DoubleSlash),
                "[a-z0-9=]{0,8}".prop_map(Trick::Params),
                Just(Trick::EmptyParams),
                (1usize..3).prop_map(Trick::TrailingDots),
                Just(Trick::TrailingSpace),
                (0usize..8).prop_map(Trick::Upper),
                Just(Trick::Raw),
                Just(Trick::LowerHex),
                Just(Trick::TrailingSlash),
                Just(Trick::Same),
            ]
        }

        /// Re-spells `base` segment by segment; `upper` allows case changes.
        fn respell(base: &str, tricks: &[Trick], upper: bool) -> String {
            let trailing = base.ends_with('/');
            let segs: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
            let mut out = String::new();
            for (i, seg) in segs.iter().enumerate() {
                let t = tricks.get(i).cloned().unwrap_or(Trick::Same);
                let mut s = (*seg).to_owned();
                match t {
                    Trick::Encode(k) => {
                        if let Some(c) = s.chars().nth(k % s.len()) {
                            let at = s.char_indices().nth(k % s.len()).map_or(0, |(j, _)| j);
                            s.replace_range(at..at + c.len_utf8(), &format!("%{:02x}", c as u32));
                        }
                    }
                    Trick::DotSegment => s = format!("./{s}"),
                    Trick::DoubleSlash => s = format!("/{s}"),
                    Trick::Params(p) => s = format!("{s};{p}"),
                    Trick::EmptyParams => s = format!(";x/{s}"),
                    Trick::TrailingDots(n) => s.push_str(&".".repeat(n)),
                    Trick::TrailingSpace => s.push_str("%20"),
                    Trick::Upper(k) if upper => {
                        let at = k % s.len();
                        s = s
                            .char_indices()
                            .map(|(j, c)| if j == at { c.to_ascii_uppercase() } else { c })
                            .collect();
                    }
                    Trick::Raw => {
                        if let Ok(raw) = percent_encoding::percent_decode_str(&s).decode_utf8() {
                            s = raw.into_owned();
                        }
                    }
                    Trick::LowerHex => {
                        let b = s.as_bytes();
                        s = b
                            .iter()
                            .enumerate()
                            .map(|(j, &c)| {
                                let in_escape = (j >= 1 && b[j - 1] == b'%') || (j >= 2 && b[j - 2] == b'%');
                                char::from(if in_escape { c.to_ascii_lowercase() } else { c })
                            })
                            .collect();
                    }
                    Trick::TrailingSlash if i + 1 == segs.len() => s.push('/'),
                    Trick::Upper(_) | Trick::TrailingSlash | Trick::Same => {}
                }
                out.push('/');
                out.push_str(&s);
            }
            if trailing || out.is_empty() {
                out.push('/');
            }
            out
        }

        /// Hostile-looking path text: escapes, dots, parameters, spaces.
        fn hostile_text() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    Just("/".to_owned()),
                    Just(".".to_owned()),
                    Just("..".to_owned()),
                    Just(";".to_owned()),
                    Just(" ".to_owned()),
                    Just("%".to_owned()),
                    Just("%20".to_owned()),
                    Just("%2e".to_owned()),
                    Just("%25".to_owned()),
                    Just("%3b".to_owned()),
                    Just("%c0%ae".to_owned()),
                    Just("%C3%A9".to_owned()),
                    "%[0-9a-fA-F]{2}",
                    "[a-zA-Z0-9~_=-]{1,4}",
                ],
                0..16,
            )
            .prop_map(|parts| format!("/{}", parts.concat()))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn respelling_is_never_laxer(base in base_path(), tricks in prop::collection::vec(trick(), 0..5)) {
                let p = hostile_policy(false);
                assert_not_laxer(&p, &base, &respell(&base, &tricks, false))?;
            }

            #[test]
            fn respelling_with_case_is_never_laxer_when_insensitive(
                base in base_path(),
                tricks in prop::collection::vec(trick(), 0..5),
            ) {
                let p = hostile_policy(true);
                assert_not_laxer(&p, &base, &respell(&base, &tricks, true))?;
            }

            #[test]
            fn normalizing_is_idempotent_and_readings_are_normal(path in hostile_text()) {
                if let Ok(once) = normalize(&path) {
                    let twice = normalize(&once);
                    prop_assert_eq!(twice.as_deref(), Ok(once.as_ref()), "{:?}", path);
                    for r in readings(&once) {
                        let again = normalize(&r);
                        prop_assert_eq!(again.as_deref(), Ok(r.as_ref()), "{:?} -> {:?}", path, once);
                    }
                }
            }

            #[test]
            fn arbitrary_text_never_panics(text in any::<String>(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
                let p = hostile_policy(false);
                let get = Method::GET;
                let lossy = String::from_utf8_lossy(&bytes).into_owned();
                let (rooted, rooted_lossy) = (format!("/{text}"), format!("/{lossy}"));
                for t in [text.as_str(), lossy.as_str(), rooted.as_str(), rooted_lossy.as_str()] {
                    if let Ok(n) = normalize(t) {
                        let _ = readings(&n);
                        let _ = p.decide_request(&facts("a", &n, &get), None, 0);
                    }
                    let _ = readings(t);
                    // Raw text too (forward-auth's path as sent, a
                    // Destination), a directory's own path included.
                    let _ = p.evaluate(&facts("a", t, &get));
                    let _ = p.evaluate(&facts("a", &format!("/public/{t}/"), &get));
                }
            }
        }
    }

    #[test]
    fn windows_aliases_are_denied_only_when_asked() {
        let rules = vec![rule("^/public/", PolicyKind::Bypass)];
        let now = 1_000;
        let facts = |path| RequestFacts {
            host: "h",
            path,
            method: &Method::GET,
            client_addr: IpAddr::from([192, 0, 2, 1]),
        };
        let plain = Policy::new(rules.clone(), PolicyKind::Bypass);
        let windows = Policy::new(rules, PolicyKind::Bypass).deny_windows_aliases(true);
        for path in ["/public/x::$DATA", "/public/SECRET~1/x", "/(S(x))/public/x"] {
            assert_eq!(
                plain.decide_request(&facts(path), None, now).0,
                Decision::Bypass,
                "{path}"
            );
            assert_eq!(
                windows.decide_request(&facts(path), None, now).0,
                Decision::Deny,
                "{path}"
            );
        }
        assert_eq!(
            windows.decide_request(&facts("/public/x"), None, now).0,
            Decision::Bypass
        );
    }
}
