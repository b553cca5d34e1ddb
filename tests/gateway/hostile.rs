//! Hostile requests on the wire (issue 9): spellings of a path that common
//! upstreams read as another path (Tomcat's `;params`, IIS's trailing dots,
//! double decoding, overlong UTF-8, case), upgrades to other protocols than
//! WebSocket, and disagreeing hosts. Each goes through a real gateway to a
//! recording upstream: the upstream must see nothing for a refused request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;

use crate::support::{ALICE, BOB, RawResponse, TestGateway, raw, raw_get, spawn_upstream};

/// What the upstream received: path and query, and every header (lower-case).
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An upstream that records every request and answers 200 with its target.
async fn recording_upstream() -> (SocketAddr, Log) {
    let log: Log = Arc::default();
    let kept = log.clone();
    let addr = spawn_upstream(move |req| {
        let log = kept.clone();
        async move {
            let target = req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            log.lock().unwrap().push(Seen {
                method: req.method().to_string(),
                target: target.clone(),
                headers,
            });
            http::Response::new(Full::new(Bytes::from(target)))
        }
    })
    .await;
    (addr, log)
}

/// A gateway in front of the recording upstream: `/admin/` needs one factor
/// and the `admins` group (alice, not bob), `/app/` one factor, `/denied`
/// `/odata/$metadata`, `/über/` (as `/%C3%BCber/`) and exactly `/vault` are
/// denied, `/public/` and everything else is bypassed (the laxest default,
/// so any way around a rule shows).
async fn start(extra_top: &str) -> (TestGateway, Log) {
    let (upstream, log) = recording_upstream().await;
    let gw = TestGateway::builder()
        .toml(&format!(
            r#"
default_policy = "bypass"
{extra_top}

[[upstreams]]
name = "recorder"
url = "http://{upstream}"
timeout = "3s"

[[rules]]
path = "^/public/"
policy = "bypass"

[[rules]]
path = "^/admin/"
policy = "one_factor"
groups = ["admins"]

[[rules]]
path = "^/app/"
policy = "one_factor"

[[rules]]
path = "^/denied(/|$)"
policy = "deny"

[[rules]]
path = "^/odata/\\$metadata"
policy = "deny"

[[rules]]
path = "^/%C3%BCber/"
policy = "deny"

[[rules]]
path = "^/vault$"
policy = "deny"
"#
        ))
        .start()
        .await;
    (gw, log)
}

fn take(log: &Log) -> Vec<Seen> {
    std::mem::take(&mut *log.lock().unwrap())
}

fn cookie_header(session: &str) -> String {
    format!("Cookie: {session}\r\n")
}

#[tokio::test]
async fn path_parameters_and_trailing_dots_cannot_walk_around_rules() {
    let (gw, log) = start("").await;
    let alice = cookie_header(&gw.login(ALICE).await.session_cookie());
    let bob = cookie_header(&gw.login(BOB).await.session_cookie());
    take(&log);
    for target in [
        "/admin;x/secret",
        "/admin;/secret",
        "/;x/admin/secret",
        "/admin;jsessionid=1/secret",
        "/public;x/../admin/x",
        "/public/x;y/../../admin/x",
        "/admin./x",
        "/admin%2e/x",
        "/admin%20/x",
        "/admin.;x/y",
        "/admin;x./y",
    ] {
        let res = raw_get(gw.main, target, "").await;
        assert_eq!(res.status, 401, "{target} anonymous: {}", res.text());
        let res = raw_get(gw.main, target, &bob).await;
        assert_eq!(res.status, 403, "{target} as bob (not an admin): {}", res.text());
        assert!(
            take(&log).is_empty(),
            "{target} reached the upstream without the admins group"
        );
        // The right people get through, with the path as normalized.
        let res = raw_get(gw.main, target, &alice).await;
        assert_eq!(res.status, 200, "{target} as alice: {}", res.text());
        let seen = take(&log);
        assert_eq!(seen.len(), 1, "{target}");
        assert_eq!(seen[0].header("remote-user"), ["alice"], "{target}");
    }
    for target in ["/denied;x", "/denied./x", "/denied;x/y"] {
        let res = raw_get(gw.main, target, &alice).await;
        assert_eq!(res.status, 403, "{target}: {}", res.text());
    }
    assert!(take(&log).is_empty(), "a denied path reached the upstream");
}

#[tokio::test]
async fn jsessionid_urls_keep_working_and_are_forwarded_unchanged() {
    let (gw, log) = start("").await;
    let bob = cookie_header(&gw.login(BOB).await.session_cookie());
    take(&log);
    for target in [
        "/app;jsessionid=0123ABCD/page?x=1",
        "/app/page;jsessionid=0123ABCD",
        "/app/page;jsessionid=0123ABCD?x=1",
    ] {
        let res = raw_get(gw.main, target, "").await;
        assert_eq!(res.status, 401, "{target}: {}", res.text());
        assert!(take(&log).is_empty(), "{target}");
        let res = raw_get(gw.main, target, &bob).await;
        assert_eq!(res.status, 200, "{target}: {}", res.text());
        let seen = take(&log);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].target, target);
        assert_eq!(seen[0].header("remote-user"), ["bob"]);
    }
    // Bypassed routes too, without a session.
    let res = raw_get(gw.main, "/public/x;jsessionid=1", "").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(take(&log)[0].target, "/public/x;jsessionid=1");
}

#[tokio::test]
async fn double_encoding_overlong_utf8_and_lookalikes_are_refused() {
    let (gw, log) = start("").await;
    let alice = cookie_header(&gw.login(ALICE).await.session_cookie());
    take(&log);
    for target in [
        "/admin%3Bjsessionid=1/secret",
        "/admin%3bx/secret",
        "/%252e",
        "/public/%252e%252e/admin/x",
        "/public/%25%32%65%25%32%65/admin/x",
        "/public/%C0%AE%C0%AE/admin/x",
        "/public/%c0%af",
        "/public/%E0%80%AE%E0%80%AE/admin/x",
        "/public/%ED%A0%80",
        "/public/%FF",
        "/public/..%20/admin/x",
        "/public/.../admin/x",
        "/public/.%20/admin/x",
        "/public/%2e%2e%2e/admin/x",
        "/public/..%20;x/admin/x",
    ] {
        for extra in ["", alice.as_str()] {
            let res = raw_get(gw.main, target, extra).await;
            assert_eq!(
                res.status,
                400,
                "{target} (cookie: {}): {}",
                !extra.is_empty(),
                res.text()
            );
            assert!(res.text().contains("invalid path"), "{target}: {}", res.text());
        }
        assert!(take(&log).is_empty(), "{target} reached the upstream");
    }
    // Escapes that are fine stay fine.
    let res = raw_get(gw.main, "/public/caf%C3%A9/100%25", "").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(take(&log)[0].target, "/public/caf%C3%A9/100%25");
}

#[tokio::test]
async fn every_spelling_of_a_character_is_one_and_the_upstream_sees_it_canonical() {
    let (gw, log) = start("").await;
    let alice = cookie_header(&gw.login(ALICE).await.session_cookie());
    take(&log);
    // Raw, encoded and lower-case spellings all meet the deny rule, and a
    // trailing slash does not walk around an anchored one (Express, Spring).
    for target in [
        "/odata/$metadata",
        "/odata/%24metadata",
        "/odata/%24%6Detadata?x=1",
        "/%C3%BCber/x",
        "/%c3%bcber/x",
        "/über/x",
        "/%C3%BCber/../%C3%BCber/x",
        "/vault",
        "/vault/",
        "/vault;x/",
        "/vault./",
        "/public/../vault/",
    ] {
        for extra in ["", alice.as_str()] {
            let res = raw_get(gw.main, target, extra).await;
            assert_eq!(res.status, 403, "{target}: {}", res.text());
        }
        assert!(take(&log).is_empty(), "{target} reached the upstream");
    }
    // Forwarded ones reach the upstream in the one canonical form: escapes of
    // sub-delims decoded, raw non-ASCII and unsafe ASCII encoded, upper-case hex.
    for (target, canonical) in [
        ("/public/café/x", "/public/caf%C3%A9/x"),
        ("/public/caf%c3%a9/x", "/public/caf%C3%A9/x"),
        ("/public/%24top%3D1%2C2%40a%3ab", "/public/$top=1,2@a:b"),
        ("/public/a\"b?q=1", "/public/a%22b?q=1"),
        ("/public/{a}", "/public/%7Ba%7D"),
        ("/public/a|b", "/public/a%7Cb"),
        ("/public/a^b", "/public/a%5Eb"),
        ("/public/a\u{a0}b/\u{2028}", "/public/a%C2%A0b/%E2%80%A8"),
        ("/vault/x", "/vault/x"),
        ("/public/%3f%23%25", "/public/%3F%23%25"),
    ] {
        let res = raw_get(gw.main, target, "").await;
        assert_eq!(res.status, 200, "{target}: {}", res.text());
        let seen = take(&log);
        assert_eq!(seen.len(), 1, "{target}");
        assert_eq!(seen[0].target, canonical, "{target}");
    }
    // hyper's HTTP/1.1 parser refuses these itself; were one ever let
    // through, the upstream must see it encoded.
    for (target, canonical) in [
        ("/public/a`b", "/public/a%60b"),
        ("/public/a<b", "/public/a%3Cb"),
        ("/public/a>b", "/public/a%3Eb"),
    ] {
        let res = raw_get(gw.main, target, "").await;
        let seen = take(&log);
        if res.status == 200 {
            assert_eq!(seen[0].target, canonical, "{target}");
        } else {
            assert_eq!(res.status, 400, "{target}: {}", res.text());
            assert!(seen.is_empty(), "{target}");
        }
    }
}

#[tokio::test]
async fn case_insensitive_paths_switch() {
    // Off (the default): rules are case-sensitive, as nginx, Apache and Tomcat are.
    let (gw, log) = start("").await;
    let res = raw_get(gw.main, "/ADMIN/x", "").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(take(&log)[0].target, "/ADMIN/x");
    drop(gw);

    // On: `^/admin/` covers every case, also with the other tricks.
    let (gw, log) = start("case_insensitive_paths = true").await;
    let bob = cookie_header(&gw.login(BOB).await.session_cookie());
    let alice = cookie_header(&gw.login(ALICE).await.session_cookie());
    take(&log);
    for target in ["/ADMIN/x", "/Admin/x", "/aDmIn./x", "/ADMIN;x/y", "/%41DMIN/x"] {
        let res = raw_get(gw.main, target, "").await;
        assert_eq!(res.status, 401, "{target}: {}", res.text());
        let res = raw_get(gw.main, target, &bob).await;
        assert_eq!(res.status, 403, "{target}: {}", res.text());
        assert!(take(&log).is_empty(), "{target} reached the upstream");
        let res = raw_get(gw.main, target, &alice).await;
        assert_eq!(res.status, 200, "{target}: {}", res.text());
        assert_eq!(take(&log).len(), 1);
    }
    let res = raw_get(gw.main, "/DENIED", &alice).await;
    assert_eq!(res.status, 403);
    assert!(take(&log).is_empty());

    // Windows aliases the rules cannot see (an NTFS stream, an 8.3 short name,
    // an ASP.NET cookieless segment) are denied, even on a bypass route.
    for target in [
        "/admin::$INDEX_ALLOCATION/x",
        "/public/x::$DATA",
        "/ADMINI~1/x",
        "/(S(abc))/admin/x",
        "/public/%28S%28abc%29%29/x",
    ] {
        let res = raw_get(gw.main, target, &alice).await;
        assert_eq!(res.status, 403, "{target}: {}", res.text());
        assert!(take(&log).is_empty(), "{target} reached the upstream");
    }
    let res = raw_get(gw.main, "/public/x", "").await;
    assert_eq!(res.status, 200, "{}", res.text());
    drop(gw);

    // Off, they are ordinary names (`:` and `~1` are common in other apps).
    let (gw, log) = start("").await;
    let res = raw_get(gw.main, "/public/x::$DATA", "").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(take(&log).len(), 1);
}

/// `request` with `Host` set to the gateway.
async fn send(gw: &TestGateway, request: &str) -> RawResponse {
    raw(gw.main, &request.replace("{host}", &gw.main.to_string())).await
}

/// WebDAV's COPY and MOVE act on the path in `Destination` as well: it is
/// decided on like the request's own (the strictest of both), and one that
/// cannot be (another host, a dot segment, an encoded slash, two of them)
/// is refused before the upstream.
#[tokio::test]
async fn webdav_destinations_are_decided_like_paths() {
    let (gw, log) = start("").await;
    let mv = |dest: &str| {
        format!(
            "MOVE /public/x HTTP/1.1\r\nHost: {{host}}\r\nDestination: {dest}\r\nConnection: close\r\n\r\n"
        )
    };
    for dest in [
        "http://other.example/public/y",
        "http://{host}/public/../admin/x",
        "http://{host}/public/%2e%2e/admin/x",
        "http://{host}/public/..%2fadmin/x",
        "ftp://{host}/public/y",
        "public/y",
        "http://{host},admin.example/public/y",
        "//{host}/admin/x",
        "//other.example/public/y",
    ] {
        let res = send(&gw, &mv(dest)).await;
        assert_eq!(res.status, 400, "{dest}: {}", res.text());
        assert!(take(&log).is_empty(), "{dest} reached the upstream");
    }
    // A POST run as MOVE reads its Destination as a MOVE does.
    let res = send(
        &gw,
        "POST /public/x?_method=MOVE HTTP/1.1\r\nHost: {host}\r\nDestination: /admin/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert!(take(&log).is_empty());
    let two = "MOVE /public/x HTTP/1.1\r\nHost: {host}\r\nDestination: /public/y\r\nDestination: /admin/y\r\nConnection: close\r\n\r\n";
    assert_eq!(send(&gw, two).await.status, 400);
    assert!(take(&log).is_empty());
    for dest in [
        "http://{host}/admin/x",
        "/admin/x",
        "http://{host}/%61dmin/x",
        "http://{host}/admin;x/y",
        "/denied",
    ] {
        let res = send(&gw, &mv(dest)).await;
        assert!(
            res.status == 401 || res.status == 403,
            "{dest}: {} {}",
            res.status,
            res.text()
        );
        assert!(take(&log).is_empty(), "{dest} reached the upstream");
    }
    for dest in [
        "http://{host}/public/y",
        "/public/y",
        "HTTP://{host}/public/%7Ey",
        "/public/r\u{e9}sum\u{e9}",
    ] {
        let res = send(&gw, &mv(dest)).await;
        assert_eq!(res.status, 200, "{dest}: {}", res.text());
        assert_eq!(take(&log).len(), 1, "{dest}");
    }
}

/// A rule for a method also holds for what apps run as that method: HEAD
/// (answered by the GET handler) and a POST with `_method` in its query
/// (Laravel, Symfony).
#[tokio::test]
async fn rules_for_a_method_hold_for_its_overrides_and_head() {
    let (gw, log) = start(
        "[[rules]]\npath = \"^/public/\"\nmethods = [\"DELETE\"]\npolicy = \"deny\"\n\n\
         [[rules]]\npath = \"^/public/reports/\"\nmethods = [\"GET\"]\npolicy = \"one_factor\"\n",
    )
    .await;
    let req = |line: &str| {
        format!("{line} HTTP/1.1\r\nHost: {{host}}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    for (line, status) in [
        ("POST /public/x?_method=DELETE", 403),
        ("POST /public/x?a=1&_%6Dethod=delete", 403),
        ("POST /public/x?.method=DELETE", 403),
        ("DELETE /public/x", 403),
        ("HEAD /public/reports/x", 401),
        ("GET /public/reports/x", 401),
    ] {
        let res = send(&gw, &req(line)).await;
        assert_eq!(res.status, status, "{line}: {}", res.text());
        assert!(take(&log).is_empty(), "{line} reached the upstream");
    }
    for line in [
        "POST /public/x?_method=PUT",
        "POST /public/x",
        "HEAD /public/x",
        "GET /public/x?_method=DELETE",
    ] {
        let res = send(&gw, &req(line)).await;
        assert_eq!(res.status, 200, "{line}: {}", res.text());
        assert_eq!(take(&log).len(), 1, "{line}");
    }
}

#[tokio::test]
async fn only_websocket_upgrades_reach_the_upstream() {
    let (gw, log) = start("").await;
    for (connection, upgrade) in [
        ("Upgrade, HTTP2-Settings, close", "h2c"),
        ("Upgrade, close", "h2c"),
        ("upgrade, close", "TLS/1.0"),
        ("Upgrade, close", "HTTP/2.0, h2c"),
    ] {
        let res = send(
            &gw,
            &format!(
                "GET /public/x HTTP/1.1\r\nHost: {{host}}\r\nConnection: {connection}\r\nUpgrade: {upgrade}\r\n\
                 HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ),
        )
        .await;
        // Forwarded as an ordinary request, without the upgrade.
        assert_eq!(res.status, 200, "{upgrade}: {}", res.text());
        let seen = take(&log);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].header("upgrade").is_empty(), "{upgrade}: {:?}", seen[0]);
        assert!(
            seen[0].header("http2-settings").is_empty(),
            "{upgrade}: {:?}",
            seen[0]
        );
        assert!(
            seen[0]
                .header("connection")
                .iter()
                .all(|v| !v.to_ascii_lowercase().contains("upgrade")),
            "{upgrade}: {:?}",
            seen[0]
        );
    }
    // An HTTP2-Settings header alone never goes through either.
    let res = send(
        &gw,
        "GET /public/x HTTP/1.1\r\nHost: {host}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    assert!(take(&log)[0].header("http2-settings").is_empty());
}

#[tokio::test]
async fn a_method_spelled_in_lower_case_cannot_slip_past_a_method_rule() {
    // Methods are case-sensitive: `delete` is another method than `DELETE`
    // to a rule, but many applications upper-case what they receive.
    let (gw, log) =
        start("[[rules]]\npath = \"^/public/\"\nmethods = [\"DELETE\"]\npolicy = \"deny\"\n").await;
    let res = send(
        &gw,
        "DELETE /public/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 403, "{}", res.text());
    assert!(take(&log).is_empty());
    for method in ["delete", "Delete", "dELETE", "DELETe"] {
        let res = send(
            &gw,
            &format!("{method} /public/x HTTP/1.1\r\nHost: {{host}}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(res.status, 400, "{method}: {}", res.text());
        assert!(res.text().contains("E0000001"), "{method}: {}", res.text());
        assert!(take(&log).is_empty(), "{method} reached the upstream");
    }
    // Upper-case extension methods (WebDAV's) go through as they are.
    for method in ["PROPFIND", "VERSION-CONTROL", "GET"] {
        let res = send(
            &gw,
            &format!("{method} /public/x HTTP/1.1\r\nHost: {{host}}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(res.status, 200, "{method}: {}", res.text());
        let seen = take(&log);
        assert_eq!(seen.len(), 1, "{method}");
        assert_eq!(seen[0].method, method);
    }
}

#[tokio::test]
async fn two_hosts_a_host_list_or_a_disagreeing_absolute_target_answer_400() {
    let (gw, log) = start("").await;
    for request in [
        "GET /public/x HTTP/1.1\r\nHost: {host}\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: other.example\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        "GET http://other.example/public/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        "GET http://{host}/public/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        "GET http://127.0.0.1:1/public/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        // A list, or what upstreams may read as one, in one Host.
        "GET /public/x HTTP/1.1\r\nHost: {host},admin.example\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: admin.example,{host}\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: {host};admin\r\nConnection: close\r\n\r\n",
        "GET http://a.example,b.example/public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let res = send(&gw, request).await;
        assert_eq!(res.status, 400, "{request:?}: {}", res.text());
        assert!(res.body.len() < 512, "a small body: {}", res.text());
        assert!(take(&log).is_empty(), "{request:?} reached the upstream");
    }
    // One host, said the same way twice over, is fine.
    let res = send(
        &gw,
        "GET http://{host}/public/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(take(&log).len(), 1);
}
