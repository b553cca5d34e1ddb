//! Decisions per rule: `portcullis_rule_decisions_total{rule,path,decision}`.
//!
//! One table of plain atomic counters per compiled rule set, built with the
//! [`Policy`](super::Policy): a request increments a slot found by index (no
//! label formatting, no lookup, no allocation). Every configured rule and the
//! default are present at zero from the start. A reload that leaves the rules
//! exactly as they were keeps counting in the same table; one that changes
//! them starts a new table at zero, and the old table's series disappear
//! when the old gateway is retired (a counter reset, which `rate()` handles),
//! even while requests already inside it finish.
//!
//! Labels: `rule` is the rule's index in the config (`default` for the
//! default policy), `path` its path pattern as configured (empty when it has
//! none), `decision` one of [`DECISIONS`]. The set of series is bounded by the
//! configured rules.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::Decision;
use crate::config::{PolicyKind, RuleConfig};

/// The decision labels, in slot order (see [`slot`]).
pub const DECISIONS: [&str; 5] = ["bypass", "allow", "challenge", "forbidden", "deny"];

fn slot(d: Decision) -> usize {
    match d {
        Decision::Bypass => 0,
        Decision::Allow => 1,
        Decision::Challenge { .. } => 2,
        Decision::Forbidden => 3,
        Decision::Deny => 4,
    }
}

/// The counters of one rule set: one row per rule, the default's last.
#[derive(Debug)]
pub struct RuleCounters {
    /// What the rule set was built from; equal fingerprints share a table.
    fingerprint: String,
    /// `(rule, path)` label values per row.
    labels: Vec<(String, String)>,
    counts: Vec<[AtomicU64; 5]>,
    /// Policies built on this table and not retired; shown while above zero.
    owners: AtomicUsize,
}

/// Every table alive in the process (tests run many gateways in one).
static TABLES: Mutex<Vec<Weak<RuleCounters>>> = Mutex::new(Vec::new());

impl RuleCounters {
    /// The table for `rules` and `default`: a live one built from the same
    /// rules, or a new one at zero.
    pub fn for_rules(rules: &[RuleConfig], default: PolicyKind) -> Arc<Self> {
        let fingerprint = format!("{rules:?}|{default:?}");
        let mut tables = TABLES.lock().unwrap_or_else(|p| p.into_inner());
        tables.retain(|w| w.strong_count() > 0);
        if let Some(t) = tables
            .iter()
            .filter_map(Weak::upgrade)
            .find(|t| t.fingerprint == fingerprint && t.owners.load(Ordering::Acquire) > 0)
        {
            t.owners.fetch_add(1, Ordering::AcqRel);
            return t;
        }
        let mut labels: Vec<(String, String)> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    i.to_string(),
                    r.path
                        .as_ref()
                        .map(|re| re.as_str().to_owned())
                        .unwrap_or_default(),
                )
            })
            .collect();
        labels.push(("default".to_owned(), String::new()));
        let counts = labels.iter().map(|_| Default::default()).collect();
        let table = Arc::new(Self {
            fingerprint,
            labels,
            counts,
            owners: AtomicUsize::new(1),
        });
        tables.push(Arc::downgrade(&table));
        table
    }

    /// One owner fewer: a retired gateway's policy (see the module notes).
    pub fn retire(&self) {
        let _ = self
            .owners
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Counts one decision of rule `rule` (`None`: the default policy).
    pub fn count(&self, rule: Option<usize>, decision: Decision) {
        let row = rule.unwrap_or(self.counts.len() - 1);
        if let Some(row) = self.counts.get(row).or_else(|| self.counts.last()) {
            row[slot(decision)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The rule-decision series of every live table, in Prometheus text format
/// (same labels in two tables are summed).
pub fn render() -> String {
    let tables: Vec<Arc<RuleCounters>> = {
        let tables = TABLES.lock().unwrap_or_else(|p| p.into_inner());
        tables
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|t| t.owners.load(Ordering::Acquire) > 0)
            .collect()
    };
    let mut series: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for t in &tables {
        for ((rule, path), row) in t.labels.iter().zip(&t.counts) {
            for (decision, n) in DECISIONS.iter().zip(row) {
                *series.entry((rule, path, decision)).or_default() += n.load(Ordering::Relaxed);
            }
        }
    }
    let mut out = String::new();
    if series.is_empty() {
        return out;
    }
    out.push_str("# HELP portcullis_rule_decisions_total Access decisions by matched rule.\n");
    out.push_str("# TYPE portcullis_rule_decisions_total counter\n");
    for ((rule, path, decision), n) in series {
        let _ = writeln!(
            out,
            "portcullis_rule_decisions_total{{rule=\"{}\",path=\"{}\",decision=\"{decision}\"}} {n}",
            escape(rule),
            escape(path)
        );
    }
    out
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: &str) -> RuleConfig {
        RuleConfig {
            hosts: vec![],
            path: Some(regex::Regex::new(path).unwrap()),
            methods: vec![],
            networks: vec![],
            policy: PolicyKind::Bypass,
            groups: vec![],
            max_age: None,
        }
    }

    #[test]
    fn zero_at_start_shared_when_equal_new_when_changed() {
        let a = RuleCounters::for_rules(&[rule("^/counters-unit-\"q\"")], PolicyKind::Deny);
        let text = render();
        assert!(text.contains(
            "portcullis_rule_decisions_total{rule=\"0\",path=\"^/counters-unit-\\\"q\\\"\",decision=\"allow\"} 0"
        ));
        a.count(Some(0), Decision::Allow);
        let same = RuleCounters::for_rules(&[rule("^/counters-unit-\"q\"")], PolicyKind::Deny);
        assert!(Arc::ptr_eq(&a, &same));
        let changed = RuleCounters::for_rules(&[rule("^/counters-unit-\"q\"")], PolicyKind::Bypass);
        assert!(!Arc::ptr_eq(&a, &changed));
        changed.count(None, Decision::Bypass);
        a.retire();
        same.retire();
        let text = render();
        assert!(text.contains(
            "portcullis_rule_decisions_total{rule=\"0\",path=\"^/counters-unit-\\\"q\\\"\",decision=\"allow\"} 0"
        ));
    }
}
