//! `[audit]`: how long audit events are kept in the store, where
//! `GET /api/v1/logs` reads them (SPEC section 14).
//!
//! ```toml
//! [audit]
//! retention = "30d"   # the default
//! ```

use std::time::Duration;

/// How long audit events are kept when `retention` is not given.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// `[audit]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Events older than this are purged from the store.
    pub retention: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
        }
    }
}

/// Reads the `[audit]` table (absent: the defaults); every problem goes to
/// `error` with its key, and the defaults stand in for what was wrong.
pub(super) fn convert(value: Option<toml::Value>, error: &mut dyn FnMut(&str, String)) -> AuditConfig {
    let mut out = AuditConfig::default();
    let Some(value) = value else { return out };
    let toml::Value::Table(table) = value else {
        error("audit", "expected a table ([audit])".into());
        return out;
    };
    for (key, value) in table {
        match (key.as_str(), value) {
            ("retention", toml::Value::String(text)) => match super::parse_duration(&text) {
                Ok(d) if d >= Duration::from_secs(60) => out.retention = d,
                Ok(_) => error("audit.retention", "must be at least one minute".into()),
                Err(e) => error("audit.retention", e),
            },
            ("retention", _) => error(
                "audit.retention",
                "expected a duration string such as \"30d\"".into(),
            ),
            (other, _) => error(
                &format!("audit.{other}"),
                "unknown key (keys are: retention)".into(),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(toml_text: &str) -> (AuditConfig, Vec<String>) {
        let table: toml::Table = toml::from_str(toml_text).unwrap();
        let mut errors = Vec::new();
        let cfg = convert(table.get("audit").cloned(), &mut |k, m| {
            errors.push(format!("{k}: {m}"))
        });
        (cfg, errors)
    }

    #[test]
    fn retention_defaults_to_thirty_days_and_parses_durations() {
        assert_eq!(read("").0.retention, DEFAULT_RETENTION);
        assert_eq!(read("[audit]").0.retention, DEFAULT_RETENTION);
        let (cfg, errors) = read("[audit]\nretention = \"7d\"");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.retention, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn bad_values_are_reported_with_their_key() {
        let (_, errors) = read("[audit]\nretention = \"soon\"");
        assert!(errors[0].starts_with("audit.retention: "), "{errors:?}");
        let (_, errors) = read("[audit]\nretention = \"10s\"");
        assert_eq!(errors, ["audit.retention: must be at least one minute"]);
        let (_, errors) = read("[audit]\nkeep = \"1d\"");
        assert_eq!(errors, ["audit.keep: unknown key (keys are: retention)"]);
        let (_, errors) = read("[audit]\nretention = 30");
        assert!(errors[0].starts_with("audit.retention: expected"), "{errors:?}");
    }
}
