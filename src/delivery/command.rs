//! The `command` delivery: runs a program with the message JSON on stdin.
//!
//! Exit status 0 means delivered; anything else, a spawn failure or running
//! past the timeout (the child is then killed) is a failed delivery. The
//! program's output is not read into logs (it might echo the message).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::DeliveryError;

/// How long a delivery program may run.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `program args...` with `stdin_json` on its standard input.
pub async fn run(
    program: &Path,
    args: &[String],
    stdin_json: &[u8],
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let mut command = tokio::process::Command::new(program);
    // The gateway's secrets stay with it: a delivery program (or whatever it
    // runs, or reads `/proc/PID/environ`) gets no session or store key, no
    // admin token, no variable an `env:` secret names; the rest of the
    // environment (PATH, the program's own credentials) is inherited.
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_none_or(crate::config::secrets::is_secret_variable)
        {
            command.env_remove(&name);
        }
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DeliveryError::Command(format!("{}: cannot start: {e}", program.display())))?;
    let work = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A program that exits without reading its input is its own business:
            // its exit status decides.
            let _ = stdin.write_all(stdin_json).await;
            let _ = stdin.shutdown().await;
        }
        child.wait().await
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Err(DeliveryError::Command(format!(
            "{}: still running after {}s (killed)",
            program.display(),
            timeout.as_secs()
        ))),
        Ok(Err(e)) => Err(DeliveryError::Command(format!("{}: {e}", program.display()))),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(DeliveryError::Command(format!("{}: {status}", program.display()))),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn exit_zero_is_delivered_and_stdin_carries_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got.json");
        let script = format!("cat > '{}'", out.display());
        run(Path::new("/bin/sh"), &sh(&script), br#"{"kind":"sms"}"#, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(out).unwrap(), r#"{"kind":"sms"}"#);
    }

    /// The gateway's secret variables are not passed on; the rest is. A
    /// variable cargo sets for every test stands in for a secret one (the
    /// list is the process's, so a real one would reach other tests too).
    #[tokio::test]
    async fn programs_do_not_inherit_the_gateways_secrets() {
        let (Ok(_), Ok(_)) = (
            std::env::var("CARGO_PKG_NAME"),
            std::env::var("CARGO_PKG_VERSION"),
        ) else {
            panic!("cargo sets CARGO_PKG_NAME and CARGO_PKG_VERSION for its tests");
        };
        crate::config::secrets::note_secret_variable("CARGO_PKG_NAME");
        assert!(crate::config::secrets::is_secret_variable(
            "PORTCULLIS_SESSION_SECRET"
        ));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!("env > '{}'", out.display());
        run(Path::new("/bin/sh"), &sh(&script), b"{}", TIMEOUT)
            .await
            .unwrap();
        let env = std::fs::read_to_string(out).unwrap();
        assert!(env.lines().any(|l| l.starts_with("CARGO_PKG_VERSION=")), "{env}");
        assert!(!env.lines().any(|l| l.starts_with("CARGO_PKG_NAME=")), "{env}");
        assert!(!env.lines().any(|l| l.starts_with("PORTCULLIS_")), "{env}");
    }

    #[tokio::test]
    async fn failures_are_errors() {
        let e = run(Path::new("/bin/sh"), &sh("exit 3"), b"{}", TIMEOUT)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exit status: 3"), "{e}");
        let e = run(Path::new("/nonexistent/relay"), &[], b"{}", TIMEOUT)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot start"), "{e}");
        let e = run(
            Path::new("/bin/sh"),
            &sh("sleep 5"),
            b"{}",
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
    }
}
