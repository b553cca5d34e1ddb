//! The admin console in real headless Chromium against the real binary:
//! a non-member gets 403; the helpdesk administrator finds a user, and
//! with a second factor older than `admin.console_max_age` is sent to step
//! up before resetting the user's last factor, then comes back and resets
//! it; a cross-site form post is refused even with the right token; the
//! user is asked to enroll at the next sign-in. Screenshots of the pages at
//! 1280 and 390 px wide go to the target directory.

use std::path::Path;
use std::time::{Duration, Instant};

use fantoccini::Locator;

use crate::browser::{Authenticator, GatewayProcess, Person, browser, which};
use crate::harness::{ALICE, BOB, have, toml_str};

/// How old the administrator's second factor may be for a change.
const MAX_AGE_SECS: u64 = 12;

/// alice is the helpdesk; bob is not.
fn users(dir: &Path) {
    let mut out = String::new();
    for (u, groups) in [(ALICE, "[\"helpdesk\"]"), (BOB, "[\"staff\"]")] {
        let hash = portcullis::passwords::hash_password(u.password.as_bytes()).unwrap();
        out.push_str(&format!(
            "[[users]]\nusername = {}\npassword = {}\ndisplay_name = {}\nemail = {}\ngroups = {groups}\n\n",
            toml_str(u.username),
            toml_str(&hash),
            toml_str(&format!("{} Example", u.username)),
            toml_str(&format!("{}@example.com", u.username)),
        ));
    }
    std::fs::write(dir.join("users.toml"), out).unwrap();
}

impl Person {
    /// Signs in as `who` from the sign-in page (going on to `rd`).
    async fn sign_in_as(&self, who: crate::harness::User, rd: &str) {
        self.goto(&format!("/_portcullis/login?rd={}", rd)).await;
        self.on("/_portcullis/login").await;
        self.type_into("#username", who.username).await;
        self.type_into("#password", who.password).await;
        self.click_and_load("form[action$='/login'] button[type=submit]")
            .await;
    }

    /// Enrolls a first TOTP factor on the enrollment page; returns the
    /// authenticator (the key read off the page).
    async fn enroll(&self) -> Authenticator {
        self.on("/_portcullis/enroll").await;
        let key = self.find("#secret").await;
        let secret = key.attr("data-secret").await.unwrap().expect("data-secret");
        let mut app = Authenticator { secret, last: None };
        let (code, step) = app.code().await;
        self.type_into("#code", &code).await;
        self.click_and_load("form[action$='/enroll/activate'] button[type=submit]")
            .await;
        self.find("#recovery-codes").await;
        app.accepted(step);
        self.click_and_load("#continue").await;
        app
    }

    /// Screenshots of the current page at a desktop and a phone width.
    async fn both_widths(&self, name: &str) {
        for (w, h) in [(1280, 900), (390, 844)] {
            self.b.set_window_size(w, h).await.unwrap();
            self.screenshot(&format!("console-{name}-{w}.png")).await;
        }
        self.b.set_window_size(1000, 1100).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpdesk_resets_a_last_factor_in_the_console() {
    let name = "helpdesk_resets_a_last_factor_in_the_console";
    let tools = (
        which("chromium").or_else(|| which("chromium-browser")),
        have("chromedriver"),
    );
    let (Some(chromium), true) = tools else {
        crate::skip::test(
            name,
            "chromium/chromedriver not installed (apt-get install chromium chromium-driver)",
        );
        return;
    };
    if !crate::harness::have_oathtool(name) {
        return;
    }
    crate::harness::init_crypto();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let users_dir = dir.path().to_owned();
    let gw = GatewayProcess::start_with(dir.path(), |c| {
        users(&users_dir);
        c.replace(
            "[admin]\n",
            &format!("[admin]\nconsole_groups = [\"helpdesk\"]\nconsole_max_age = \"{MAX_AGE_SECS}s\"\n"),
        )
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let (_driver, b) = browser(&chromium, profile.path()).await;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let me = Person {
        b,
        base: gw.base.clone(),
        shots,
    };

    // bob enrolls his one factor; the console is not for him: 403.
    me.sign_in_as(BOB, "/hello").await;
    me.enroll().await;
    me.on("/hello").await;
    me.goto("/_portcullis/console/").await;
    me.on("/_portcullis/console/").await;
    assert_eq!(me.text("h1").await, "Access denied");
    me.both_widths("denied").await;
    me.b.delete_all_cookies().await.unwrap();

    // alice, the helpdesk, signs in with two factors and lands in the console.
    me.sign_in_as(ALICE, "/_portcullis/console/").await;
    let mut app = me.enroll().await;
    me.on("/_portcullis/console/").await;
    assert_eq!(me.text("#console-admin").await, "alice");
    me.both_widths("users").await;

    // She finds bob by his e-mail address.
    me.type_into("#q", "bob@example").await;
    me.click_and_load("form.search button[type=submit]").await;
    assert!(me.text("#count").await.starts_with("1 user"));
    me.click_and_load("#users a").await;
    let bob_page = me.path().await;
    assert!(
        bob_page.starts_with("/_portcullis/console/users/00u"),
        "{bob_page}"
    );
    let reset = me.find("#factors button[id^='reset-']").await;
    let reset_id = reset.attr("id").await.unwrap().unwrap();
    me.both_widths("user").await;

    // Her second factor is now older than console_max_age: the reset sends
    // her to step up first, and back to bob's page.
    tokio::time::sleep(Duration::from_secs(MAX_AGE_SECS + 1)).await;
    me.goto(&bob_page).await;
    assert!(
        me.find(".note")
            .await
            .text()
            .await
            .unwrap()
            .contains("second factor")
    );
    me.click_and_load(&format!("#{reset_id}")).await;
    me.on("/_portcullis/mfa").await;
    let (code, step) = app.code().await;
    me.enter_code(&code).await;
    app.accepted(step);
    me.on(&bob_page).await;
    assert!(
        me.b.find(Locator::Css("#notice")).await.is_err(),
        "nothing was reset before the step-up"
    );

    // Now the reset goes through: bob has no factor left.
    me.click_and_load(&format!("#{reset_id}")).await;
    me.on(&bob_page).await;
    assert!(me.text("#notice").await.contains("factor was removed"));
    me.find("#no-factors").await;

    // A page of another site posts to the console with alice's cookies, and
    // even with her token: refused.
    let token = me
        .find("form[action$='/revoke'] input[name=csrf]")
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let evil = format!(
        "data:text/html,<form method=post action=\"{}{bob_page}/revoke\"><input name=csrf value=\"{token}\"><button id=go>go</button></form>",
        gw.base
    );
    me.b.goto(&evil).await.unwrap();
    me.click_and_load("#go").await;
    me.on(&format!("{bob_page}/revoke")).await;
    assert_eq!(me.text("h1").await, "Change refused");

    // The events page shows what alice did.
    me.goto("/_portcullis/console/events?q=bob").await;
    let ok = crate::browser::until(Duration::from_secs(10), async || {
        me.goto("/_portcullis/console/events?q=bob").await;
        me.text("#events").await.contains("Reset factor or authenticator")
    })
    .await;
    assert!(ok, "the reset is in the audit log");
    me.both_widths("events").await;
    me.goto("/_portcullis/console/new-user").await;
    me.find("#create").await;
    me.both_widths("new-user").await;

    // bob's next sign-in asks him to enroll again.
    me.b.delete_all_cookies().await.unwrap();
    me.sign_in_as(BOB, "/hello").await;
    me.on("/_portcullis/enroll").await;

    me.b.clone().close().await.unwrap();
    eprintln!("console scenario took {:.1} s", started.elapsed().as_secs_f64());
}
