//! Encryption keys: a key that does not fit the database is a start-up error
//! (exit 64, naming the key id the database needs), and `portcullis store
//! rotate-key` re-seals every factor secret under the first key while a
//! gateway keeps running.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{
    CountingUpstream, Gateway, GatewayConfig, StoreSpec, free_port, key, key_id, now, portcullis, totp,
};

/// Runs `portcullis args...` to its end (at most 60 s).
fn run(args: &[&str]) -> Output {
    let child = portcullis(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("portcullis {args:?} did not finish");
        }
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `serve` with `cfg` must refuse to start: exit 64, nothing bound, and its
/// output; the main port it was given is checked to be free afterwards.
fn refused_start(cfg: &GatewayConfig) -> String {
    let (main, admin) = (free_port(), free_port());
    let path = cfg.write(main, admin);
    let out = run(&["serve", "--config", path.to_str().unwrap()]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", main)).is_err(),
        "a port was bound"
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_that_do_not_fit_the_database_stop_the_start_and_rotate_key_moves_everything_to_the_first() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let upstream = CountingUpstream::spawn().await;
    let mut cfg = GatewayConfig::new(
        dir.path(),
        upstream.addr(),
        StoreSpec::Sqlite(dir.path().join("portcullis.db")),
        vec!["alice".into(), "bob".into(), "carol".into()],
    );
    let (a, b) = (key(0xa), key(0xb));

    // Secrets sealed under key A.
    cfg.keys = vec![a.clone()];
    let gw = Gateway::start(&cfg, "with-a").await;
    let alice = gw.enroll_totp("alice", |_| {}).await.unwrap();
    let bob = gw.enroll_totp("bob", |_| {}).await.unwrap();
    gw.terminate();
    drop(gw);

    // Only key B, or no key: the database needs A. Not a single request served.
    cfg.keys = vec![b.clone()];
    let text = refused_start(&cfg);
    assert!(
        text.contains(&format!(
            "the database holds secrets sealed with key id {}",
            key_id(0xa)
        )),
        "{text}"
    );
    assert!(
        text.contains(&key_id(0xb)) && text.contains("wrong or missing key"),
        "{text}"
    );
    assert!(
        !text.contains(&a) && !text.contains(&b),
        "a key was printed:\n{text}"
    );
    // No key configured: the generated key file's key is not A either.
    cfg.keys = vec![];
    let text = refused_start(&cfg);
    assert!(
        text.contains(&key_id(0xa)) && text.contains("wrong or missing key"),
        "{text}"
    );

    // Rolling out B first: [B, A] opens both, seals with B.
    cfg.keys = vec![b.clone(), a.clone()];
    let gw = Gateway::start(&cfg, "with-b-a").await;
    let carol = gw.enroll_totp("carol", |_| {}).await.unwrap();

    // Rotation while that gateway keeps running on the same file.
    let config = cfg.write(free_port(), free_port());
    let out = run(&["store", "rotate-key", "--config", config.to_str().unwrap()]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "re-sealed 2 factor secret(s) under key id {}",
            key_id(0xb)
        )),
        "{text}"
    );
    let (status, body) = gw
        .verify_totp("alice", &alice.factor_id, &totp(&alice.secret, now() + 30))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("SUCCESS")),
        "{body}"
    );
    gw.terminate();
    drop(gw);
    let out = run(&["store", "rotate-key", "--config", config.to_str().unwrap()]);
    assert!(ok_text(&out).contains("re-sealed 0 factor secret(s)"));

    // B alone opens everything now; A alone no longer fits.
    cfg.keys = vec![b.clone()];
    let gw = Gateway::start(&cfg, "with-b").await;
    for e in [&bob, &carol] {
        let (status, body) = gw
            .verify_totp(&e.username, &e.factor_id, &totp(&e.secret, now() + 30))
            .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("SUCCESS")),
            "{}: {body}",
            e.username
        );
    }
    gw.terminate();
    drop(gw);
    cfg.keys = vec![a.clone()];
    let text = refused_start(&cfg);
    assert!(text.contains(&key_id(0xb)), "{text}");

    // rotate-key with a config that does not fit: 64, nothing changed.
    let config = cfg.write(free_port(), free_port());
    let out = run(&["store", "rotate-key", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", output_text(&out));
    cfg.keys = vec![];
    let config = cfg.write(free_port(), free_port());
    let out = run(&["store", "rotate-key", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", output_text(&out));
    std::fs::write(dir.path().join("broken.toml"), "default_policy = \"sometimes\"\n").unwrap();
    let broken = dir.path().join("broken.toml");
    let out = run(&["store", "rotate-key", "--config", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", output_text(&out));
    println!("keys: start-up checks and rotation in {:.1?}", started.elapsed());
}

fn ok_text(out: &Output) -> String {
    let t = output_text(out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    t
}

/// Without `store.encryption_keys`, SQLite gets a key file beside the
/// database (mode 0600), created once and used again after a restart. The
/// first start is in a fresh folder: the database's directory (like the
/// default `data/`) does not exist yet.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_without_keys_generates_a_private_key_file_and_keeps_using_it() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = CountingUpstream::spawn().await;
    let data = dir.path().join("data");
    let db = data.join("portcullis.db");
    let mut cfg = GatewayConfig::new(
        dir.path(),
        upstream.addr(),
        StoreSpec::Sqlite(db),
        vec!["alice".into()],
    );
    cfg.keys = vec![];
    let key_file = data.join("portcullis.db.key");

    // check-config says what will happen.
    let config = cfg.write(free_port(), free_port());
    let text = ok_text(&run(&["check-config", "--config", config.to_str().unwrap()]));
    assert!(
        text.contains("store.encryption_keys") && text.contains(&key_file.display().to_string()),
        "{text}"
    );
    assert!(!data.exists(), "check-config creates nothing");

    let gw = Gateway::start(&cfg, "generated-key").await;
    let alice = gw.enroll_totp("alice", |_| {}).await.unwrap();
    let log = gw.log_text();
    assert!(
        log.contains(&key_file.display().to_string()),
        "the key file is logged:\n{log}"
    );
    gw.terminate();
    drop(gw);
    let written = std::fs::read(&key_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the database's folder: {mode:o}");
    }
    assert!(
        !log.contains(String::from_utf8_lossy(&written).trim()),
        "the key was logged"
    );

    // Restarted: the same file, and the factor still verifies.
    let gw = Gateway::start(&cfg, "generated-key-again").await;
    let (status, body) = gw
        .verify_totp("alice", &alice.factor_id, &totp(&alice.secret, now() + 30))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("SUCCESS")),
        "{body}"
    );
    gw.terminate();
    assert_eq!(std::fs::read(&key_file).unwrap(), written, "created once");
}
