//! The problem collector every conversion writes to: errors with their key
//! paths, warnings, and the environment behind `env:NAME` secrets.

use super::load::ConfigProblem;

pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Collects problems and warnings, and resolves `env:` references.
pub(super) struct Ctx<'a> {
    pub(super) env: Env<'a>,
    pub(super) problems: Vec<ConfigProblem>,
    pub(super) warnings: Vec<ConfigProblem>,
    /// Keys already reported as malformed: their section is still checked
    /// without them, and what their absence would cause (a missing required
    /// key, a default secret that is not set) is not reported on top.
    pub(super) malformed: Vec<String>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(env: Env<'a>) -> Self {
        Self {
            env,
            problems: Vec::new(),
            warnings: Vec::new(),
            malformed: Vec::new(),
        }
    }

    pub(super) fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let follows_from_malformed = self.malformed.iter().any(|bad| {
            key.strip_prefix(bad.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
        });
        if !follows_from_malformed {
            self.problems.push(ConfigProblem {
                key,
                message: message.into(),
            });
        }
    }

    pub(super) fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// True when a problem was reported under a key starting with `key`
    /// (`key` itself, `key.x`, `key[0]`, ...).
    pub(super) fn has_problem_under(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key.starts_with(key))
    }

    /// True when a problem was reported at exactly `key`.
    pub(super) fn has_problem_at(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }

    pub(super) fn error_count(&self) -> usize {
        self.problems.len()
    }

    /// An environment variable; empty counts as unset (an empty secret is never meant).
    pub(super) fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }
}
