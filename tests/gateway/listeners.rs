//! Listeners: TLS with HTTP/1.1 and HTTP/2, header read timeout, header size
//! limit, graceful shutdown, and the admin listener.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{ALICE, Echo, TestGateway, enc, raw, set_cookie, spawn_upstream};

#[tokio::test]
async fn tls_listener_serves_http1_and_http2() {
    let gw = TestGateway::builder().tls().start().await;
    let h2 = gw.client();
    let h1 = gw.client_builder().http1_only().build().unwrap();
    for (client, version) in [(&h2, reqwest::Version::HTTP_2), (&h1, reqwest::Version::HTTP_11)] {
        let res = client
            .get(gw.url("/public/x"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), version);
        let echo = Echo(res.json().await.unwrap());
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
        let forwarded = echo.header("forwarded").unwrap();
        assert!(forwarded.contains("proto=https"), "{forwarded}");
        assert_eq!(echo.0["method"], "GET");
    }

    // The challenge sends browsers back to the https URL.
    let res = h2
        .get(gw.url("/private?a=1"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(
        res.headers()["location"].to_str().unwrap(),
        format!(
            "/_portcullis/login?rd={}",
            enc(&format!("https://localhost:{}/private?a=1", gw.main.port()))
        )
    );

    // Sign in over HTTP/2 and reach a protected route over both versions.
    let login = gw.login(ALICE).await;
    for client in [&h2, &h1] {
        let res = client
            .get(gw.url("/private"))
            .header("accept", "application/json")
            // One header per cookie, as browsers send them over HTTP/2.
            .header("cookie", "app=1")
            .header("cookie", format!("portcullis_session={}", login.session))
            .header("cookie", format!("portcullis_csrf={}", login.csrf))
            .header("cookie", "theme=dark")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let echo = Echo(res.json().await.unwrap());
        assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(echo.header("cookie").as_deref(), Some("app=1; theme=dark"));
    }

    // Plain HTTP to the TLS port gets nothing useful.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = plain
        .get(format!("http://{}/public/x", gw.main))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(res.is_err() || res.unwrap().status() != 200);
}

/// Waits for the server to close `conn`; returns what it sent and how long it took.
async fn wait_closed(conn: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 1024];
        loop {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection is still open after {within:?}");
    (buf, started.elapsed())
}

fn assert_no_response_or_408(buf: &[u8]) {
    let text = String::from_utf8_lossy(buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn header_read_timeout_closes_slow_clients() {
    let gw = TestGateway::start("[server]\nheader_read_timeout = \"1s\"\n").await;
    slow_heads_are_closed_after_a_second(&gw).await;
    // The smaller of the two limits applies, to a trickled head too.
    let gw = TestGateway::start("[server]\nheader_read_timeout = \"10s\"\nidle_timeout = \"1s\"\n").await;
    slow_heads_are_closed_after_a_second(&gw).await;
}

/// A partial head and a trickled one are both closed about a second after
/// their connection opened.
async fn slow_heads_are_closed_after_a_second(gw: &TestGateway) {
    // A request line and part of the headers, then nothing.
    let mut conn = TcpStream::connect(gw.main).await.unwrap();
    conn.write_all(b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        .await
        .unwrap();
    let (buf, took) = wait_closed(&mut conn, Duration::from_secs(3)).await;
    assert_no_response_or_408(&buf);
    assert!(took >= Duration::from_millis(800), "closed too early: {took:?}");

    // Trickling one byte at a time does not extend the deadline.
    let mut conn = TcpStream::connect(gw.main).await.unwrap();
    let started = Instant::now();
    conn.write_all(b"GET /public/x HTTP/1.1\r\n").await.unwrap();
    let mut closed = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if conn.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), conn.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickling client kept the connection for 3 s");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn header_read_timeout_bounds_idle_connections() {
    let gw = TestGateway::start("[server]\nheader_read_timeout = \"1s\"\n").await;

    // An idle keep-alive connection after a complete request.
    let mut conn = TcpStream::connect(gw.main).await.unwrap();
    conn.write_all(
        format!(
            "GET /public/x HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
            gw.main
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (buf, _) = wait_closed(&mut conn, Duration::from_secs(3)).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));

    // A client that connects and never sends a byte is closed too (else
    // idle sockets pile up until the gateway runs out of descriptors).
    let mut conn = TcpStream::connect(gw.main).await.unwrap();
    let (buf, took) = wait_closed(&mut conn, Duration::from_secs(3)).await;
    assert_no_response_or_408(&buf);
    assert!(took >= Duration::from_millis(800), "closed too early: {took:?}");
}

async fn big_header(gw: &TestGateway, size: usize) -> Option<u16> {
    let mut conn = TcpStream::connect(gw.main).await.unwrap();
    let request = format!(
        "GET /public/x HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        gw.main,
        "a".repeat(size)
    );
    // The server may stop reading (and close) before everything is written.
    let _ = conn.write_all(request.as_bytes()).await;
    let (buf, _) = wait_closed(&mut conn, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let gw = TestGateway::start("").await; // max_header_bytes = 16384
    assert_eq!(big_header(&gw, 8_000).await, Some(200));
    let over = big_header(&gw, 20_000).await;
    assert!(matches!(over, None | Some(431)), "{over:?}");
}

#[tokio::test]
async fn small_max_header_bytes_is_enforced() {
    // The smallest value the config accepts.
    let gw = TestGateway::start("[server]\nmax_header_bytes = 8192\n").await;
    assert_eq!(big_header(&gw, 4_000).await, Some(200));
    let over = big_header(&gw, 12_000).await;
    assert!(
        matches!(over, None | Some(431)),
        "a 12 kB header block passed max_header_bytes = 8192: {over:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let arrived = Arc::new(tokio::sync::Notify::new());
    let a = arrived.clone();
    let upstream = spawn_upstream(move |_req| {
        let a = a.clone();
        async move {
            a.notify_one();
            tokio::time::sleep(Duration::from_millis(800)).await;
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"done")))
        }
    })
    .await;
    let mut gw = TestGateway::start(&format!(
        "[server]\nshutdown_timeout = \"5s\"\n\n[[upstreams]]\nname = \"slow\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;
    let client = gw.client();
    let url = gw.url("/public/slow");
    let in_flight = tokio::spawn(async move {
        let res = client.get(url).send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    });
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("the request reached the upstream");
    gw.shutdown.trigger();

    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpStream::connect(gw.main).await {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(_) => panic!("still accepting connections after shutdown"),
        }
    }

    let (status, body) = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the in-flight request completes")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "done");
    let task = gw.main_task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns after draining")
        .unwrap();
}

/// SPEC section 14: every counter exists from start-up at zero. Factor
/// verifications by (type, result) and lifecycle events for each enabled
/// type, every value the code records; upstream errors by kind for each
/// configured upstream.
#[tokio::test]
async fn factor_and_upstream_counters_exist_at_zero_from_start_up() {
    let gw = TestGateway::start(
        r#"
[server]
external_url = "https://app.example.com"
[factors.totp]
enabled = true
[factors.recovery_codes]
enabled = true
[factors.webauthn]
enabled = true

[[upstreams]]
name = "echo"
url = "{echo}"

[[upstreams]]
name = "zero-check"
url = "{echo}"
hosts = ["zero-check.example"]
"#,
    )
    .await;
    let text = gw.metrics().await;
    // The value of the series with exactly these labels, if there is one.
    let value = |metric: &str, labels: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{metric}{{{labels}}} ")))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let verifications = [
        (
            "token:software:totp",
            &["success", "invalid", "replayed", "locked"][..],
        ),
        ("recovery_code", &["success", "invalid", "locked"][..]),
        (
            "webauthn",
            &[
                "success",
                "invalid",
                "malformed",
                "duplicate",
                "replayed",
                "counter_regressed",
                "unknown_credential",
                "locked",
            ][..],
        ),
    ];
    for (factor_type, results) in verifications {
        for result in results {
            // Other tests in this binary share the recorder: present is enough.
            assert!(
                value(
                    "portcullis_factor_verifications_total",
                    &format!("type=\"{factor_type}\",result=\"{result}\"")
                )
                .is_some(),
                "{factor_type} {result}:\n{text}"
            );
        }
    }
    for factor_type in ["token:software:totp", "webauthn"] {
        for event in ["enrolled", "activated", "removed"] {
            assert!(
                value(
                    "portcullis_factor_events_total",
                    &format!("event=\"{event}\",type=\"{factor_type}\"")
                )
                .is_some(),
                "{factor_type} {event}:\n{text}"
            );
        }
    }
    // No other test names this upstream: exactly zero.
    for kind in ["connect", "request", "timeout", "protocol", "upgrade"] {
        assert_eq!(
            value(
                "portcullis_upstream_errors_total",
                &format!("upstream=\"zero-check\",kind=\"{kind}\"")
            ),
            Some(0.0),
            "{kind}:\n{text}"
        );
    }
    for kind in ["no_context", "no_upstream"] {
        assert!(
            value(
                "portcullis_upstream_errors_total",
                &format!("upstream=\"\",kind=\"{kind}\"")
            )
            .is_some(),
            "{kind}:\n{text}"
        );
    }
}

#[tokio::test]
async fn admin_listener_health_readiness_and_metrics() {
    let gw = TestGateway::start("").await;
    let client = gw.client();
    let res = client.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);

    assert_eq!(gw.status("/public/x", None).await, 200);
    assert_eq!(gw.status("/private", None).await, 401);
    assert_eq!(gw.status("/denied", None).await, 403);
    gw.login(ALICE).await;
    let c = gw.client();
    let csrf = gw.login_page(&c, "/").await;
    let res = gw.post_login(&c, &csrf, "alice", "wrong", "/", &[]).await;
    assert_eq!(res.status(), 401);
    assert!(set_cookie(&res, "portcullis_session").is_none());

    let text = gw.metrics().await;
    // A series with these labels that has counted something (counters with
    // closed label sets are registered at zero from start-up).
    let has = |metric: &str, labels: &[&str]| {
        text.lines().any(|l| {
            l.starts_with(&format!("{metric}{{"))
                && labels.iter().all(|want| l.contains(want))
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0)
        })
    };
    let present = |metric: &str, labels: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(&format!("{metric}{{")) && labels.iter().all(|want| l.contains(want)))
    };
    // Latencies are histograms (aggregatable across replicas), not summaries.
    assert!(
        has("portcullis_upstream_duration_seconds_bucket", &["le=\"+Inf\""]),
        "{text}"
    );
    assert!(
        present("portcullis_upstream_duration_seconds_bucket", &["le=\"0.005\""]),
        "{text}"
    );
    assert!(!text.contains("quantile="), "{text}");
    // Closed-set counters exist before their first event.
    assert!(
        present("portcullis_lockouts_total", &["kind=\"client\""]),
        "{text}"
    );
    assert!(text.contains("\nportcullis_password_rescues_total 0\n"), "{text}");
    assert!(
        present(
            "portcullis_connections_refused_total",
            &["listener=\"admin\"", "limit=\"tls_handshakes\""]
        ),
        "{text}"
    );
    assert!(
        has(
            "portcullis_requests_total",
            &["decision=\"bypass\"", "status=\"200\""]
        ),
        "{text}"
    );
    assert!(
        has(
            "portcullis_requests_total",
            &["decision=\"challenge\"", "status=\"401\""]
        ),
        "{text}"
    );
    assert!(
        has(
            "portcullis_requests_total",
            &["decision=\"deny\"", "status=\"403\""]
        ),
        "{text}"
    );
    assert!(has("portcullis_logins_total", &["result=\"success\""]), "{text}");
    assert!(has("portcullis_logins_total", &["result=\"failure\""]), "{text}");

    // The admin listener does not serve the portal or the application.
    let res = client
        .get(gw.admin_url("/_portcullis/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // And raw requests to the main listener still work after all that.
    let res = raw(
        gw.main,
        &format!(
            "GET /_portcullis/healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.main
        ),
    )
    .await;
    assert_eq!(res.status, 200);
}
