//! `[log]`.

use super::context::Ctx;
use super::fields::choice;
use super::raw::RawLog;
use super::{LogConfig, LogFormat, defaults};

pub(super) fn convert_log(cx: &mut Ctx<'_>, raw: RawLog) -> LogConfig {
    let format = choice(
        cx,
        "log.format",
        raw.format,
        defaults::LOG_FORMAT,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    );
    let level = raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_owned());
    if level.trim().is_empty() {
        cx.error(
            "log.level",
            "must not be empty, e.g. \"info\" or \"portcullis=debug,info\"",
        );
    } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        cx.error("log.level", format!("is not a valid filter directive: {e}"));
    }
    LogConfig { format, level }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn log_is_checked() {
        let loaded = ok(&with(
            "[log]\nformat = \"json\"\nlevel = \"portcullis=debug,info\"\n",
        ));
        assert_eq!(loaded.config.log.format, LogFormat::Json);
        let errs = errors(&with("[log]\nlevel = \"\"\n"));
        assert_has(&errs, "log.level", "must not be empty");
        let errs = errors(&with("[log]\nlevel = \"info,[[[\"\n"));
        assert_has(&errs, "log.level", "not a valid filter directive");
    }
}
