//! A person in real headless Chromium, driven through WebDriver (chromedriver
//! and fantoccini), against the real `portcullis` binary: sign in, enroll an
//! authenticator by reading the key off the page, reach the app, sign out,
//! sign in with a TOTP code, then with a recovery code, and get locked out by
//! wrong codes. Every code comes from oathtool, on the real clock.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::harness::{ALICE, Setup, have, oathtool, wrong_code};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// How long a page may take to appear.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);
/// `factors.totp.skew` of the gateway under test (the default).
const SKEW: i64 = 1;

include!("../support/ports.rs");

pub(crate) fn unix_now() -> i64 {
    #[allow(clippy::disallowed_methods)] // the real clock is the point here
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(d.as_secs()).unwrap()
}

/// Polls `probe` until it is true or `within` passes.
pub(crate) async fn until(within: Duration, mut probe: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process (and the process group it leads), ended on drop.
pub(crate) struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    pub(crate) fn spawn(name: &'static str, cmd: &mut Command) -> Self {
        use std::os::unix::process::CommandExt;
        // Its own process group, so that what it starts (Chromium) ends with it.
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("{} (pid {pgid}) stopped", self.name);
    }
}

/// The path of `program` on PATH.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// TOTP codes from oathtool for the real clock, respecting the gateway's
/// replay rule (each accepted step must be later than the last one) and its
/// skew: when the next unused step is beyond `now + skew`, wait for time to
/// catch up, as a person waits for their app's next code.
pub(crate) struct Authenticator {
    pub(crate) secret: String,
    pub(crate) last: Option<i64>,
}

impl Authenticator {
    /// The next usable code and its step. Call [`Self::accepted`] once the
    /// gateway took it.
    pub(crate) async fn code(&self) -> (String, i64) {
        loop {
            let now = unix_now();
            let step = now / 30;
            let want = self.last.map_or(step, |l| (l + 1).max(step));
            // The gateway is at `step` or later, so it accepts `want` up to `step + SKEW`.
            if want <= step + SKEW {
                return (oathtool(&self.secret, want * 30), want);
            }
            let wait = (want - SKEW) * 30 - now;
            eprintln!("waiting {wait} s for the next TOTP step");
            tokio::time::sleep(Duration::from_secs(u64::try_from(wait.max(1)).unwrap())).await;
        }
    }

    pub(crate) fn accepted(&mut self, step: i64) {
        self.last = Some(step);
    }
}

/// The `portcullis` binary serving a two-factor config on SQLite.
pub(crate) struct GatewayProcess {
    pub(crate) base: String,
    /// The echo app behind it.
    pub(crate) upstream: std::net::SocketAddr,
    config: PathBuf,
    _proc: Proc,
}

impl GatewayProcess {
    pub(crate) async fn start(dir: &Path) -> Self {
        Self::start_with(dir, |c| c).await
    }

    /// Started with its config text passed through `edit` first.
    pub(crate) async fn start_with(dir: &Path, edit: impl FnOnce(String) -> String) -> Self {
        let (main, admin) = (free_port(), free_port());
        let setup = Setup {
            listen: ([127, 0, 0, 1], main).into(),
            admin: ([127, 0, 0, 1], admin).into(),
            upstream: crate::harness::echo().await,
            sqlite_dir: Some(dir.to_owned()),
            max_factor_failures: 3,
            skew: u32::try_from(SKEW).unwrap(),
        };
        let config = dir.join("portcullis.toml");
        let upstream = setup.upstream;
        std::fs::write(&config, edit(setup.config(dir))).unwrap();
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        let proc = Proc::spawn(
            "portcullis",
            Command::new(BIN)
                .args(["serve", "--config"])
                .arg(&config)
                .env_remove("PORTCULLIS_CONFIG")
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let base = format!("http://127.0.0.1:{main}");
        let health = format!("{base}/_portcullis/healthz");
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let up = until(Duration::from_secs(20), async || {
            client
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(
            up,
            "the gateway did not start:\n{}",
            std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
        );
        GatewayProcess {
            base,
            upstream,
            config,
            _proc: proc,
        }
    }

    /// `portcullis users unlock USER --config FILE`, as an operator runs it.
    pub(crate) fn unlock(&self, user: &str) -> String {
        let out = Command::new(BIN)
            .args(["users", "unlock", user, "--config"])
            .arg(&self.config)
            .env_remove("PORTCULLIS_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "unlock failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// chromedriver on a free port, with a Chromium session in headless mode.
pub(crate) async fn browser(chromium: &Path, profile: &Path) -> (Proc, Client) {
    browser_with(chromium, profile, &[]).await
}

/// [`browser`] with more Chromium arguments.
pub(crate) async fn browser_with(chromium: &Path, profile: &Path, extra: &[String]) -> (Proc, Client) {
    let (driver, client, _) = browser_at(chromium, profile, extra).await;
    (driver, client)
}

/// [`browser_with`], also answering chromedriver's URL (for WebDriver
/// extensions fantoccini has no call for, such as virtual authenticators).
pub(crate) async fn browser_at(chromium: &Path, profile: &Path, extra: &[String]) -> (Proc, Client, String) {
    let port = free_port();
    let driver = Proc::spawn(
        "chromedriver",
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let ready = until(Duration::from_secs(20), async || {
        match http.get(format!("{url}/status")).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["value"]["ready"] == true),
            Err(_) => false,
        }
    })
    .await;
    assert!(ready, "chromedriver did not become ready");
    let mut args = vec![
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--window-size=1000,1100".to_owned(),
        format!("--user-data-dir={}", profile.display()),
    ];
    args.extend_from_slice(extra);
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": args,
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a WebDriver session in Chromium");
    (driver, client, url)
}

/// The person at the browser.
pub(crate) struct Person {
    pub(crate) b: Client,
    pub(crate) base: String,
    pub(crate) shots: PathBuf,
}

impl Person {
    pub(crate) async fn goto(&self, path: &str) {
        self.b.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    pub(crate) async fn path(&self) -> String {
        self.b.current_url().await.unwrap().path().to_owned()
    }

    /// Waits until the browser shows `path`.
    pub(crate) async fn on(&self, path: &str) {
        let ok = until(PAGE_TIMEOUT, async || self.path().await == path).await;
        if !ok {
            let html = self.b.source().await.unwrap_or_default();
            panic!(
                "expected {path}, the browser is at {}:\n{html}",
                self.path().await
            );
        }
    }

    pub(crate) async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.b
            .wait()
            .at_most(PAGE_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    pub(crate) async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    pub(crate) async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// Clicks what navigates (a submit button, a link) and waits until the
    /// old page is gone, so the next look is at the new one.
    pub(crate) async fn click_and_load(&self, css: &str) {
        let old = self.b.find(Locator::Css("html")).await.unwrap();
        self.click(css).await;
        let gone = until(PAGE_TIMEOUT, async || old.tag_name().await.is_err()).await;
        assert!(gone, "clicking {css} loaded no new page");
    }

    pub(crate) async fn screenshot(&self, name: &str) {
        let png = self.b.screenshot().await.unwrap();
        let file = self.shots.join(name);
        std::fs::write(&file, png).unwrap();
        eprintln!("screenshot: {}", file.display());
    }

    /// Opens the app, gets sent to the login page, and signs in.
    pub(crate) async fn sign_in(&self) {
        self.goto("/hello").await;
        self.on("/_portcullis/login").await;
        let rd = self.b.current_url().await.unwrap();
        assert!(
            rd.query_pairs().any(|(k, v)| k == "rd" && v.ends_with("/hello")),
            "the login page remembers where to go: {rd}"
        );
        self.type_into("#username", ALICE.username).await;
        self.type_into("#password", ALICE.password).await;
        self.click_and_load("form[action$='/login'] button[type=submit]")
            .await;
    }

    /// The app is reached, and told who signed in.
    pub(crate) async fn at_the_app(&self) {
        self.on("/hello").await;
        assert_eq!(self.text("h1").await, "Hello, alice");
        let row = self
            .b
            .find(Locator::XPath("//tr[th='remote-user']/td"))
            .await
            .expect("the upstream received Remote-User");
        assert_eq!(row.text().await.unwrap(), "alice");
    }

    /// Signs out on the factors page; returns the recovery codes left it showed.
    pub(crate) async fn sign_out(&self) -> u32 {
        self.goto("/_portcullis/factors").await;
        self.on("/_portcullis/factors").await;
        let left = self.text("#codes-left").await.parse().unwrap();
        self.click_and_load("#sign-out").await;
        self.on("/_portcullis/logout").await;
        assert_eq!(self.text("h1").await, "Signed out");
        // Signed out means the app is out of reach again.
        self.goto("/hello").await;
        self.on("/_portcullis/login").await;
        left
    }

    /// Types a TOTP code on the challenge page and submits it.
    pub(crate) async fn enter_code(&self, code: &str) {
        self.type_into("#code", code).await;
        self.click_and_load("form[action$='/mfa/verify'] button[type=submit]")
            .await;
    }

    /// The error a refused code left on the challenge page.
    pub(crate) async fn refusal(&self) -> String {
        self.on("/_portcullis/mfa/verify").await;
        self.text("p.error").await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_enrolls_signs_in_and_gets_locked_out() {
    let tools = (
        which("chromium").or_else(|| which("chromium-browser")),
        have("chromedriver"),
    );
    let (Some(chromium), true) = tools else {
        crate::skip::test(
            "browser_enrolls_signs_in_and_gets_locked_out",
            "chromium/chromedriver not installed (apt-get install chromium chromium-driver)",
        );
        return;
    };
    if !crate::harness::have_oathtool("browser_enrolls_signs_in_and_gets_locked_out") {
        return;
    }
    crate::harness::init_crypto();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::start(dir.path()).await;
    let profile = tempfile::tempdir().unwrap();
    let (_driver, b) = browser(&chromium, profile.path()).await;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let me = Person {
        b,
        base: gw.base.clone(),
        shots,
    };

    // First visit: login, then enrollment (no factor yet).
    me.sign_in().await;
    me.on("/_portcullis/enroll").await;
    let key = me.find("#secret").await;
    let secret = key.attr("data-secret").await.unwrap().expect("data-secret");
    assert_eq!(secret.len(), 32, "a 160-bit key: {secret}");
    assert_eq!(
        key.text().await.unwrap().replace(' ', ""),
        secret,
        "the key as text, in groups"
    );
    me.screenshot("enroll.png").await;
    // The QR code holds a standard key URI with the same key.
    let qr = me.find("img[alt^='QR code']").await.screenshot().await.unwrap();
    let qr_file = dir.path().join("qr.png");
    std::fs::write(&qr_file, qr).unwrap();
    if let Some(uri) = crate::harness::decode_qr(&qr_file) {
        crate::api::check_key_uri(&uri, &secret, "alice", unix_now());
    }
    let mut app = Authenticator { secret, last: None };
    let (code, step) = app.code().await;
    me.type_into("#code", &code).await;
    me.click_and_load("form[action$='/enroll/activate'] button[type=submit]")
        .await;

    // Recovery codes, shown once.
    let list = me.find("#recovery-codes").await;
    app.accepted(step);
    let mut codes = Vec::new();
    for li in list.find_all(Locator::Css("li code")).await.unwrap() {
        codes.push(li.text().await.unwrap());
    }
    assert_eq!(codes.len(), 10, "{codes:?}");
    for c in &codes {
        assert!(
            c.len() == 14 && c.matches('-').count() == 2,
            "recovery code {c:?}"
        );
    }
    me.click_and_load("#continue").await;
    me.at_the_app().await;
    assert_eq!(me.sign_out().await, 10);

    // Second visit: login, then the challenge with a fresh code.
    me.sign_in().await;
    me.on("/_portcullis/mfa").await;
    me.screenshot("challenge.png").await;
    let (code, step) = app.code().await;
    me.enter_code(&code).await;
    me.at_the_app().await;
    app.accepted(step);
    assert_eq!(me.sign_out().await, 10);

    // Third visit: the device is lost; a recovery code.
    me.sign_in().await;
    me.on("/_portcullis/mfa").await;
    me.click("details summary").await;
    me.type_into("#recovery", &codes[3]).await;
    me.click_and_load("form[action$='/mfa/recovery'] button[type=submit]")
        .await;
    me.at_the_app().await;
    assert_eq!(me.sign_out().await, 9, "the recovery code is spent");

    // Fourth visit: wrong codes until the lockout (max_factor_failures = 3).
    me.sign_in().await;
    me.on("/_portcullis/mfa").await;
    let wrong = wrong_code(&app.secret, unix_now(), 3);
    let wait = "Your password was right, but too many wrong codes were entered for your \
                second factor. Try again in about 15 minutes.";
    for attempt in 1..=3 {
        me.enter_code(&wrong).await;
        assert_eq!(
            me.refusal().await,
            if attempt < 3 {
                "That code is not correct. Try again."
            } else {
                wait
            },
            "wrong code #{attempt}"
        );
    }
    // Locked: now even the right code is refused. The password is proven,
    // so alice is told to wait rather than that the code is wrong; the app
    // stays out of reach.
    let (code, step) = app.code().await;
    me.enter_code(&code).await;
    assert_eq!(me.refusal().await, wait, "a locked user is told to wait");
    me.goto("/hello").await;
    me.on("/_portcullis/mfa").await;

    // The operator unlocks alice; the same code now lets her in (a refused
    // code was not spent).
    let said = gw.unlock("alice");
    assert!(said.contains("alice: unlocked"), "{said}");
    me.enter_code(&code).await;
    me.at_the_app().await;
    app.accepted(step);

    me.b.clone().close().await.unwrap();
    eprintln!("browser scenario took {:.1} s", started.elapsed().as_secs_f64());
}
