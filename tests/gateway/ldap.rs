//! Directory users against a real OpenLDAP (`slapd`), started per test on a
//! free port with a temporary `slapd.conf` and an MDB database loaded with
//! `slapadd`; changes during a test go through `ldapmodify`. Active
//! Directory cannot run here: its preset is tested against slapd with
//! AD-shaped entries (a small schema giving `sAMAccountName`, `objectGUID`,
//! `userAccountControl` and `objectCategory` equality rules).
//!
//! Without slapd the tests print `SKIPPED ...`; with `CI=true` that fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::clock::Clock;
use serde_json::{Value, json};

use crate::support::*;

const ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
const ADMIN_PW: &str = "slapd-admin-secret";
const PREFIX: &str = "/_portcullis";

/// True when slapd and the LDAP tools are here; else prints SKIPPED (and
/// fails under CI=true).
fn have_slapd(test: &str) -> bool {
    let missing: Vec<&str> = ["/usr/sbin/slapd", "/usr/sbin/slapadd", "/usr/bin/ldapmodify"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    crate::skip::test(
        test,
        &format!(
            "{} not installed (apt-get install slapd ldap-utils)",
            missing.join(", ")
        ),
    );
    false
}

/// TLS material for slapd: a private CA and a server certificate for
/// `localhost` and 127.0.0.1.
struct TestCa {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn test_ca() -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis test directory CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    TestCa {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A running slapd with its own folder; stopped when dropped.
struct Slapd {
    dir: tempfile::TempDir,
    conf: PathBuf,
    port: u16,
    tls_port: Option<u16>,
    child: Option<Child>,
}

const AD_SCHEMA: &str = r#"
attributetype ( 1.3.6.1.4.1.55555.1.1 NAME 'sAMAccountName' EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.2 NAME 'objectGUID' EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.3 NAME 'userAccountControl' EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.4 NAME 'objectCategory' EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.55555.2.1 NAME 'user' SUP inetOrgPerson STRUCTURAL MAY ( sAMAccountName $ objectGUID $ userAccountControl $ objectCategory ) )
objectclass ( 1.3.6.1.4.1.55555.2.2 NAME 'group' SUP groupOfNames STRUCTURAL MAY ( objectCategory ) )
"#;

impl Slapd {
    /// Starts slapd with `ldif` loaded; `ad` adds the AD-shaped schema,
    /// `tls` an ldaps:// listener and StartTLS.
    fn start(ldif: &str, ad: bool, tls: Option<&TestCa>) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("db")).unwrap();
        let mut conf = String::from(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n",
        );
        if ad {
            std::fs::write(d.join("ad.schema"), AD_SCHEMA).unwrap();
            conf.push_str(&format!("include {}/ad.schema\n", d.display()));
        }
        conf.push_str(&format!(
            "modulepath /usr/lib/ldap\nmoduleload back_mdb\npidfile {dir}/slapd.pid\n",
            dir = d.display()
        ));
        if let Some(ca) = tls {
            std::fs::write(d.join("ca.pem"), &ca.ca_pem).unwrap();
            std::fs::write(d.join("server.pem"), &ca.cert_pem).unwrap();
            std::fs::write(d.join("server.key"), &ca.key_pem).unwrap();
            conf.push_str(&format!(
                "TLSCACertificateFile {dir}/ca.pem\nTLSCertificateFile {dir}/server.pem\nTLSCertificateKeyFile {dir}/server.key\n",
                dir = d.display()
            ));
        }
        conf.push_str(&format!(
            "database mdb\nsuffix \"dc=example,dc=com\"\nrootdn \"{ADMIN_DN}\"\nrootpw {ADMIN_PW}\n\
             directory {dir}/db\nmaxsize 10485760\n",
            dir = d.display()
        ));
        let conf_path = d.join("slapd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        std::fs::write(d.join("init.ldif"), ldif).unwrap();
        let out = Command::new("/usr/sbin/slapadd")
            .args([
                "-f",
                conf_path.to_str().unwrap(),
                "-l",
                d.join("init.ldif").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = Slapd {
            conf: conf_path,
            port: free_port(),
            tls_port: tls.map(|_| free_port()),
            child: None,
            dir,
        };
        s.run();
        s
    }

    fn run(&mut self) {
        let mut urls = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(p) = self.tls_port {
            urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
        }
        let child = Command::new("/usr/sbin/slapd")
            .args(["-f", self.conf.to_str().unwrap(), "-h", &urls, "-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "slapd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The MDB lock of a killed slapd is released with the process.
        let _ = std::fs::remove_file(self.dir.path().join("slapd.pid"));
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Applies LDIF change records as the directory's admin.
    fn modify(&self, ldif: &str) {
        use std::io::Write;
        let mut child = Command::new("/usr/bin/ldapmodify")
            .args(["-x", "-H", &self.url(), "-D", ADMIN_DN, "-w", ADMIN_PW])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(ldif.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ldapmodify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

const BASE_LDIF: &str = "dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
dn: ou=people,dc=example,dc=com\nobjectClass: organizationalUnit\nou: people\n\n\
dn: ou=groups,dc=example,dc=com\nobjectClass: organizationalUnit\nou: groups\n\n";

fn person(uid: &str, password: &str) -> String {
    format!(
        "dn: uid={uid},ou=people,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: Test\n\
         displayName: {uid} Directory\nmail: {uid}@corp.example\nuserPassword: {password}\n\n"
    )
}

fn group(cn: &str, members: &[&str]) -> String {
    // groupOfNames needs a member: a placeholder lets a test remove the last real one.
    let mut s = format!(
        "dn: cn={cn},ou=groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: {cn}\nmember: cn=placeholder,dc=example,dc=com\n"
    );
    for m in members {
        s.push_str(&format!("member: uid={m},ou=people,dc=example,dc=com\n"));
    }
    s.push('\n');
    s
}

/// dana (admins), erin, and bob, a name the users file also has.
fn openldap_ldif() -> String {
    format!(
        "{BASE_LDIF}{}{}{}{}{}",
        person("dana", "dana-directory-pw"),
        person("erin", "erin-directory-pw"),
        person("bob", "bob-directory-pw"),
        group("admins", &["dana"]),
        group("staff", &["dana", "erin"]),
    )
}

fn gateway_toml(ldap: &str) -> String {
    format!(
        r#"
[users.ldap]
{ldap}
bind_dn = "{ADMIN_DN}"
bind_password = "{ADMIN_PW}"
base_dn = "dc=example,dc=com"
timeout = "2s"
refresh_interval = "1s"

[factors.totp]
enabled = true

[[rules]]
path = "^/admin(/|$)"
policy = "one_factor"
groups = ["admins"]

[[rules]]
path = "^/secure(/|$)"
policy = "two_factor"
"#
    )
}

async fn start_gateway(slapd: &Slapd) -> TestGateway {
    TestGateway::start(&gateway_toml(&format!("url = \"{}\"", slapd.url()))).await
}

/// POST JSON to the authentication API; status, body and the session cookie set.
async fn authn(gw: &TestGateway, path: &str, body: Value) -> (u16, Value, Option<String>) {
    let res = gw
        .client()
        .post(gw.url(&format!("{PREFIX}/api/v1/authn{path}")))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let cookie = set_cookie(&res, "portcullis_session").map(|(v, _)| format!("portcullis_session={v}"));
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), cookie)
}

async fn password(gw: &TestGateway, user: &str, pw: &str) -> (u16, Value, Option<String>) {
    authn(gw, "", json!({ "username": user, "password": pw })).await
}

fn totp(gw: &TestGateway, secret_b32: &str, steps: i64) -> String {
    let secret = base32::decode(base32::Alphabet::Rfc4648 { padding: false }, secret_b32).unwrap();
    let cfg = gw.gateway.state().config.factors.totp.clone();
    portcullis::factors::totp::code_at(&cfg, &secret, gw.clock.now() + steps * 30)
}

/// Password, then TOTP enrollment and activation; returns the level-2
/// session cookie, the user's id and the TOTP secret.
async fn enroll(gw: &TestGateway, user: &str, pw: &str) -> (String, String, String) {
    let (status, a, _) = password(gw, user, pw).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["status"], "MFA_ENROLL", "{a}");
    let uid = a["_embedded"]["user"]["id"].as_str().unwrap().to_owned();
    let state = a["stateToken"].as_str().unwrap().to_owned();
    let (_, e, _) = authn(
        gw,
        "/factors",
        json!({ "stateToken": state, "factorType": "token:software:totp", "provider": "GOOGLE" }),
    )
    .await;
    assert_eq!(e["status"], "MFA_ENROLL_ACTIVATE", "{e}");
    let fid = e["_embedded"]["factor"]["id"].as_str().unwrap().to_owned();
    let secret = e["_embedded"]["factor"]["_embedded"]["activation"]["sharedSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, done, cookie) = authn(
        gw,
        &format!("/factors/{fid}/lifecycle/activate"),
        json!({ "stateToken": state, "passCode": totp(gw, &secret, 0) }),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "SUCCESS", "{done}");
    gw.clock.advance(30);
    (cookie.expect("a level-2 session"), uid, secret)
}

/// Polls `f` until it is true or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(gw: &TestGateway) -> (u16, String) {
    let res = gw.client().get(gw.admin_url("/readyz")).send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn ldap_sign_in_enrollment_totp_groups_and_refused_attempts() {
    if !have_slapd("ldap_sign_in_enrollment_totp_groups_and_refused_attempts") {
        return;
    }
    let slapd = Slapd::start(&openldap_ldif(), false, None);
    let gw = start_gateway(&slapd).await;

    // dana: password, then a first factor enrolled at sign-in, then TOTP.
    let (cookie, uid, secret) = enroll(&gw, "dana", "dana-directory-pw").await;
    let state = gw.gateway.state();
    let entry_uuid = {
        let users = state.enforcer.users.read().unwrap();
        assert!(users.is_directory(&uid), "a directory user");
        users.directory_ref(&uid).unwrap().stable_id.clone()
    };
    assert_eq!(uid, portcullis::users::ldap::directory_user_id(&entry_uuid));
    let echo = gw.echo("/secure/x", Some(&cookie)).await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("dana"));
    assert_eq!(echo.header("remote-email").as_deref(), Some("dana@corp.example"));
    assert_eq!(echo.header("remote-groups").as_deref(), Some("admins,staff"));
    assert_eq!(gw.status("/admin/panel", Some(&cookie)).await, 200);

    // Next sign-in: MFA_REQUIRED with the TOTP factor, then SUCCESS.
    let (status, a, level1) = password(&gw, "DANA", "dana-directory-pw").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["status"], "MFA_REQUIRED", "{a}");
    assert!(level1.is_some(), "a level-1 session at once");
    let fid = a["_embedded"]["factors"][0]["id"].as_str().unwrap().to_owned();
    let (status, v, _) = authn(
        &gw,
        &format!("/factors/{fid}/verify"),
        json!({ "stateToken": a["stateToken"], "passCode": totp(&gw, &secret, 0) }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "SUCCESS", "{v}");

    // erin is not in admins: the group rule refuses her (403).
    let (status, e, erin) = password(&gw, "erin", "erin-directory-pw").await;
    assert_eq!(status, 200, "{e}");
    let erin = erin.unwrap();
    assert_eq!(gw.status("/admin/panel", Some(&erin)).await, 403);
    assert_eq!(gw.status("/plain", Some(&erin)).await, 200);

    // Refused the same way: wrong password, empty password, unknown user,
    // filter injection, a too broad wildcard.
    for (user, pw) in [
        ("dana", "wrong"),
        ("dana", ""),
        ("nobody", "dana-directory-pw"),
        ("*", "dana-directory-pw"),
        ("dana)(uid=*", "dana-directory-pw"),
        ("*)(|(uid=*", "dana-directory-pw"),
        ("d*", "dana-directory-pw"),
        ("dana\\", "dana-directory-pw"),
    ] {
        let (status, body, cookie) = password(&gw, user, pw).await;
        assert_eq!(status, 401, "{user:?}/{pw:?}: {body}");
        assert_eq!(body["errorCode"], "E0000004", "{user:?}: {body}");
        assert!(cookie.is_none());
    }

    // The users file works beside the directory; bob is in both: the file wins.
    let (status, _, _) = password(&gw, "alice", ALICE.password).await;
    assert_eq!(status, 200);
    let (status, b, _) = password(&gw, "bob", BOB.password).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["_embedded"]["user"]["id"], TestGateway::uid("bob").as_str());
    let (status, _, _) = password(&gw, "bob", "bob-directory-pw").await;
    assert_eq!(
        status, 401,
        "the directory's bob cannot sign in: the file's bob owns the name"
    );

    // The admin Users API lists directory users read-only and manages their factors.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let res = gw
                .client()
                .get(gw.admin_url("/api/v1/users"))
                .header("authorization", "SSWS test-admin-token-0123456789abcdef")
                .send()
                .await
                .unwrap();
            let list: Value = res.json().await.unwrap();
            let logins: Vec<&str> = list
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|u| u["profile"]["login"].as_str())
                .collect();
            logins.contains(&"dana") && logins.contains(&"erin") && logins.contains(&"alice")
        })
        .await,
        "directory users listed"
    );
    let admin =
        |req: reqwest::RequestBuilder| req.header("authorization", "SSWS test-admin-token-0123456789abcdef");
    let res = admin(gw.client().delete(gw.admin_url(&format!("/api/v1/users/{uid}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "directory users are read-only");
    let res = admin(gw.client().post(gw.admin_url("/api/v1/users?activate=true")))
        .header("content-type", "application/json")
        .body(json!({ "profile": { "login": "dana", "email": "d@example.com" } }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        400,
        "a directory user's login cannot be taken by an API user"
    );
    let res = admin(
        gw.client()
            .get(gw.admin_url(&format!("/api/v1/users/{uid}/factors"))),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let factors: Value = res.json().await.unwrap();
    assert_eq!(factors[0]["factorType"], "token:software:totp", "{factors}");

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("portcullis_directory_duration_seconds"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_directory_errors_total"), "{metrics}");
    assert_eq!(readyz(&gw).await.0, 200);
}

#[tokio::test]
async fn ldap_group_removal_deletion_and_a_recreated_account() {
    if !have_slapd("ldap_group_removal_deletion_and_a_recreated_account") {
        return;
    }
    let slapd = Slapd::start(&openldap_ldif(), false, None);
    let gw = start_gateway(&slapd).await;
    let (cookie, old_uid, _) = enroll(&gw, "dana", "dana-directory-pw").await;
    assert_eq!(gw.status("/admin/x", Some(&cookie)).await, 200);

    // Removed from admins while signed in: refused within refresh_interval.
    slapd.modify(
        "dn: cn=admins,ou=groups,dc=example,dc=com\nchangetype: modify\ndelete: member\n\
         member: uid=dana,ou=people,dc=example,dc=com\n",
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.status("/admin/x", Some(&cookie)).await == 403
        })
        .await,
        "the admins route is refused once the group is gone"
    );
    assert_eq!(
        gw.status("/secure/x", Some(&cookie)).await,
        200,
        "other routes still work"
    );

    // Deleted and recreated with the same uid: the old session ends and the
    // new account (a new entryUUID) inherits nothing.
    slapd.modify("dn: uid=dana,ou=people,dc=example,dc=com\nchangetype: delete\n");
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.status("/secure/x", Some(&cookie)).await == 401
        })
        .await,
        "a deleted user's session is refused"
    );
    let recreated = person("dana", "dana-new-pw").replace(
        "dn: uid=dana,ou=people,dc=example,dc=com\n",
        "dn: uid=dana,ou=people,dc=example,dc=com\nchangetype: add\n",
    );
    slapd.modify(&recreated);
    let (status, a, _) = password(&gw, "dana", "dana-new-pw").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["status"], "MFA_ENROLL", "no factor inherited: {a}");
    let new_uid = a["_embedded"]["user"]["id"].as_str().unwrap();
    assert_ne!(new_uid, old_uid);
    assert_eq!(
        gw.status("/secure/x", Some(&cookie)).await,
        401,
        "the old session stays refused"
    );
}

#[tokio::test]
async fn ldap_directory_stopped_then_started_again() {
    if !have_slapd("ldap_directory_stopped_then_started_again") {
        return;
    }
    let mut slapd = Slapd::start(&openldap_ldif(), false, None);
    let gw = start_gateway(&slapd).await;
    let (status, _, session) = password(&gw, "erin", "erin-directory-pw").await;
    assert_eq!(status, 200);
    let session = session.unwrap();
    assert_eq!(gw.status("/plain", Some(&session)).await, 200);

    slapd.stop();
    let started = Instant::now();
    let (status, body, cookie) = password(&gw, "erin", "erin-directory-pw").await;
    assert_eq!(status, 503, "{body}");
    assert!(cookie.is_none());
    assert!(started.elapsed() < Duration::from_secs(3), "bounded by timeout");
    // Never another source: the users file's alice still works, the
    // directory's erin does not fall back to anything.
    assert_eq!(password(&gw, "alice", ALICE.password).await.0, 200);
    let (status, text) = readyz(&gw).await;
    assert_eq!(status, 503);
    assert!(text.contains("directory"), "{text}");

    // Past refresh_interval (+ timeout) without a read, the session issued
    // earlier fails closed: 503, not a forward on stale groups.
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.status("/plain", Some(&session)).await == 503
        })
        .await,
        "a directory user's session fails closed once the mirror is stale"
    );
    let (status, _, alice) = password(&gw, "alice", ALICE.password).await;
    assert_eq!(status, 200);
    assert_eq!(
        gw.status("/plain", Some(&alice.unwrap())).await,
        200,
        "file users' sessions unaffected"
    );

    slapd.run();
    assert!(
        eventually(Duration::from_secs(10), || async {
            password(&gw, "erin", "erin-directory-pw").await.0 == 200
        })
        .await,
        "sign-ins work again"
    );
    assert!(eventually(Duration::from_secs(10), || async { readyz(&gw).await.0 == 200 }).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.status("/plain", Some(&session)).await == 200
        })
        .await,
        "the earlier session works again once the directory is read"
    );
}

#[tokio::test]
async fn ldaps_and_start_tls_with_a_private_ca() {
    if !have_slapd("ldaps_and_start_tls_with_a_private_ca") {
        return;
    }
    let ca = test_ca();
    let slapd = Slapd::start(&openldap_ldif(), false, Some(&ca));
    let ca_file = slapd.dir.path().join("ca.pem");
    let ca_line = format!("ca = {}", toml_str(&ca_file.display().to_string()));
    let tls_port = slapd.tls_port.unwrap();
    for ldap in [
        format!("url = \"ldaps://localhost:{tls_port}\"\n{ca_line}"),
        format!(
            "url = \"ldap://localhost:{}\"\nstart_tls = true\n{ca_line}",
            slapd.port
        ),
    ] {
        let gw = TestGateway::start(&gateway_toml(&ldap)).await;
        let (status, body, _) = password(&gw, "erin", "erin-directory-pw").await;
        assert_eq!(status, 200, "{ldap}: {body}");
        let (status, _, _) = password(&gw, "erin", "wrong").await;
        assert_eq!(status, 401);
    }
    // Without the CA the directory's certificate is not trusted: 503, never a sign-in.
    let gw = TestGateway::start(&gateway_toml(&format!("url = \"ldaps://localhost:{tls_port}\""))).await;
    let (status, body, _) = password(&gw, "erin", "erin-directory-pw").await;
    assert_eq!(status, 503, "{body}");
}

/// An AD-shaped entry: objectGUID (binary), sAMAccountName, userAccountControl.
fn ad_user(name: &str, guid: &[u8; 16], uac: u32) -> String {
    use base64::Engine as _;
    format!(
        "dn: cn={name},ou=people,dc=example,dc=com\nobjectClass: user\ncn: {name}\nsn: AD\nuid: {name}-uid\n\
         sAMAccountName: {name}\nobjectGUID:: {}\nuserAccountControl: {uac}\nobjectCategory: person\n\
         displayName: {name} from AD\nmail: {name}@ad.example\nuserPassword: {name}-ad-pw\n\n",
        base64::engine::general_purpose::STANDARD.encode(guid)
    )
}

#[tokio::test]
async fn active_directory_preset_against_ad_shaped_entries() {
    if !have_slapd("active_directory_preset_against_ad_shaped_entries") {
        return;
    }
    let frank_guid: [u8; 16] = [
        0x67, 0x45, 0x23, 0x01, 0xab, 0x89, 0xef, 0xcd, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
    ];
    let ldif = format!(
        "{BASE_LDIF}{}{}dn: cn=Ops,ou=groups,dc=example,dc=com\nobjectClass: group\ncn: Ops\n\
         member: cn=frank,ou=people,dc=example,dc=com\n\n",
        ad_user("frank", &frank_guid, 512),
        ad_user("gina", &[7; 16], 514),
    );
    let slapd = Slapd::start(&ldif, true, None);
    // The preset's own filters, except the group filter: slapd has no
    // LDAP_MATCHING_RULE_IN_CHAIN (1.2.840.113556.1.4.1941).
    let gw = TestGateway::start(&gateway_toml(&format!(
        "url = \"{}\"\nimplementation = \"active_directory\"\ngroup_filter = \"(&(objectClass=group)(member={{dn}}))\"",
        slapd.url()
    )))
    .await;
    let cfg = gw.gateway.state().config.users.ldap.clone().unwrap();
    assert!(cfg.user_filter.contains("sAMAccountName={username}"));
    let (status, a, cookie) = password(&gw, "frank", "frank-ad-pw").await;
    assert_eq!(status, 200, "{a}");
    let uid = a["_embedded"]["user"]["id"].as_str().unwrap();
    assert_eq!(
        uid,
        portcullis::users::ldap::directory_user_id("01234567-89ab-cdef-0123-456789abcdef"),
        "keyed by objectGUID in its string form"
    );
    let echo = gw.echo("/plain", Some(&cookie.unwrap())).await;
    assert_eq!(echo.header("remote-groups").as_deref(), Some("Ops"));
    assert_eq!(echo.header("remote-email").as_deref(), Some("frank@ad.example"));
    // gina's account is disabled (userAccountControl 514 = 512 | ACCOUNTDISABLE):
    // the same answer as a wrong password.
    let (status, body, _) = password(&gw, "gina", "gina-ad-pw").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errorCode"], "E0000004");
    let (status, _, _) = password(&gw, "frank", "wrong").await;
    assert_eq!(status, 401);
    // The mirror leaves disabled accounts out.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let users = gw.gateway.state().enforcer.users.read().unwrap();
            users
                .directory_users()
                .iter()
                .map(|u| u.username.clone())
                .collect::<Vec<_>>()
                == ["frank"]
        })
        .await
    );
}

/// A "directory" that accepts connections and then says nothing, or
/// answers garbage: 503 within `timeout`, never a sign-in, never a hang.
#[tokio::test]
async fn slow_or_garbage_directory_answers_503_within_timeout() {
    for garbage in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut held = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                if garbage {
                    let _ = s
                        .write_all(b"\x30\x84\xff\xff\xff\xffHTTP/1.1 200 OK\r\n\r\ngarbage")
                        .await;
                }
                held.push(s);
            }
        });
        let gw = TestGateway::start(
            &gateway_toml(&format!("url = \"ldap://{addr}\"")).replace("\"2s\"", "\"1s\""),
        )
        .await;
        let started = Instant::now();
        let (status, body, cookie) = password(&gw, "dana", "dana-directory-pw").await;
        assert_eq!(status, 503, "garbage={garbage}: {body}");
        assert!(cookie.is_none());
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "garbage={garbage}: took {:?}",
            started.elapsed()
        );
        assert_eq!(
            password(&gw, "alice", ALICE.password).await.0,
            200,
            "file users unaffected"
        );
    }
}

#[test]
fn check_config_lists_every_directory_problem_with_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("users.toml"), users_file()).unwrap();
    let text = config_text(
        r#"
[users.ldap]
url = "http://dc1.example.com"
bind_dn = "cn=svc,,dc=example"
bind_password = "env:PORTCULLIS_TEST_UNSET_LDAP_PASSWORD"
base_dn = "dc=example,dc"
user_filter = "(uid=alice)"
ca = "/nonexistent/ca.pem"
"#,
        "http://127.0.0.1:9",
        tmp.path(),
    );
    let path = tmp.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let out = portcullis_command(&["check-config", "--config", path.to_str().unwrap()])
        .env_remove("PORTCULLIS_TEST_UNSET_LDAP_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for key in [
        "users.ldap.url",
        "users.ldap.bind_dn",
        "users.ldap.bind_password",
        "users.ldap.base_dn",
        "users.ldap.user_filter",
        "users.ldap.ca",
    ] {
        assert!(all.contains(key), "{key} missing:\n{all}");
    }
}

#[tokio::test]
async fn users_show_says_where_a_user_comes_from() {
    if !have_slapd("users_show_says_where_a_user_comes_from") {
        return;
    }
    let slapd = Slapd::start(&openldap_ldif(), false, None);
    let gw = start_gateway(&slapd).await;
    let path = slapd.dir.path().join("portcullis.toml");
    std::fs::write(&path, &gw.config_text).unwrap();
    let show = |user: &str| {
        let out = portcullis_command(&["users", "show", user, "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = show("dana");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("directory") && text.contains("uid=dana,ou=people,dc=example,dc=com"),
        "{text}"
    );
    assert!(text.contains("admins, staff"), "{text}");
    let (code, text) = show("alice");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("users file") && !text.contains("directory"),
        "{text}"
    );
    let (code, text) = show("bob");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("users file") && text.contains("directory"),
        "{text}"
    );
    assert!(text.contains("warning: bob is in 2 sources"), "{text}");
    let (code, text) = show("nobody");
    assert_eq!(code, Some(2), "an unknown user exits 2: {text}");
}

/// Unknown user, wrong password and disabled account take about as long
/// (each runs the same argon2 work and one bind).
#[tokio::test]
async fn refusals_take_about_the_same_time() {
    if !have_slapd("refusals_take_about_the_same_time") {
        return;
    }
    let ldif = format!(
        "{BASE_LDIF}{}{}",
        ad_user("frank", &[1; 16], 512),
        ad_user("gina", &[2; 16], 514)
    );
    let slapd = Slapd::start(&ldif, true, None);
    let gw = TestGateway::start(&gateway_toml(&format!(
        "url = \"{}\"\nimplementation = \"active_directory\"\ngroup_filter = \"\"",
        slapd.url()
    )))
    .await;
    // Interleaved rounds, so load on the machine falls on all three alike.
    let kinds = [("frank", "wrong"), ("nobody", "wrong"), ("gina", "gina-ad-pw")];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for _ in 0..7 {
        for (i, (user, pw)) in kinds.iter().enumerate() {
            let started = Instant::now();
            let (status, body, _) = password(&gw, user, pw).await;
            times[i].push(started.elapsed());
            assert_eq!(status, 401, "{user}: {body}");
            assert_eq!(body["errorCode"], "E0000004");
        }
    }
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    eprintln!("median refusal times (wrong password, unknown user, disabled account): {medians:?}");
    let (min, max) = (medians.iter().min().unwrap(), medians.iter().max().unwrap());
    assert!(
        max.as_secs_f64() < min.as_secs_f64() * 3.0,
        "refusal times differ too much: {medians:?}"
    );
}

#[tokio::test]
async fn ldap_lockout_is_keyed_by_the_stable_id() {
    if !have_slapd("ldap_lockout_is_keyed_by_the_stable_id") {
        return;
    }
    let slapd = Slapd::start(&openldap_ldif(), false, None);
    let gw = TestGateway::start(&format!(
        "{}\n[regulation]\nmax_password_failures = 3\n",
        gateway_toml(&format!("url = \"{}\"", slapd.url()))
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(password(&gw, "erin", "wrong").await.0, 401);
    }
    let (status, body, _) = password(&gw, "erin", "erin-directory-pw").await;
    assert_eq!(status, 401, "blocked after three wrong passwords: {body}");
    assert_eq!(body["errorCode"], "E0000004");

    // A new account under the same name is another user: not blocked.
    slapd.modify("dn: uid=erin,ou=people,dc=example,dc=com\nchangetype: delete\n");
    let recreated = person("erin", "erin-new-pw").replace(
        "dn: uid=erin,ou=people,dc=example,dc=com\n",
        "dn: uid=erin,ou=people,dc=example,dc=com\nchangetype: add\n",
    );
    slapd.modify(&recreated);
    let (status, body, _) = password(&gw, "erin", "erin-new-pw").await;
    assert_eq!(status, 200, "{body}");
}

/// `SIGHUP` while the directory is down: the reloaded gateway carries over
/// the directory users already read, so their sessions keep working (they
/// answered 503 until the directory could be read again). A reload that
/// reads another part of the directory starts without them and fails
/// closed until it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_the_directory_is_down_keeps_directory_sessions() {
    if !have_slapd("a_reload_while_the_directory_is_down_keeps_directory_sessions") {
        return;
    }
    let mut slapd = Slapd::start(&openldap_ldif(), false, None);
    let dir = tempfile::tempdir().unwrap();
    let echo = portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (main, admin) = (free_port(), free_port());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(dir.path().join("users.toml"), users_file()).unwrap();
    let url = slapd.url();
    let write = |base_dn: &str| {
        let ldap = format!(
            "\n[users.ldap]\nurl = \"{url}\"\nbind_dn = \"{ADMIN_DN}\"\nbind_password = \"{ADMIN_PW}\"\n\
             base_dn = \"{base_dn}\"\ntimeout = \"2s\"\nrefresh_interval = \"60s\"\n"
        );
        let base = crate::reload::config(dir.path(), main, admin, &format!("http://{echo}"), "bypass");
        std::fs::write(&path, base + &ldap).unwrap();
    };
    write("dc=example,dc=com");
    let gw = crate::reload::start(&path, main, admin).await;
    let session = gw
        .sign_in("erin", "erin-directory-pw")
        .await
        .expect("erin signs in");
    assert_eq!(gw.status("/private", Some(&session)).await, 200);

    slapd.stop();
    gw.hup();
    gw.wait_log("configuration reloaded", 1).await;
    assert_eq!(
        gw.status("/private", Some(&session)).await,
        200,
        "a directory user's session after a reload while the directory is down"
    );

    write("ou=people,dc=example,dc=com");
    gw.hup();
    gw.wait_log("configuration reloaded", 2).await;
    assert_eq!(
        gw.status("/private", Some(&session)).await,
        503,
        "another base: its users are not known until it is read"
    );
}
