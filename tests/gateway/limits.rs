//! What a client can hold open: idle HTTP/2 connections end with GOAWAY, a
//! connection cap turns the extra ones away and recovers, one address gets
//! only its share, request bodies must keep arriving, TLS handshakes are
//! bounded in time and number, and the binary raises its open-file limit.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestGateway, free_port, spawn_upstream, users_file};

// --- a minimal HTTP/2 client, frame by frame ---------------------------------

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn write_frame(conn: &mut TcpStream, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap();
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    conn.write_all(&frame).await.unwrap();
}

/// The next frame, or `None` once the server has closed the connection.
async fn read_frame(conn: &mut TcpStream) -> Option<Frame> {
    let mut head = [0u8; 9];
    conn.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// A literal header field without indexing, its name from the static table.
fn literal(name_index: u8, value: &str) -> Vec<u8> {
    let mut out = vec![name_index, u8::try_from(value.len()).unwrap()];
    out.extend_from_slice(value.as_bytes());
    out
}

/// Opens a prior-knowledge (h2c) connection and sends `GET path` on stream 1.
async fn h2c_get(gw: &TestGateway, path: &str) -> TcpStream {
    h2c_get_with(gw, path, &[]).await
}

/// `SETTINGS_INITIAL_WINDOW_SIZE` (0x4) = `bytes`: what a stream may be sent
/// before the client opens its window further.
fn initial_window(bytes: u32) -> Vec<u8> {
    let mut setting = vec![0x00, 0x04];
    setting.extend_from_slice(&bytes.to_be_bytes());
    setting
}

/// [`h2c_get`] with the client's `settings` (a SETTINGS frame's payload).
async fn h2c_get_with(gw: &TestGateway, path: &str, settings: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(gw.main).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    write_frame(&mut conn, SETTINGS, 0, 0, settings).await;
    // :method GET, :scheme http (static table), :path and :authority literals.
    let mut block = vec![0x82, 0x86];
    block.extend(literal(0x04, path));
    block.extend(literal(0x01, &gw.main.to_string()));
    write_frame(&mut conn, HEADERS, END_HEADERS | END_STREAM, 1, &block).await;
    conn
}

/// What the server did on an h2c connection, as a well-behaved client sees
/// it (SETTINGS and PINGs are acknowledged).
#[derive(Debug, Default)]
struct Seen {
    /// The response's `:status` was 200 (static-table index 8).
    ok: bool,
    /// When stream 1 ended (`END_STREAM`), after the start.
    response_done: Option<Duration>,
    /// When the first GOAWAY came, after the start.
    goaway: Option<Duration>,
    /// When the server closed the connection, after the start.
    closed: Option<Duration>,
    body: Vec<u8>,
}

/// Reads frames until the server closes or `within` passes.
async fn watch_h2(conn: &mut TcpStream, started: Instant, within: Duration) -> Seen {
    let mut seen = Seen::default();
    let _ = tokio::time::timeout(within, async {
        while let Some(frame) = read_frame(conn).await {
            let at = started.elapsed();
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => write_frame(conn, SETTINGS, ACK, 0, &[]).await,
                PING if frame.flags & ACK == 0 => write_frame(conn, PING, ACK, 0, &frame.payload).await,
                GOAWAY if seen.goaway.is_none() => seen.goaway = Some(at),
                HEADERS if frame.stream == 1 => {
                    seen.ok |= frame.payload.first() == Some(&0x88);
                    if frame.flags & END_STREAM != 0 {
                        seen.response_done = Some(at);
                    }
                }
                DATA if frame.stream == 1 => {
                    seen.body.extend_from_slice(&frame.payload);
                    if frame.flags & END_STREAM != 0 {
                        seen.response_done = Some(at);
                    }
                }
                _ => {}
            }
        }
        seen.closed = Some(started.elapsed());
    })
    .await;
    seen
}

/// One h2c request, then the connection left idle: asserts a GOAWAY at least
/// `idle` after the response (not an abrupt close) and returns what was seen.
async fn goaway_once_idle(gw: &TestGateway, idle: Duration, within: Duration) -> Seen {
    let started = Instant::now();
    let mut conn = h2c_get(gw, "/public/x").await;
    let seen = watch_h2(&mut conn, started, within).await;
    assert!(seen.ok, "{seen:?}");
    let done = seen.response_done.expect("the response arrived");
    let goaway = seen
        .goaway
        .unwrap_or_else(|| panic!("no GOAWAY within {within:?} of an idle time of {idle:?}: {seen:?}"));
    assert!(
        goaway + Duration::from_millis(200) >= done + idle,
        "GOAWAY before the connection was idle for {idle:?}: {seen:?}"
    );
    seen
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_with_goaway() {
    // header_read_timeout (5 s in the base config) must not be what closes it.
    let gw = TestGateway::start("[server]\nidle_timeout = \"1s\"\n").await;
    let seen = goaway_once_idle(&gw, Duration::from_secs(1), Duration::from_secs(4)).await;
    let closed = seen.closed.expect("the server closed the connection");
    assert!(closed >= seen.goaway.unwrap_or_default(), "{seen:?}");
}

#[tokio::test]
async fn header_read_timeout_does_not_cut_an_idle_http2_connection() {
    // HTTP/2 streams come and go on one connection: only idle_timeout
    // applies once it speaks HTTP/2, even when header_read_timeout is shorter.
    let gw = TestGateway::start("[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"3s\"\n").await;
    goaway_once_idle(&gw, Duration::from_secs(3), Duration::from_secs(6)).await;
}

#[tokio::test]
async fn a_busy_http2_connection_is_not_cut() {
    // A request that takes 2.5 idle times: in flight, so not idle.
    let upstream = spawn_upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"done")))
    })
    .await;
    let gw = TestGateway::start(&format!(
        "[server]\nidle_timeout = \"1s\"\n\n[[upstreams]]\nname = \"slow\"\nurl = \"http://{upstream}\"\ntimeout = \"10s\"\n"
    ))
    .await;
    let started = Instant::now();
    let mut conn = h2c_get(&gw, "/public/slow").await;
    let seen = watch_h2(&mut conn, started, Duration::from_secs(7)).await;
    assert!(seen.ok, "{seen:?}");
    assert_eq!(seen.body, b"done", "{seen:?}");
    let done = seen.response_done.expect("the slow response arrived");
    assert!(done >= Duration::from_millis(2400), "{seen:?}");
    // No GOAWAY while the request was in flight, one once idle after it.
    let goaway = seen.goaway.expect("GOAWAY once idle after the response");
    assert!(goaway >= done + Duration::from_millis(800), "{seen:?}");
    assert!(seen.closed.is_some(), "{seen:?}");
}

// --- HTTP/2 flow control -----------------------------------------------------------

/// A raw HTTP/1.1 upstream answering every request with `first` bytes at
/// once, then, `pause` later, `last` more (so the answer waits for its
/// upstream in between). Sends the time of each connection's end (the
/// gateway closed it, or a write failed) on the returned channel.
async fn paced_upstream(
    first: usize,
    pause: Duration,
    last: usize,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Instant>,
) {
    let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                'requests: loop {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => break 'requests,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.clear();
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", first + last);
                    let (mut rd, mut wr) = conn.split();
                    let answered = async {
                        wr.write_all(head.as_bytes()).await?;
                        wr.write_all(&vec![b'a'; first]).await?;
                        tokio::time::sleep(pause).await;
                        wr.write_all(&vec![b'z'; last]).await
                    };
                    // The gateway sends no next request before this answer
                    // ends: anything read meanwhile is its end.
                    let closed = async {
                        let mut byte = [0u8; 1];
                        let _ = rd.read(&mut byte).await;
                    };
                    tokio::select! {
                        answered = answered => if answered.is_err() { break },
                        () = closed => break,
                    }
                }
                let _ = ended_tx.send(Instant::now());
            });
        }
    });
    (addr, ended)
}

#[tokio::test]
async fn an_http2_client_that_keeps_its_window_shut_is_dropped_and_its_upstream_let_go() {
    // Such a client reads its socket (SETTINGS, PINGs) but never lets the
    // answer through: its socket never blocks, only the answer waits.
    // An answer that cannot end before the test does.
    let (upstream, mut ended) = paced_upstream(100_000, Duration::from_secs(30), 1).await;
    let gw = TestGateway::start(&format!(
        "[server]\nidle_timeout = \"1s\"\n\n[[upstreams]]\nname = \"paced\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;
    // No window from the start, and a window that shuts after 16 KiB.
    for window in [0, 16_384] {
        let started = Instant::now();
        let mut conn = h2c_get_with(&gw, "/public/paced", &initial_window(window)).await;
        let seen = watch_h2(&mut conn, started, Duration::from_secs(8)).await;
        assert!(seen.ok, "window {window}: {seen:?}");
        assert_eq!(seen.body.len(), window as usize, "window {window}");
        assert!(seen.response_done.is_none(), "window {window}: {seen:?}");
        let closed = seen
            .closed
            .unwrap_or_else(|| panic!("window {window}: still open after 8 s: {seen:?}"));
        // Between one and two idle times after the answer started (plus
        // the watchdog's wake-ups).
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_millis(3500),
            "window {window}: closed after {closed:?}"
        );
        let upstream_ended = tokio::time::timeout(Duration::from_secs(3), ended.recv())
            .await
            .unwrap_or_else(|_| panic!("window {window}: the upstream connection was held"))
            .unwrap();
        assert!(
            upstream_ended.duration_since(started) < Duration::from_secs(5),
            "window {window}"
        );
    }
}

/// A GET over h2c from a client that starts with no window and, each time
/// all it let through has arrived, waits `every` and lets `grant` more
/// through (on the stream and the connection). Returns the body's length
/// once the stream ended, panicking if the connection closes first.
async fn download_through_a_slow_window(gw: &TestGateway, path: &str, grant: u32, every: Duration) -> usize {
    let started = Instant::now();
    let mut conn = h2c_get_with(gw, path, &initial_window(0)).await;
    let (mut body, mut done, mut ok) = (0usize, false, false);
    let mut granted = 0usize;
    while !done {
        let frame = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut conn))
            .await
            .unwrap_or_else(|_| panic!("stuck after {body} bytes"))
            .unwrap_or_else(|| panic!("closed after {body} bytes, {:?}", started.elapsed()));
        match frame.kind {
            SETTINGS if frame.flags & ACK == 0 => write_frame(&mut conn, SETTINGS, ACK, 0, &[]).await,
            PING if frame.flags & ACK == 0 => write_frame(&mut conn, PING, ACK, 0, &frame.payload).await,
            HEADERS if frame.stream == 1 => ok = frame.payload.first() == Some(&0x88),
            DATA if frame.stream == 1 => {
                body += frame.payload.len();
                done = frame.flags & END_STREAM != 0;
            }
            _ => {}
        }
        if ok && !done && body == granted {
            tokio::time::sleep(every).await;
            write_frame(&mut conn, WINDOW_UPDATE, 0, 1, &grant.to_be_bytes()).await;
            write_frame(&mut conn, WINDOW_UPDATE, 0, 0, &grant.to_be_bytes()).await;
            granted += grant as usize;
        }
    }
    assert!(ok);
    body
}

#[tokio::test]
async fn an_http2_client_that_opens_its_window_slowly_gets_the_whole_answer() {
    // 256 KiB at once (the gateway reads it from the upstream in chunks
    // that grow to 100 KiB and more while the client is slow), the last
    // 4 KiB 2 s later. The client opens 16 KiB every 100 ms: the answer
    // waits for the client and for the upstream in turns, for more than
    // four idle times, and no single upstream chunk gets out within one.
    let (first, last) = (256 * 1024, 4096);
    let (upstream, _ended) = paced_upstream(first, Duration::from_secs(2), last).await;
    let gw = TestGateway::start(&format!(
        "[server]\nidle_timeout = \"500ms\"\n\n[[upstreams]]\nname = \"paced\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;
    let started = Instant::now();
    let body = download_through_a_slow_window(&gw, "/public/paced", 16_384, Duration::from_millis(100)).await;
    assert_eq!(body, first + last);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

// --- the connection cap --------------------------------------------------------

/// Sends a keep-alive request and reads the response head.
async fn keep_alive_get(gw: &TestGateway) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(gw.main).await.unwrap();
    conn.write_all(format!("GET /_portcullis/healthz HTTP/1.1\r\nHost: {}\r\n\r\n", gw.main).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .expect("an answer");
    (conn, head)
}

#[tokio::test]
async fn the_connection_cap_refuses_politely_and_recovers() {
    let gw = TestGateway::start("[server]\nmax_connections = 5\n").await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let (conn, head) = keep_alive_get(&gw).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(conn);
    }

    // The sixth is answered 503 and closed, not left hanging.
    for _ in 0..3 {
        let (mut conn, head) = keep_alive_get(&gw).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a refused connection stays open");
    }
    // The ones already open still work.
    let conn = &mut held[0];
    conn.write_all(format!("GET /_portcullis/healthz HTTP/1.1\r\nHost: {}\r\n\r\n", gw.main).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // Once two close, new connections are served again.
    held.truncate(3);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut admitted = Vec::new();
    while admitted.len() < 2 {
        let (conn, head) = keep_alive_get(&gw).await;
        if head.starts_with("HTTP/1.1 200") {
            admitted.push(conn);
        } else {
            assert!(
                Instant::now() < deadline,
                "still refused after others closed: {head}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (_, head) = keep_alive_get(&gw).await;
    assert!(head.starts_with("HTTP/1.1 503"), "the cap still holds: {head}");

    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_connections_refused_total{")
                && l.contains("listener=\"main\"")
                && l.contains("limit=\"connections\"")),
        "{metrics}"
    );
}

// --- slow request bodies -------------------------------------------------------

/// What a client that sends a request head and then part of its body saw.
struct Trickled {
    answer: String,
    /// When the answer had fully arrived (the server closed), after the start.
    closed: Option<Duration>,
}

/// Sends `head` and one body byte, then one more byte every `every` (never
/// the whole body) until the server closes the connection or 6 s pass.
async fn trickle(addr: std::net::SocketAddr, head: String, every: Option<Duration>) -> Trickled {
    let started = Instant::now();
    let conn = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    wr.write_all(b"u").await.unwrap();
    let writer = tokio::spawn(async move {
        let Some(every) = every else {
            // Stalled: hold the connection open, send nothing more.
            std::future::pending::<()>().await;
            return;
        };
        loop {
            tokio::time::sleep(every).await;
            if wr.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        // A reset after the answer (bytes sent after the close) ends it too.
        let _ = rd.read_to_end(&mut buf).await;
    })
    .await
    .ok()
    .map(|()| started.elapsed());
    writer.abort();
    Trickled {
        answer: String::from_utf8_lossy(&buf).into_owned(),
        closed,
    }
}

fn post_head(gw: &TestGateway, path: &str, content_type: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n",
        gw.main
    )
}

#[tokio::test]
async fn slow_portal_bodies_get_408_and_free_their_slots() {
    let gw = TestGateway::start(
        "[server]\nmax_connections = 6\nbody_read_timeout = \"1s\"\nidle_timeout = \"30s\"\n",
    )
    .await;
    let started = Instant::now();
    // Every slot taken by a body that gains a byte every 300 ms: never idle
    // for long, but never done either. One of them on the JSON API.
    let mut clients = Vec::new();
    for i in 0..6 {
        let head = if i == 0 {
            post_head(&gw, "/_portcullis/api/v1/authn", "application/json", 16000)
        } else {
            post_head(
                &gw,
                "/_portcullis/login",
                "application/x-www-form-urlencoded",
                16000,
            )
        };
        clients.push(tokio::spawn(trickle(
            gw.main,
            head,
            Some(Duration::from_millis(300)),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile the listener is full.
    let (_, head) = keep_alive_get(&gw).await;
    assert!(
        head.starts_with("HTTP/1.1 503"),
        "the slow clients should hold every slot: {head}"
    );

    // A fresh request is served within the body timeout and a margin.
    let deadline = started + Duration::from_secs(3);
    loop {
        let (_, head) = keep_alive_get(&gw).await;
        if head.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slow bodies still hold the listener {:?} after they started: {head}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (i, client) in clients.into_iter().enumerate() {
        let seen = client.await.unwrap();
        let closed = seen
            .closed
            .unwrap_or_else(|| panic!("a slow body kept its connection open: {}", seen.answer));
        assert!(
            closed >= Duration::from_millis(800),
            "cut before the timeout: {closed:?} {}",
            seen.answer
        );
        assert!(closed < Duration::from_secs(3), "closed late: {closed:?}");
        assert!(seen.answer.starts_with("HTTP/1.1 408"), "{}", seen.answer);
        assert!(
            seen.answer.to_ascii_lowercase().contains("connection: close"),
            "{}",
            seen.answer
        );
        if i == 0 {
            assert!(
                seen.answer.contains("\"errorCode\":\"E0000003\""),
                "{}",
                seen.answer
            );
        } else {
            assert!(
                seen.answer.ends_with("request body timed out\n"),
                "{}",
                seen.answer
            );
        }
    }
}

#[tokio::test]
async fn a_stalled_upload_is_aborted_but_a_slow_steady_one_completes() {
    // Counts the bytes of each upload it receives.
    let upstream = spawn_upstream(|req| async move {
        use http_body_util::BodyExt;
        let text = match req.into_body().collect().await {
            Ok(body) => format!("got {}", body.to_bytes().len()),
            Err(_) => "aborted".to_owned(),
        };
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)))
    })
    .await;
    let gw = TestGateway::start(&format!(
        "[server]\nbody_read_timeout = \"1s\"\n\n[[upstreams]]\nname = \"sink\"\nurl = \"http://{upstream}\"\ntimeout = \"20s\"\n"
    ))
    .await;

    // 16 chunks 200 ms apart: over 3 s in all, longer than the timeout, but
    // never a second without progress. It is proxied whole.
    let steady = tokio::spawn({
        let head = post_head(&gw, "/public/upload", "application/octet-stream", 1 + 16 * 10);
        let addr = gw.main;
        async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(b"u").await.unwrap();
            for _ in 0..16 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                conn.write_all(b"0123456789").await.unwrap();
            }
            let mut buf = [0u8; 4096];
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while !answer.ends_with(b"got 161") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    });

    // One that stops after its first byte is cut after the timeout, not
    // after the upstream's 20 s.
    let stalled = trickle(
        gw.main,
        post_head(&gw, "/public/upload", "application/octet-stream", 100_000),
        None,
    )
    .await;
    let closed = stalled
        .closed
        .unwrap_or_else(|| panic!("a stalled upload kept its connection for 6 s: {}", stalled.answer));
    assert!(closed >= Duration::from_millis(800), "{closed:?}");
    assert!(closed < Duration::from_secs(3), "{closed:?}");
    assert!(stalled.answer.starts_with("HTTP/1.1 408"), "{}", stalled.answer);

    let answer = steady.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("got 161"), "{answer}");
}

#[tokio::test]
async fn an_upload_that_goes_on_after_the_answer_is_not_cut() {
    // An upstream that answers as soon as it has the request head, then
    // reads the upload to its end and reports its length (hyper's server
    // stops reading a body once it has answered, so this one is raw).
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = conn.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
            if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(n > 0, "no request head");
        };
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
            .await
            .unwrap();
        let mut body = seen.len() - head_end;
        while body < 101 {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body += n,
            }
        }
        let _ = got_tx.send(body);
    });
    let gw = TestGateway::start(&format!(
        "[server]\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"2s\"\n\n[[upstreams]]\nname = \"sink\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;
    let mut conn = TcpStream::connect(gw.main).await.unwrap();
    let head = post_head(&gw, "/public/upload", "application/octet-stream", 1 + 10 * 10);
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(b"u").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"early") {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an early answer")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The answer is complete, the upload goes on for 3 s: three times the
    // head limit, never a pause as long as the body limit.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.write_all(b"0123456789").await.unwrap();
    }
    let received = tokio::time::timeout(Duration::from_secs(5), got.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, 101, "the upstream got the whole upload");
}

// --- clients that do not read -------------------------------------------------------

/// A `GET` of `path` (closing the connection after it) from a socket with a
/// small receive buffer, which reads the first bytes of the answer, waits
/// `pause`, then reads the rest: how many body bytes arrived in all.
async fn read_after_a_pause(gw: &TestGateway, path: &str, pause: Duration) -> usize {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let mut conn = socket.connect(gw.main).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gw.main
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = conn.read(&mut answer).await.unwrap();
    answer.truncate(n);
    tokio::time::sleep(pause).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    answer.len() - body - 4
}

/// How many bytes the kernel takes on loopback for a client with the receive
/// buffer of [`read_after_a_pause`] that reads nothing.
async fn absorbed_by_a_client_that_does_not_read() -> usize {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let _client = socket.connect(listener.local_addr().unwrap()).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut total = 0;
    // The send buffer grows while it is filled: until nothing more goes for a while.
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), server.write(&chunk)).await {
        total += n;
    }
    total
}

#[tokio::test]
async fn a_slow_reader_gets_the_whole_answer_but_one_that_stops_reading_is_dropped() {
    // More than the kernel holds, less than what the gateway buffers on top:
    // the answer's end has been taken from the upstream but not yet sent.
    let tail = absorbed_by_a_client_that_does_not_read().await + 200 * 1024;
    const BIG: usize = 16 * 1024 * 1024;
    let upstream = spawn_upstream(move |req| async move {
        let size = if req.uri().path().ends_with("/big") {
            BIG
        } else {
            tail
        };
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; size])))
    })
    .await;
    let gw = TestGateway::start(&format!(
        "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"3s\"\n\n[[upstreams]]\nname = \"files\"\nurl = \"http://{upstream}\"\n"
    ))
    .await;
    // An answer that the gateway has buffered whole, read after a pause
    // longer than the head limit: it all arrives.
    let read = read_after_a_pause(&gw, "/public/tail", Duration::from_millis(2000)).await;
    assert_eq!(read, tail, "a buffered tail was cut");
    // One whose reader pauses longer than idle_timeout is dropped, though
    // its response is still in flight.
    let big = read_after_a_pause(&gw, "/public/big", Duration::from_millis(5000)).await;
    assert!(
        big < BIG,
        "a client that read nothing for 5 s held its response open"
    );
}

// --- connections per address ----------------------------------------------------

/// A keep-alive request like [`keep_alive_get`], from local address `from`;
/// `None` when that address cannot be bound here.
async fn keep_alive_get_from(gw: &TestGateway, from: &str) -> Option<(TcpStream, String)> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).ok()?;
    let mut conn = socket.connect(gw.main).await.ok()?;
    conn.write_all(format!("GET /_portcullis/healthz HTTP/1.1\r\nHost: {}\r\n\r\n", gw.main).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("an answer");
    Some((conn, String::from_utf8_lossy(&buf).into_owned()))
}

#[tokio::test]
async fn one_address_gets_only_its_share_of_connections() {
    let gw = TestGateway::start(
        "[server]\nmax_connections = 100\nmax_connections_per_ip = 3\ntrusted_proxies = [\"127.0.0.3/32\"]\n",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (conn, head) = keep_alive_get_from(&gw, "127.0.0.1").await.unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(conn);
    }
    // The fourth from the same address is refused like an over-limit one.
    let (mut conn, head) = keep_alive_get_from(&gw, "127.0.0.1").await.unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a refused connection stays open");

    // Another address still gets in (127/8 is all loopback on Linux).
    let Some((other, head)) = keep_alive_get_from(&gw, "127.0.0.2").await else {
        crate::skip::part(
            "one_address_gets_only_its_share_of_connections",
            "another address",
            "cannot bind 127.0.0.2 here",
        );
        return;
    };
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "another address is refused: {head}"
    );
    // A trusted proxy carries many users: not capped.
    let mut proxied = Vec::new();
    for _ in 0..6 {
        let (conn, head) = keep_alive_get_from(&gw, "127.0.0.3").await.unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "a trusted proxy was capped: {head}"
        );
        proxied.push(conn);
    }

    // Once one of its connections closes, the address is served again.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (conn, head) = keep_alive_get_from(&gw, "127.0.0.1").await.unwrap();
        if head.starts_with("HTTP/1.1 200") {
            held.push(conn);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after one closed: {head}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, head) = keep_alive_get_from(&gw, "127.0.0.1").await.unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "the cap still holds: {head}");
    drop(other);

    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_connections_refused_total{")
                && l.contains("listener=\"main\"")
                && l.contains("limit=\"connections_per_ip\"")),
        "{metrics}"
    );
}

/// The admin listener (health checks, metrics, the admin API) has a small
/// budget of its own: one address holds at most 32 of its connections, so it
/// cannot take them all and lock operators out.
#[tokio::test]
async fn one_address_cannot_take_the_admin_listener() {
    let gw = TestGateway::start("").await;
    let admin_get = |from: &'static str| {
        let target = gw.admin;
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
            let mut conn = socket.connect(target).await.unwrap();
            conn.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut head = [0u8; 12];
            tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut head))
                .await
                .expect("an answer")
                .unwrap();
            (conn, String::from_utf8_lossy(&head).into_owned())
        }
    };
    let mut held = Vec::new();
    for _ in 0..32 {
        let (conn, head) = admin_get("127.0.0.2").await;
        assert_eq!(head, "HTTP/1.1 200", "{head}");
        held.push(conn);
    }
    let (_, head) = admin_get("127.0.0.2").await;
    assert_eq!(head, "HTTP/1.1 503", "the 33rd from one address");
    let (_, head) = admin_get("127.0.0.1").await;
    assert_eq!(head, "HTTP/1.1 200", "another address is served");
}

/// What an HTTP/2 client is told it may send before the gateway reads: at
/// most 128 streams at once, 256 KiB per stream and 512 KiB per connection
/// (hyper's defaults are 200 streams and 1 MiB each), so 10 000 connections
/// cannot park 10 GiB of request bodies in the gateway.
#[tokio::test]
async fn http2_clients_are_told_small_windows_and_few_streams() {
    let gw = TestGateway::start("").await;
    let mut conn = h2c_get(&gw, "/public/x").await;
    let (mut streams, mut stream_window, mut conn_window) = (None, 65_535u32, 65_535u32);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(frame) = read_frame(&mut conn).await {
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    for setting in frame.payload.chunks_exact(6) {
                        let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                        match u16::from_be_bytes([setting[0], setting[1]]) {
                            0x3 => streams = Some(value),
                            0x4 => stream_window = value,
                            _ => {}
                        }
                    }
                }
                WINDOW_UPDATE if frame.stream == 0 => {
                    let grow = u32::from_be_bytes([
                        frame.payload[0],
                        frame.payload[1],
                        frame.payload[2],
                        frame.payload[3],
                    ]);
                    conn_window += grow & 0x7fff_ffff;
                }
                _ => {}
            }
            if frame.kind == HEADERS && frame.stream == 1 {
                return;
            }
        }
    })
    .await;
    assert_eq!(streams, Some(128));
    assert_eq!(stream_window, 256 * 1024);
    assert_eq!(conn_window, 512 * 1024);
}

// --- TLS handshakes ------------------------------------------------------------

/// Waits until the server closes `conn`; how long it took.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

#[tokio::test]
async fn a_silent_tls_client_is_dropped_after_the_handshake_timeout() {
    // header_read_timeout is 5 s in the base config: the handshake has its own.
    let gw = TestGateway::builder()
        .tls()
        .toml("[server]\ntls_handshake_timeout = \"1s\"\n")
        .start()
        .await;
    let mut conn = TcpStream::connect(gw.main).await.unwrap();
    let took = closed_within(&mut conn, Duration::from_secs(3))
        .await
        .expect("a client that never sends a ClientHello is disconnected");
    assert!(took >= Duration::from_millis(800), "closed too early: {took:?}");

    // A real TLS client is served.
    let res = gw.client().get(gw.url("/public/x")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn concurrent_tls_handshakes_are_bounded() {
    let gw = TestGateway::builder()
        .tls()
        .toml("[server]\nmax_tls_handshakes = 2\ntls_handshake_timeout = \"20s\"\n")
        .start()
        .await;
    // Two clients that never finish their handshake take both places.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(TcpStream::connect(gw.main).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third is closed at once instead of waiting its turn.
    let mut third = TcpStream::connect(gw.main).await.unwrap();
    let took = closed_within(&mut third, Duration::from_secs(2))
        .await
        .expect("a handshake over the limit is refused at once");
    assert!(took < Duration::from_secs(2));
    // The places come back when the stalled clients go away.
    drop(stalled);
    let client = gw.client();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match client.get(gw.url("/public/x")).send().await {
            Ok(res) if res.status() == 200 => break,
            other => {
                assert!(Instant::now() < deadline, "TLS still refused: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One address cannot take every TLS handshake place: it holds at most 32
/// at once (`server.max_tls_handshakes` is for all addresses together), so
/// a client from another address is still served while the first stalls
/// as many handshakes as it can open.
#[tokio::test]
async fn one_address_takes_at_most_its_share_of_tls_handshakes() {
    let gw = TestGateway::builder()
        .tls()
        .toml("[server]\nmax_tls_handshakes = 40\ntls_handshake_timeout = \"20s\"\n")
        .start()
        .await;
    // 127.0.0.2 is a loopback address too: another client address.
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(gw.main)
    };
    let mut stalled = Vec::new();
    for _ in 0..40 {
        stalled.push(from("127.0.0.2").await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Past its share, its connections were closed at once...
    let took = closed_within(stalled.last_mut().unwrap(), Duration::from_secs(2)).await;
    assert!(
        took.is_some(),
        "a handshake past the address's share is refused at once"
    );
    // ...while its first 32 wait for their handshakes.
    assert!(
        closed_within(&mut stalled[0], Duration::from_millis(200))
            .await
            .is_none()
    );
    // Another address is served.
    let res = gw.client().get(gw.url("/public/x")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

// --- the open-file limit -----------------------------------------------------

/// The soft and hard "Max open files" of a process.
#[cfg(target_os = "linux")]
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), users_file()).unwrap();
    let echo = portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (main, admin) = (free_port(), free_port());
    let text = crate::support::config_text(
        &format!("[server]\nlisten = \"127.0.0.1:{main}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
        &format!("http://{echo}"),
        dir.path(),
    );
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    // Started with a low soft limit, as systemd's default of 1024 would be.
    let (_, our_hard) = open_files_limit(std::process::id());
    if our_hard.parse::<u64>().is_ok_and(|hard| hard <= 256) {
        crate::skip::test(
            "serve_raises_its_open_file_limit_to_the_hard_limit",
            &format!("the hard open-file limit here ({our_hard}) leaves nothing to raise"),
        );
        return;
    }
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -Sn 256 && exec \"$0\" serve --config \"$1\"",
            env!("CARGO_BIN_EXE_portcullis"),
            path.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut child = crate::support::Reap(child);
    let pid = child.0.id();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let stderr = dir.path().join("stderr.log");
    crate::support::wait_until_healthy(
        &mut child,
        &client,
        &format!("http://127.0.0.1:{main}"),
        Some(&stderr),
    )
    .await;
    let (soft, hard) = open_files_limit(pid);
    assert_eq!(
        soft, hard,
        "the soft open-file limit (256 at start) was not raised to the hard one"
    );
}
