//! WebSocket upgrades through the gateway on a protected route.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::{ALICE, TestGateway, spawn_upstream};

/// What the WebSocket upstream saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    handshakes: Mutex<Vec<http::HeaderMap>>,
}

/// A WebSocket echo server on a raw TCP listener.
async fn spawn_ws_upstream() -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            s.connections.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                // The signature is tungstenite's.
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, res: Response| -> Result<Response, ErrorResponse> {
                    s.handshakes.lock().unwrap().push(req.headers().clone());
                    Ok(res)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        return;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn websocket_echo_on_a_protected_route() {
    let (upstream, seen) = spawn_ws_upstream().await;
    let gw = TestGateway::start(&format!(
        "[[upstreams]]\nname = \"ws\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;
    let login = gw.login(ALICE).await;

    let mut req = format!("ws://{}/ws/chat", gw.main).into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", format!("{}; app=1", login.cookie()).parse().unwrap());
    req.headers_mut()
        .insert("remote-user", "mallory".parse().unwrap());
    let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.status(), 101);
    for text in ["hello", "wörld"] {
        ws.send(Message::text(text)).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        [0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();

    let handshakes = seen.handshakes.lock().unwrap().clone();
    assert_eq!(handshakes.len(), 1);
    let h = &handshakes[0];
    assert_eq!(h.get("remote-user").unwrap(), "alice");
    assert_eq!(h.get_all("remote-user").iter().count(), 1);
    assert_eq!(
        h.get("cookie").unwrap(),
        "app=1",
        "the session stays at the gateway"
    );
    assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1");
}

#[tokio::test]
async fn websocket_without_a_session_never_reaches_the_upstream() {
    let (upstream, seen) = spawn_ws_upstream().await;
    let gw = TestGateway::start(&format!(
        "[[upstreams]]\nname = \"ws\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;

    for (accept, cookie, want) in [
        (None, None, 401),
        (Some("text/html"), None, 302),
        (None, Some("portcullis_session=v1.e30.AAAA"), 401),
    ] {
        let mut req = format!("ws://{}/ws/chat", gw.main).into_client_request().unwrap();
        if let Some(a) = accept {
            req.headers_mut().insert("accept", a.parse().unwrap());
        }
        if let Some(c) = cookie {
            req.headers_mut().insert("cookie", c.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(WsError::Http(res)) => assert_eq!(res.status(), want),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("upgraded without a session"),
        }
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 0);
    assert!(seen.handshakes.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_open_websockets_after_the_drain() {
    let (upstream, _seen) = spawn_ws_upstream().await;
    let mut gw = TestGateway::start(&format!(
        "[server]\nshutdown_timeout = \"500ms\"\n\n[[upstreams]]\nname = \"ws\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;
    let login = gw.login(ALICE).await;
    let mut req = format!("ws://{}/ws", gw.main).into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", login.cookie().parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(),
        "before"
    );

    gw.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(3), gw.main_task.take().unwrap())
        .await
        .expect("serve returns within shutdown_timeout")
        .unwrap();
    // serve has returned: the WebSocket must not outlive it.
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws.send(Message::text("after")).await;
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the WebSocket is still open after shutdown");
}

/// A WebSocket with no byte either way for `server.idle_timeout` is closed
/// (the connection's own watchdog ended with hyper's part of it, so a quiet
/// tunnel would otherwise hold its client and upstream sockets for ever), as
/// nginx's `proxy_read_timeout` ends one; a WebSocket that keeps talking is
/// not.
#[tokio::test]
async fn a_quiet_websocket_is_closed_after_idle_timeout() {
    let (upstream, _seen) = spawn_ws_upstream().await;
    let gw = TestGateway::start(&format!(
        "[server]\nidle_timeout = \"1s\"\n\n[[upstreams]]\nname = \"ws\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;
    let login = gw.login(ALICE).await;
    let open = || async {
        let mut req = format!("ws://{}/ws", gw.main).into_client_request().unwrap();
        req.headers_mut()
            .insert("cookie", login.cookie().parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    let mut quiet = open().await;
    let mut talking = open().await;
    // 2.5 idle timeouts, a message every 0.3 s on one of them.
    for n in 0..8 {
        let text = format!("still here {n}");
        talking.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(2), talking.next())
            .await
            .expect("a talking WebSocket is not closed");
        assert_eq!(echoed.unwrap().unwrap().into_text().unwrap().as_str(), text);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match quiet.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a WebSocket quiet for 2.5 idle timeouts is still open"
    );
}

/// An open tunnel's upstream socket counts against `server.max_connections`
/// like any upstream connection: hyper's part of it ends at the 101, and the
/// tunnel keeps its place until it closes.
#[tokio::test]
async fn open_websockets_count_against_the_upstream_connection_budget() {
    let (ws, _seen) = spawn_ws_upstream().await;
    let slow = spawn_upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"late")))
    })
    .await;
    let gw = TestGateway::start(&format!(
        "[server]\nmax_connections = 3\n\n\
         [[upstreams]]\nname = \"ws\"\nurl = \"http://{ws}\"\nhosts = [\"ws.test\"]\n\n\
         [[upstreams]]\nname = \"slow\"\nurl = \"http://{slow}\"\n"
    ))
    .await;
    let open = || async {
        let mut req = format!("ws://{}/public/ws", gw.main)
            .into_client_request()
            .unwrap();
        let host = format!("ws.test:{}", gw.main.port());
        req.headers_mut().insert("host", host.parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    let mut tunnels = vec![open().await, open().await];
    for ws in &mut tunnels {
        ws.send(Message::text("up")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(),
            "up"
        );
    }
    // Two requests at once on one HTTP/2 connection: two upstream
    // connections wanted, one place left beside the two tunnels.
    let client = gw.client_builder().http2_prior_knowledge().build().unwrap();
    let two_at_once = || {
        futures_util::future::join_all((0..2).map(|_| {
            let request = client
                .get(gw.url("/public/x"))
                .header("accept", "application/json")
                .send();
            async move { request.await.unwrap().status().as_u16() }
        }))
    };
    let mut statuses = two_at_once().await;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503], "the tunnels hold two of three places");
    for mut ws in tunnels {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    // Closed tunnels give their places back.
    for attempt in 0.. {
        let statuses = two_at_once().await;
        if statuses == [200, 200] {
            break;
        }
        assert!(attempt < 20, "places not given back: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
