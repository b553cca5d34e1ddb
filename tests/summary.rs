//! The closing line of `cargo test`: how many tests (and steps of tests) were
//! skipped for a missing tool in this run, and which. Runs after the other test
//! binaries (cargo runs them in name order; `summary` sorts after `store`), and
//! reads the log that `tests/support/skip.rs` appends to, keeping only the
//! entries of this cargo process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/skip.rs"]
mod skip;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test -- --list` and friends: this binary has no tests to list.
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let cargo = std::os::unix::process::parent_id().to_string();
    let path = skip::log_path();
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut ours = Vec::new();
    for line in text.lines() {
        if let Some((pid, rest)) = line.split_once(' ')
            && pid == cargo
        {
            ours.push(rest.to_owned());
        }
    }
    // This run's entries are read; older ones (runs of single test binaries)
    // would otherwise be counted by the next full run.
    let _ = std::fs::remove_file(&path);
    if ours.is_empty() {
        println!("\nskip summary: 0 skipped");
        return;
    }
    let whole = ours.iter().filter(|l| !is_part(l)).count();
    println!(
        "\nskip summary: {} skipped ({whole} whole tests, {} steps of tests) for missing tools; `.ci/run` installs them (see README, \"Running the tests\"):",
        ours.len(),
        ours.len() - whole
    );
    for line in &ours {
        println!("  - {}", line.strip_prefix("SKIPPED ").unwrap_or(line));
    }
}

/// `SKIPPED <test> [<part>]: ...`
fn is_part(line: &str) -> bool {
    line.split_once(": ").is_some_and(|(head, _)| head.ends_with(']'))
}
