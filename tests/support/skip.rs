//! Skipped tests, visible and counted.
//!
//! A test whose tool is missing calls [`test`] (the whole test is skipped; the
//! caller returns) or [`part`] (one step of it is skipped; the rest runs).
//! Either writes `SKIPPED <test>: <reason>` (or `SKIPPED <test> [<part>]: ...`)
//! straight to the process's standard error: `eprintln!` output of a passing
//! test is captured by the test harness and never shown, a skip must be. Each
//! skip is also appended to `skipped.log` in cargo's temporary target folder,
//! and the last test binary (`tests/summary.rs`) closes `cargo test` with the
//! count. With `CI=true` a skip is a failure instead.
//!
//! Shared by every test binary through `#[path]`; not all of them use all of it.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// True when `CI=true`: a skip is then a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The whole of `test` cannot run here; the caller returns after this.
/// Panics under `CI=true`.
pub fn test(test: &str, reason: &str) {
    report(test, None, reason);
}

/// The step `part` of `test` cannot run here; the rest of the test goes on.
/// Panics under `CI=true`.
pub fn part(test: &str, part: &str, reason: &str) {
    report(test, Some(part), reason);
}

/// The running test's name: the harness names each test's thread after it.
pub fn current_test() -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("a test");
    name.rsplit("::").next().unwrap_or(name).to_owned()
}

/// The log of this cargo run's skips, read by `tests/summary.rs`: in cargo's
/// temporary target folder (`<target>/tmp`; the library's unit tests, which
/// are not told it, find it from their own path `<target>/debug/deps/...`).
pub fn log_path() -> PathBuf {
    let tmp = match option_env!("CARGO_TARGET_TMPDIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("tmp")))
            .unwrap_or_else(std::env::temp_dir),
    };
    let _ = std::fs::create_dir_all(&tmp);
    tmp.join("skipped.log")
}

fn report(test: &str, part: Option<&str>, reason: &str) {
    let what = match part {
        Some(part) => format!("{test} [{part}]"),
        None => test.to_owned(),
    };
    // One line: a reason never splits the report.
    let reason = reason.replace(['\n', '\r'], " ");
    assert!(
        !in_ci(),
        "{what} cannot run under CI=true (a skip is a failure there): {reason}"
    );
    let line = format!("SKIPPED {what}: {reason}\n");
    // Straight to the file descriptor, past the harness's output capture.
    let _ = std::io::stderr().write_all(line.as_bytes());
    // Tagged with cargo's process id (our parent), so the summary counts this
    // run only.
    let entry = format!("{} {}", std::os::unix::process::parent_id(), line);
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path())
    {
        let _ = log.write_all(entry.as_bytes());
    }
}
