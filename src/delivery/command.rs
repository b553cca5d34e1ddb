//! The `command` delivery: runs a program with the message JSON on stdin.
//!
//! Exit status 0 means delivered; anything else, a spawn failure or running
//! past the timeout is a failed delivery. The program runs in a process group
//! of its own: past the timeout, or when the delivery is abandoned before it
//! ended (the gateway shutting down), the whole group is killed, so a `curl`
//! a script started and a hung relay kept waiting does not stay behind, one per
//! message. (What a program leaves running after it exited is its own
//! business.) The program's output is not read into logs (it might echo the
//! message).

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
    #[cfg(target_os = "linux")]
    command.process_group(0);
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DeliveryError::Command(format!("{}: cannot start: {e}", program.display())))?;
    // Dropped before `child` (declared after it), so while the program is
    // not yet reaped: its id still names its group and no other.
    let mut group = Group::of(&child);
    let work = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A program that exits without reading its input is its own business:
            // its exit status decides.
            let _ = stdin.write_all(stdin_json).await;
            let _ = stdin.shutdown().await;
        }
        child.wait().await
    };
    let outcome = tokio::time::timeout(timeout, work).await;
    if outcome.is_ok() {
        // Reaped (or not waitable): its id may name another process soon.
        group.disarm();
    }
    match outcome {
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

/// Kills a delivery program's process group when dropped, unless disarmed.
struct Group(#[cfg(target_os = "linux")] Option<rustix::process::Pid>);

impl Group {
    #[cfg(target_os = "linux")]
    fn of(child: &tokio::process::Child) -> Self {
        Self(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw),
        )
    }

    #[cfg(not(target_os = "linux"))]
    fn of(_child: &tokio::process::Child) -> Self {
        Self()
    }

    fn disarm(&mut self) {
        #[cfg(target_os = "linux")]
        {
            self.0 = None;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(group) = self.0.take() {
            // Gone already (ESRCH) is fine: nothing is left to stop.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
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

    /// True once `pid` has ended (gone, or a zombie no one reaped yet).
    fn ended(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // `pid (comm) S ...`: the state follows the last `)`.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    async fn wait_ended(pid: &str) -> bool {
        for _ in 0..100 {
            if ended(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// A program that hangs with a child of its own: on the timeout, and when
    /// the delivery is dropped before it ended, the child goes too.
    #[tokio::test]
    async fn a_hung_programs_children_are_killed_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!("sleep 30 & echo $! > '{}'; sleep 30", pids.display());
        let read_pid = || async {
            for _ in 0..100 {
                if let Ok(pid) = std::fs::read_to_string(&pids)
                    && !pid.trim().is_empty()
                {
                    return pid.trim().to_owned();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the program did not start its child");
        };

        let e = run(
            Path::new("/bin/sh"),
            &sh(&script),
            b"{}",
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
        let child = read_pid().await;
        assert!(
            wait_ended(&child).await,
            "the program's child {child} outlived its timeout"
        );

        std::fs::remove_file(&pids).unwrap();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(500),
            run(Path::new("/bin/sh"), &sh(&script), b"{}", TIMEOUT),
        )
        .await;
        assert!(abandoned.is_err(), "the program cannot have ended");
        let child = read_pid().await;
        assert!(
            wait_ended(&child).await,
            "the program's child {child} outlived an abandoned delivery"
        );
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
