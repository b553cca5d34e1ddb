//! `[audit]`: how long audit events are kept in the store, where
//! `GET /api/v1/logs` reads them (SPEC section 14).
//!
//! ```toml
//! [audit]
//! retention = "30d"   # the default
//! ```

use std::time::Duration;

use serde::Deserialize;

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

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAudit {
    retention: Option<String>,
}

/// Reads the `[audit]` table (absent: the defaults); every problem goes to
/// `error` with its key, and the defaults stand in for what was wrong.
pub(super) fn convert(value: Option<toml::Value>, error: &mut dyn FnMut(&str, String)) -> AuditConfig {
    let mut out = AuditConfig::default();
    let Some(value) = value else { return out };
    let raw = match RawAudit::deserialize(value) {
        Ok(raw) => raw,
        Err(e) => {
            error("audit", e.to_string());
            return out;
        }
    };
    if let Some(text) = raw.retention {
        match super::parse_duration(&text) {
            Ok(d) if d >= Duration::from_secs(60) => out.retention = d,
            Ok(_) => error("audit.retention", "must be at least one minute".into()),
            Err(e) => error("audit.retention", e),
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
        assert!(
            errors[0].starts_with("audit: ") && errors[0].contains("keep"),
            "{errors:?}"
        );
    }
}
