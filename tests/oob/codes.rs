//! Codes by SMS (portal, file delivery), e-mail (SMTP) and webhooks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::harness::{Answer, authn, code_in, eventually, field, gateway, messages, post, real_now};
use crate::support::{ALICE, TestGateway, form, set_cookie};

const PHONE: &str = "+15555550100";

/// POSTs a portal form with the login's cookies.
async fn post_form(gw: &TestGateway, path: &str, cookie: &str, pairs: &[(&str, &str)]) -> reqwest::Response {
    gw.client()
        .post(gw.url(path))
        .header("accept", "text/html")
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(pairs))
        .send()
        .await
        .unwrap()
}

async fn get_page(gw: &TestGateway, path: &str, cookie: &str) -> reqwest::Response {
    gw.client()
        .get(gw.url(path))
        .header("accept", "text/html")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn password_then_sms_code_through_the_portal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.jsonl");
    let gw = gateway(&format!(
        "default_policy = \"two_factor\"\n[factors.sms]\nenabled = true\ndelivery = {{ kind = \"file\", path = {:?} }}\n",
        file.display().to_string()
    ))
    .await;
    // First sign-in: no factor yet, so the portal offers to enroll one.
    let login = gw.login(ALICE).await;
    assert!(login.location.contains("/_portcullis/mfa"), "{}", login.location);
    let c = login.cookie();
    let res = get_page(&gw, "/_portcullis/mfa?rd=%2F", &c).await;
    assert_eq!(res.status(), 303);
    assert!(res.headers()["location"].to_str().unwrap().contains("/enroll"));
    let chooser = get_page(&gw, "/_portcullis/enroll?rd=%2F", &c)
        .await
        .text()
        .await
        .unwrap();
    assert!(chooser.contains("enroll-sms"), "{chooser}");
    let page = get_page(&gw, "/_portcullis/enroll?type=sms&rd=%2F", &c)
        .await
        .text()
        .await
        .unwrap();
    let csrf = field(&page, "csrf");
    // A malformed number is refused with the reason.
    let res = post_form(
        &gw,
        "/_portcullis/enroll/start",
        &c,
        &[
            ("csrf", &csrf),
            ("rd", "/"),
            ("type", "sms"),
            ("address", "555-0100"),
        ],
    )
    .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("E.164"));
    let res = post_form(
        &gw,
        "/_portcullis/enroll/start",
        &c,
        &[
            ("csrf", &csrf),
            ("rd", "/"),
            ("type", "sms"),
            ("address", "+1 555 555 0100"),
        ],
    )
    .await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    let factor = field(&page, "factor");
    let m = messages(&file).pop().unwrap();
    assert_eq!((m["kind"].as_str(), m["to"].as_str()), (Some("sms"), Some(PHONE)));
    let code = m["code"].as_str().unwrap().to_owned();
    let res = post_form(
        &gw,
        "/_portcullis/enroll/activate",
        &c,
        &[("csrf", &csrf), ("rd", "/"), ("factor", &factor), ("code", &code)],
    )
    .await;
    assert_eq!(res.status(), 303, "{}", res.text().await.unwrap());
    let (session, _) = set_cookie(&res, "portcullis_session").unwrap();
    assert_eq!(
        gw.status("/", Some(&format!("portcullis_session={session}")))
            .await,
        200
    );

    // Next sign-in: password, then a code by SMS.
    gw.clock.advance(60);
    let login = gw.login(ALICE).await;
    let c = login.cookie();
    assert_eq!(
        gw.status("/", Some(&login.session_cookie())).await,
        401,
        "level 1 only"
    );
    let page = get_page(&gw, "/_portcullis/mfa?rd=%2F", &c)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("/_portcullis/mfa/send") && page.contains("+1 *** *** **00"),
        "{page}"
    );
    let csrf = field(&page, "csrf");
    let sent = post_form(
        &gw,
        "/_portcullis/mfa/send",
        &c,
        &[("csrf", &csrf), ("rd", "/"), ("factor", &factor)],
    )
    .await;
    assert_eq!(sent.status(), 200);
    let code = messages(&file).pop().unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    // Asking again at once is refused (resend_after), and the page still takes the code.
    let again = post_form(
        &gw,
        "/_portcullis/mfa/send",
        &c,
        &[("csrf", &csrf), ("rd", "/"), ("factor", &factor)],
    )
    .await;
    assert_eq!(again.status(), 429);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let res = post_form(
        &gw,
        "/_portcullis/mfa/verify",
        &c,
        &[("csrf", &csrf), ("rd", "/"), ("factor", &factor), ("code", wrong)],
    )
    .await;
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("not correct"));
    let res = post_form(
        &gw,
        "/_portcullis/mfa/verify",
        &c,
        &[("csrf", &csrf), ("rd", "/"), ("factor", &factor), ("code", &code)],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/");
    let (session, _) = set_cookie(&res, "portcullis_session").unwrap();
    let echo = gw.echo("/", Some(&format!("portcullis_session={session}"))).await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
    // The code worked once.
    let c2 = format!("portcullis_session={session}; portcullis_csrf={}", login.csrf);
    let res = post_form(
        &gw,
        "/_portcullis/mfa/verify",
        &c2,
        &[("csrf", &csrf), ("rd", "/"), ("factor", &factor), ("code", &code)],
    )
    .await;
    assert_eq!(res.status(), 403);
}

/// aiosmtpd writing every message into a maildir; killed on drop.
struct Smtp {
    child: std::process::Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    async fn start() -> Option<Smtp> {
        let ok = std::process::Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            crate::skip::test(
                &crate::skip::current_test(),
                "python3 with aiosmtpd is not available (pip install aiosmtpd)",
            );
            return None;
        }
        let maildir = tempfile::tempdir().unwrap();
        let port = crate::support::free_port();
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let smtp = Smtp { child, port, maildir };
        eventually(Duration::from_secs(20), "aiosmtpd to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Some(smtp)
    }

    /// The bodies of the messages received so far, oldest first.
    fn bodies(&self) -> Vec<String> {
        let dir = self.maildir.path().join("mail").join("new");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    async fn next_code(&self, n: usize) -> (String, String) {
        let mail = eventually(Duration::from_secs(10), "an e-mail", || async {
            let all = self.bodies();
            (all.len() >= n).then(|| all[n - 1].clone())
        })
        .await;
        let body = mail
            .split_once("\n\n")
            .map_or(mail.as_str(), |(_, b)| b)
            .to_owned();
        (code_in(&body, 6), mail)
    }
}

#[tokio::test]
async fn email_codes_through_a_real_smtp_server() {
    let Some(smtp) = Smtp::start().await else { return };
    let gw = gateway(&format!(
        "default_policy = \"two_factor\"\n[factors.email]\nenabled = true\n\
         delivery = {{ kind = \"smtp\", host = \"127.0.0.1\", port = {}, tls = \"none\", from = \"Portcullis <noreply@example.com>\" }}\n",
        smtp.port
    ))
    .await;
    let a = authn(&gw, "alice", Some(ALICE.password)).await;
    assert_eq!(a.json["status"], "MFA_ENROLL", "{}", a.json);
    let catalog = a.json["_embedded"]["factors"].as_array().unwrap();
    assert!(catalog.iter().any(|f| f["factorType"] == "email"));
    let token = a.json["stateToken"].as_str().unwrap().to_owned();
    let e = post(
        &gw,
        "/_portcullis/api/v1/authn/factors",
        json!({ "stateToken": token, "factorType": "email", "provider": "OKTA", "profile": { "email": "alice@example.com" } }),
        None,
    )
    .await;
    assert_eq!(e.json["status"], "MFA_ENROLL_ACTIVATE", "{}", e.json);
    let fid = e.json["_embedded"]["factor"]["id"].as_str().unwrap().to_owned();
    let (code, mail) = smtp.next_code(1).await;
    assert!(mail.contains("To: alice@example.com"), "{mail}");
    assert!(mail.contains("Subject: Your"), "{mail}");
    let done = post(
        &gw,
        &format!("/_portcullis/api/v1/authn/factors/{fid}/lifecycle/activate"),
        json!({ "stateToken": token, "passCode": code }),
        None,
    )
    .await;
    assert_eq!(done.json["status"], "SUCCESS", "{}", done.json);

    // Sign in again: the e-mail factor sends a code on demand.
    let a = authn(&gw, "alice", Some(ALICE.password)).await;
    assert_eq!(a.json["status"], "MFA_REQUIRED");
    let listed = &a.json["_embedded"]["factors"][0];
    assert_eq!(listed["factorType"], "email");
    assert_eq!(listed["profile"]["email"], "a***@example.com", "masked");
    let token = a.json["stateToken"].as_str().unwrap().to_owned();
    let verify = format!("/_portcullis/api/v1/authn/factors/{fid}/verify");
    let ch = post(&gw, &verify, json!({ "stateToken": token }), None).await;
    assert_eq!(ch.json["status"], "MFA_CHALLENGE", "{}", ch.json);
    let (code, _) = smtp.next_code(2).await;
    let ok = post(
        &gw,
        &verify,
        json!({ "stateToken": token, "passCode": code }),
        None,
    )
    .await;
    assert_eq!(ok.json["status"], "SUCCESS", "{}", ok.json);
    assert!(ok.session.is_some());
}

type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A relay answering `status` to every request, keeping each signature header and body.
async fn relay(status: u16) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let addr = crate::support::spawn_upstream(move |req: http::Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            let sig = req
                .headers()
                .get("portcullis-signature")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
            s.lock().unwrap().push((sig, body));
            http::Response::builder()
                .status(status)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        }
    })
    .await;
    (format!("http://{addr}/sms"), seen)
}

const HOOK_SECRET: &str = "whsec-test-0123456789abcdef";

async fn enroll_sms(gw: &TestGateway) -> (String, Answer) {
    let a = authn(gw, "alice", Some(ALICE.password)).await;
    let token = a.json["stateToken"].as_str().unwrap().to_owned();
    let e = post(
        gw,
        "/_portcullis/api/v1/authn/factors",
        json!({ "stateToken": token, "factorType": "sms", "provider": "OKTA", "profile": { "phoneNumber": PHONE } }),
        None,
    )
    .await;
    (token, e)
}

#[tokio::test]
async fn webhook_deliveries_are_signed() {
    let (url, seen) = relay(204).await;
    let gw = gateway(&format!(
        "default_policy = \"two_factor\"\n[factors.sms]\nenabled = true\n\
         delivery = {{ kind = \"webhook\", url = \"{url}\", secret = \"{HOOK_SECRET}\" }}\n"
    ))
    .await;
    let (token, e) = enroll_sms(&gw).await;
    assert_eq!(e.json["status"], "MFA_ENROLL_ACTIVATE", "{}", e.json);
    let fid = e.json["_embedded"]["factor"]["id"].as_str().unwrap().to_owned();
    let (sig, body) = seen.lock().unwrap()[0].clone();
    assert!(sig.starts_with("t=") && sig.contains(",v1="), "{sig}");
    assert!(portcullis::delivery::webhook::verify_signature(
        HOOK_SECRET.as_bytes(),
        &sig,
        &body,
        real_now(),
        300
    ));
    assert!(!portcullis::delivery::webhook::verify_signature(
        b"wrong",
        &sig,
        &body,
        real_now(),
        300
    ));
    let msg: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(msg["kind"], "sms");
    assert_eq!(msg["to"], PHONE);
    assert_eq!(msg["user"], "alice");
    assert!(msg["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(
        msg.get("code").is_none(),
        "the code travels only in the text: {msg}"
    );
    let code = code_in(msg["text"].as_str().unwrap(), 6);
    let done = post(
        &gw,
        &format!("/_portcullis/api/v1/authn/factors/{fid}/lifecycle/activate"),
        json!({ "stateToken": token, "passCode": code }),
        None,
    )
    .await;
    assert_eq!(done.json["status"], "SUCCESS", "{}", done.json);

    // A challenge, and a resend too soon: 429 E0000109 with the rate-limit headers.
    let a = authn(&gw, "alice", Some(ALICE.password)).await;
    let token = a.json["stateToken"].as_str().unwrap().to_owned();
    let verify = format!("/_portcullis/api/v1/authn/factors/{fid}/verify");
    let ch = post(&gw, &verify, json!({ "stateToken": token }), None).await;
    assert_eq!(ch.json["status"], "MFA_CHALLENGE");
    assert_eq!(
        ch.json["_embedded"]["factor"]["profile"]["phoneNumber"],
        "+1 *** *** **00"
    );
    assert!(
        ch.json["_links"]["resend"][0]["href"]
            .as_str()
            .unwrap()
            .ends_with("/verify/resend")
    );
    let again = post(
        &gw,
        &format!("{verify}/resend"),
        json!({ "stateToken": token }),
        None,
    )
    .await;
    assert_eq!(again.status, 429);
    assert_eq!(again.json["errorCode"], "E0000109");
    assert!(again.header("date").is_some() && again.header("x-rate-limit-reset").is_some());
    gw.clock.advance(30);
    let again = post(
        &gw,
        &format!("{verify}/resend"),
        json!({ "stateToken": token }),
        None,
    )
    .await;
    assert_eq!(again.json["status"], "MFA_CHALLENGE", "{}", again.json);
    assert_eq!(seen.lock().unwrap().len(), 3);
    let (_, body) = seen.lock().unwrap()[2].clone();
    let code = code_in(
        serde_json::from_slice::<Value>(&body).unwrap()["text"]
            .as_str()
            .unwrap(),
        6,
    );
    let ok = post(
        &gw,
        &verify,
        json!({ "stateToken": token, "passCode": code }),
        None,
    )
    .await;
    assert_eq!(ok.json["status"], "SUCCESS", "{}", ok.json);
    let me = gw
        .get_json(
            "/_portcullis/api/v1/sessions/me",
            Some(&format!("portcullis_session={}", ok.session.unwrap())),
        )
        .await;
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["amr"], json!(["pwd", "sms"]));
}

#[tokio::test]
async fn a_failing_webhook_is_a_clear_error() {
    let (url, seen) = relay(500).await;
    let gw = gateway(&format!(
        "default_policy = \"two_factor\"\n[factors.sms]\nenabled = true\n\
         delivery = {{ kind = \"webhook\", url = \"{url}\", secret = \"{HOOK_SECRET}\" }}\n"
    ))
    .await;
    let (_, e) = enroll_sms(&gw).await;
    assert_eq!(e.status, 503, "{}", e.json);
    assert_eq!(e.json["errorCode"], "E0000009");
    assert!(
        e.json["errorCauses"][0]["errorSummary"]
            .as_str()
            .unwrap()
            .contains("could not be delivered"),
        "{}",
        e.json
    );
    assert_eq!(seen.lock().unwrap().len(), 3, "three attempts with backoff");
    // No half-enrolled factor is left behind: the next sign-in still enrolls.
    let a = authn(&gw, "alice", Some(ALICE.password)).await;
    assert_eq!(a.json["status"], "MFA_ENROLL");
}
