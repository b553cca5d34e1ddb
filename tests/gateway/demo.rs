//! `portcullis demo` through the real binary: its temporary folder is private
//! (0700, files 0600) and removed when it stops, on Ctrl-C as on a failed
//! start; it prints an admin token the admin API accepts; a busy port is
//! named by the option that changes it.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Reap, free_port, portcullis_command};

fn demo(tmp: &Path, args: &[&str]) -> Command {
    let mut cmd = portcullis_command(&[&["demo"], args].concat());
    // The demo's folder goes under TMPDIR: here a folder of the test's own.
    cmd.env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_folder_is_private_has_an_admin_token_and_goes_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let (main, admin) = (free_port(), free_port());
    let (main_addr, admin_addr) = (format!("127.0.0.1:{main}"), format!("127.0.0.1:{admin}"));
    let mut child = demo(
        tmp.path(),
        &["--listen", &main_addr, "--admin-listen", &admin_addr],
    )
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let child = Reap(child);
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    // The banner: the folder and the admin token.
    let mut lines = BufReader::new(stdout).lines();
    let (mut token, mut files, mut banner) = (None, None, String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["token", t, ..] => token = Some(t.to_string()),
            ["files", f, ..] => files = Some(PathBuf::from(f)),
            ["stop", ..] => break,
            _ => {}
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let token = token.unwrap_or_else(|| panic!("no admin token in:\n{banner}"));
    let files = files.unwrap_or_else(|| panic!("no folder in:\n{banner}"));
    assert!(files.starts_with(tmp.path()), "{banner}");
    assert!(token.len() >= 32, "{token}");
    assert!(
        banner.contains(&format!("SSWS {token}")) && banner.contains("postman_collection.json"),
        "how to use the admin API and the collection:\n{banner}"
    );

    // Up: the admin API takes the printed token and refuses a request without it.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let users = format!("http://{admin_addr}/api/v1/users");
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        if let Ok(res) = client
            .get(&users)
            .header("authorization", format!("SSWS {token}"))
            .send()
            .await
        {
            break res;
        }
        assert!(Instant::now() < deadline, "the demo did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed.status(), 200);
    // Before any request on the main listener, the counters are there at zero.
    let metrics = client
        .get(format!("http://{admin_addr}/metrics"))
        .header("authorization", format!("SSWS {token}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "portcullis_requests_total{decision=\"allow\",status=\"200\"} 0",
        "portcullis_requests_total{decision=\"challenge\",status=\"401\"} 0",
        "portcullis_store_notifications_total{result=\"applied\"} 0",
        "portcullis_logins_total{result=\"success\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} in:\n{metrics}");
    }
    let body = listed.text().await.unwrap();
    assert!(body.contains("\"demo\""), "the demo user is listed: {body}");
    let refused = client.get(&users).send().await.unwrap();
    assert_eq!(refused.status(), 401);

    // The printed bypass URL answers without a sign-in (its rule is `^/public/`,
    // under a two-factor default); the site's root does not.
    let public = banner
        .lines()
        .find_map(|l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["public", url, ..] => Some(url.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no public URL in:\n{banner}"));
    assert!(public.ends_with("/public/"), "{public}");
    let open = client.get(&public).send().await.unwrap();
    assert_eq!(open.status(), 200, "{public}");
    let closed = client.get(format!("http://{main_addr}/")).send().await.unwrap();
    assert_eq!(closed.status(), 401, "the root needs a sign-in");

    // Private: the folder 0700, every file in it 0600 (the SQLite database,
    // created by the gateway, too).
    assert_eq!(mode(&files), 0o700, "{}", files.display());
    let names = entries(&files);
    assert!(
        names.iter().any(|p| p.ends_with("portcullis.toml"))
            && names.iter().any(|p| p.ends_with("users.toml"))
            && names.iter().any(|p| p.ends_with("portcullis.db")),
        "{names:?}"
    );
    for file in &names {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }

    // Ctrl-C: the demo stops and takes its folder with it.
    let mut child = child;
    assert!(
        Command::new("kill")
            .args(["-INT", &child.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "still running after Ctrl-C");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = errors.join().unwrap();
    assert!(!files.exists(), "{} is left behind:\n{log}", files.display());
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
    assert!(!log.contains(&token), "the token went to the log:\n{log}");
}

#[test]
fn a_busy_port_names_its_option_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let free = format!("127.0.0.1:{}", free_port());
    for (args, option) in [
        (
            ["--listen", busy_addr.as_str(), "--admin-listen", free.as_str()],
            "--listen",
        ),
        (
            ["--listen", free.as_str(), "--admin-listen", busy_addr.as_str()],
            "--admin-listen",
        ),
    ] {
        let out = demo(tmp.path(), &args).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("cannot listen on {busy_addr}"))
                && stderr.contains(&format!("choose another address with {option}")),
            "{stderr}"
        );
        assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
    }
    drop(busy);
}
