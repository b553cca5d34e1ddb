//! Forwarding: bypass, deny, challenges, header hygiene, upstream failures and
//! host routing.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{ALICE, TestGateway, enc, free_port, raw, spawn_upstream};

/// Header names that fold (case, `_` for `-`) to one of the identity headers.
fn is_identity_spelling(name: &str) -> bool {
    let folded = name.to_ascii_lowercase().replace('_', "-");
    matches!(
        folded.as_str(),
        "remote-user" | "remote-groups" | "remote-email" | "remote-name"
    )
}

#[tokio::test]
async fn bypass_forwards_without_a_session_and_strips_spoofed_identity() {
    let gw = TestGateway::start("").await;
    let res = raw(
        gw.main,
        &format!(
            "GET /public/hello?x=1 HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
             Remote-User: mallory\r\nRemote_User: mallory\r\nREMOTE-USER: mallory\r\n\
             remote-groups: admins\r\nRemote-Email: mallory@evil.example\r\nREMOTE_NAME: Mallory\r\n\
             X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\
             X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https;host=evil.example\r\n\
             Connection: close\r\n\r\n",
            gw.main
        ),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let echo = res.echo();
    assert_eq!(echo.path(), "/public/hello");
    assert_eq!(echo.0["query"], "x=1");
    for name in echo.names() {
        assert!(!is_identity_spelling(&name), "{name} reached the upstream");
    }
    // The gateway's own forwarding headers replace the client's.
    assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(echo.header("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(echo.header("x-forwarded-host"), Some(gw.main.to_string()));
    assert_eq!(
        echo.header("forwarded"),
        Some(format!("for=127.0.0.1;proto=http;host=\"{}\"", gw.main))
    );
    let everything = echo.0.to_string();
    for spoof in ["mallory", "Mallory", "6.6.6.6", "evil.example"] {
        assert!(
            !everything.contains(spoof),
            "{spoof} reached the upstream: {everything}"
        );
    }
}

#[tokio::test]
async fn bypass_never_sets_identity_even_with_a_session() {
    let gw = TestGateway::start("").await;
    let login = gw.login(ALICE).await;
    let echo = gw
        .echo("/public/x", Some(&format!("{}; other=1", login.cookie())))
        .await;
    for name in echo.names() {
        assert!(!is_identity_spelling(&name), "{name} set on a bypass route");
    }
    assert_eq!(echo.header("cookie").as_deref(), Some("other=1"));
    // The same session on a protected route does get identity.
    let echo = gw.echo("/private", Some(&login.cookie())).await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
}

#[tokio::test]
async fn a_signed_in_request_carries_only_the_gateways_identity_and_forwarding() {
    let gw = TestGateway::start("").await;
    let login = gw.login(ALICE).await;
    let res = raw(
        gw.main,
        &format!(
            "GET /private HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nCookie: {}\r\n\
             Remote_User: mallory\r\nREMOTE-USER: mallory\r\nremote_groups: admins\r\n\
             Remote-Email: mallory@evil.example\r\nREMOTE_NAME: Mallory\r\n\
             X-Forwarded-For: 6.6.6.6\r\nX_Forwarded_Host: evil.example\r\nX-Real-IP: 6.6.6.6\r\n\
             Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\n\
             X-Original-URL: /admin\r\nX_HTTP_Method_Override: DELETE\r\nTrue-Client-IP: 6.6.6.6\r\n\
             Client-IP: 6.6.6.6\r\nX-Originating-IP: 6.6.6.6\r\nProxy: http://evil.example:3128\r\n\
             Connection: close\r\n\r\n",
            gw.main,
            login.cookie()
        ),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let echo = res.echo();
    // Only the gateway's own spelling of each identity header, set from the session.
    for name in echo.names() {
        if is_identity_spelling(&name) {
            assert!(!name.contains('_'), "{name} reached the upstream");
        }
    }
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
    assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    // Nor the overrides some back ends believe over the request line.
    for name in echo.names() {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            ![
                "x-original-url",
                "x-http-method-override",
                "true-client-ip",
                "client-ip",
                "x-originating-ip",
                // httpoxy: CGI would hand it to the app as HTTP_PROXY.
                "proxy",
            ]
            .contains(&folded.as_str()),
            "{name} reached the upstream"
        );
    }
    let everything = echo.0.to_string();
    for spoof in ["mallory", "Mallory", "6.6.6.6", "evil.example", "DELETE"] {
        assert!(
            !everything.contains(spoof),
            "{spoof} reached the upstream: {everything}"
        );
    }
}

#[tokio::test]
async fn deny_answers_403_json_for_api_clients_and_html_for_browsers() {
    let gw = TestGateway::start("").await;
    let client = gw.client();

    let res = gw.get_json("/denied/x", None).await;
    assert_eq!(res.status(), 403);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errorCode"], "E0000006");
    assert!(body["errorSummary"].is_string());

    let res = client
        .get(gw.url("/denied"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = res.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("Access denied"));

    // A session does not open a deny rule, whatever the method.
    let login = gw.login(ALICE).await;
    let res = client
        .post(gw.url("/denied/x"))
        .header("accept", "application/json")
        .header("cookie", login.cookie())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errorCode"], "E0000006");
}

#[tokio::test]
async fn protected_route_challenges_browsers_and_api_clients() {
    let gw = TestGateway::start("").await;
    let client = gw.client();
    let target = "/app/page?x=1&y=%20z";
    let want = format!(
        "/_portcullis/login?rd={}",
        enc(&format!("http://{}{target}", gw.main))
    );

    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let res = client
            .request(method.clone(), gw.url(target))
            .header("accept", "text/html,*/*;q=0.8")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 302, "{method}");
        assert_eq!(res.headers()["location"].to_str().unwrap(), want);
        assert_eq!(res.headers()["cache-control"], "no-store");
    }

    let res = client
        .post(gw.url(target))
        .header("accept", "text/html")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"].to_str().unwrap(), want);

    for accept in [Some("application/json"), None] {
        let mut req = client.get(gw.url(target));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "accept {accept:?}");
        assert!(res.headers().get("location").is_none());
        let www = res.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(www.starts_with("Portcullis realm=\"portcullis\""), "{www}");
        assert!(www.contains("/_portcullis/api/v1/authn"), "{www}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["errorCode"], "E0000011");
    }
}

#[tokio::test]
async fn upstream_cannot_set_the_gateway_cookies() {
    let upstream = spawn_upstream(|_req| async {
        http::Response::builder()
            .header("set-cookie", "portcullis_session=forged; Path=/; HttpOnly")
            .header("set-cookie", "app=1; Path=/")
            .header("set-cookie", "Portcullis_CSRF=forged; Path=/")
            .header("set-cookie", "theme=dark")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"hi")))
            .unwrap()
    })
    .await;
    let gw = TestGateway::start(&format!(
        "[[upstreams]]\nname = \"cookies\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;
    let login = gw.login(ALICE).await;
    for (path, cookie) in [("/public/x", None), ("/private", Some(login.cookie()))] {
        let mut req = gw.client().get(gw.url(path));
        if let Some(c) = &cookie {
            req = req.header("cookie", c);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let cookies: Vec<&str> = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["app=1; Path=/", "theme=dark"], "{path}");
        assert_eq!(res.text().await.unwrap(), "hi");
    }
}

#[tokio::test]
async fn upstream_down_is_502_with_a_small_body() {
    let port = free_port();
    let gw = TestGateway::start(&format!(
        "[[upstreams]]\nname = \"down\"\nurl = \"http://127.0.0.1:{port}\"\n"
    ))
    .await;
    let res = gw.get_json("/public/x", None).await;
    assert_eq!(res.status(), 502);
    let body = res.text().await.unwrap();
    assert!(body.len() < 512, "{body}");
    assert!(
        !body.contains(&port.to_string()),
        "the cause stays in the log: {body}"
    );
    let json: Value = serde_json::from_str(&body).unwrap();
    assert!(json["errorCode"].is_string());

    let res = gw
        .client()
        .get(gw.url("/public/x"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = res.text().await.unwrap();
    assert!(page.len() < 1024, "{page}");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let upstream = spawn_upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"late")))
    })
    .await;
    let gw = TestGateway::start(&format!(
        "[[upstreams]]\nname = \"slow\"\nurl = \"http://{upstream}\"\ntimeout = \"300ms\"\n"
    ))
    .await;
    let started = Instant::now();
    let res = gw.get_json("/public/x", None).await;
    assert_eq!(res.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let body = res.text().await.unwrap();
    assert!(body.len() < 512, "{body}");
}

/// HTTP/2 multiplies requests over one client connection, and a request
/// never waits for another's upstream connection: upstream connections are
/// bounded by `server.max_connections` all the same (the open-file budget
/// counts one per client connection). Past it: 503, not another socket.
#[tokio::test]
async fn upstream_connections_stay_within_max_connections_under_http2() {
    let upstream = spawn_upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"late")))
    })
    .await;
    let gw = TestGateway::start(&format!(
        "[server]\nmax_connections = 3\n\
         [[upstreams]]\nname = \"slow\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;
    let client = gw.client_builder().http2_prior_knowledge().build().unwrap();
    let answers = futures_util::future::join_all((0..6).map(|_| {
        let client = client.clone();
        let url = gw.url("/public/x");
        async move {
            let res = client
                .get(url)
                .header("accept", "application/json")
                .send()
                .await
                .unwrap();
            assert_eq!(res.version(), reqwest::Version::HTTP_2);
            (res.status().as_u16(), res.text().await.unwrap())
        }
    }))
    .await;
    let served = answers.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!((served, busy.len()), (3, 3), "{answers:?}");
    assert!(busy[0].1.contains("E0000009"), "{answers:?}");
    // The budget comes back as the connections close: later requests reuse
    // or reopen them.
    let res = client.get(gw.url("/public/y")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn routes_by_host_and_answers_421_for_unknown_hosts() {
    let a = portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let b = portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let gw = TestGateway::start(&format!(
        r#"
[[upstreams]]
name = "a"
url = "http://{a}"
hosts = ["app.test"]

[[upstreams]]
name = "b"
url = "http://{b}"
hosts = ["other.test"]
preserve_host = false
"#
    ))
    .await;
    let port = gw.main.port();
    let client = gw
        .client_builder()
        .resolve("app.test", gw.main)
        .resolve("other.test", gw.main)
        .resolve("unknown.test", gw.main)
        .build()
        .unwrap();
    let get = |host: &'static str, path: &'static str| {
        client
            .get(format!("http://{host}:{port}{path}"))
            .header("accept", "application/json")
            .send()
    };

    let res = get("app.test", "/public/x").await.unwrap();
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    let host = crate::support::Echo(echo).header("host");
    assert_eq!(host, Some(format!("app.test:{port}")), "a preserves the Host");

    let res = get("other.test", "/public/x").await.unwrap();
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    let host = crate::support::Echo(echo).header("host");
    assert_eq!(host, Some(b.to_string()), "b gets its own Host");

    for path in ["/public/x", "/private"] {
        let res = get("unknown.test", path).await.unwrap();
        assert_eq!(res.status(), 421, "{path}");
    }
    // The portal answers on every host.
    let res = get("unknown.test", "/_portcullis/healthz").await.unwrap();
    assert_eq!(res.status(), 200);
}
