//! The `webhook` delivery: a signed JSON POST with bounded retries.
//!
//! The signature header is `Portcullis-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256(secret, t + "." + body)>` (the scheme Stripe made familiar), so
//! a relay checks both who sent the message and that it is fresh. A relay
//! verifies with [`verify_signature`]; during a secret rotation it may see
//! several `v1=` entries and accepts the message if any matches.
//!
//! Attempts: at most [`RetryPolicy::attempts`], each bounded by
//! [`RetryPolicy::timeout`]; retried (after 200 ms, then 800 ms) only on a
//! connect failure or a 5xx answer. A timeout or a 4xx is final: the relay
//! may have acted on a slow request, and a 4xx will not change. Connecting
//! gives up after [`CONNECT_TIMEOUT`], well inside an attempt, so a relay
//! that cannot be reached (packets dropped) is a connect failure, tried again,
//! not a final timeout: nothing was sent.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::DeliveryError;
use crate::clock::UnixTime;
use crate::secret::{Secret, ct_eq};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "portcullis-signature";

/// How long a connection to a relay may take (TCP and TLS set-up).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How hard to try.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    /// Bounds each attempt (connect, send, and read the status); longer than
    /// [`CONNECT_TIMEOUT`], or a connection that cannot be made is a final
    /// timeout.
    pub timeout: Duration,
    /// Waits before the 2nd, 3rd, ... attempt.
    pub backoff: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            timeout: Duration::from_secs(5),
            backoff: vec![Duration::from_millis(200), Duration::from_millis(800)],
        }
    }
}

/// The header value for `body` signed at `t`.
pub fn signature_header(secret: &Secret, t: UnixTime, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret.expose(), t, body)))
}

fn mac(secret: &[u8], t: UnixTime, body: &[u8]) -> [u8; 32] {
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    crate::crypto::hmac_sha256(secret, &signed)
}

/// Checks a `Portcullis-Signature` header: well formed, `t` within
/// `tolerance` seconds of `now`, and one `v1` matching (constant time).
pub fn verify_signature(secret: &[u8], header: &str, body: &[u8], now: UnixTime, tolerance: i64) -> bool {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => {
                if let Ok(b) = hex::decode(v) {
                    sigs.push(b);
                }
            }
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > tolerance {
        return false;
    }
    let expected = mac(secret, t, body);
    // Check every entry so the time taken does not say which one matched.
    sigs.iter().fold(false, |ok, s| ct_eq(&expected, s) | ok)
}

type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One pooled client for every webhook (https through rustls on aws-lc-rs
/// with the webpki roots; plain http passes through).
fn client() -> Result<&'static WebhookClient, DeliveryError> {
    static CLIENT: OnceLock<Result<WebhookClient, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(CONNECT_TIMEOUT));
            let https = HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            Ok(Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_timer(TokioTimer::new())
                .build(https))
        })
        .as_ref()
        .map_err(|e| DeliveryError::Webhook(format!("TLS setup: {e}")))
}

/// What one attempt came to.
enum Attempt {
    Done,
    /// Worth another try (connect failure, 5xx).
    Retry(String),
    /// Final (timeout, 4xx, bad URL).
    Fail(String),
}

async fn attempt(
    client: &WebhookClient,
    url: &url::Url,
    header: &str,
    body: &[u8],
    timeout: Duration,
) -> Attempt {
    let req = http::Request::post(url.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        )
        .header(SIGNATURE_HEADER, header)
        .body(Full::new(Bytes::copy_from_slice(body)));
    let req = match req {
        Ok(r) => r,
        Err(e) => return Attempt::Fail(format!("bad request: {e}")),
    };
    let exchange = async {
        let res = client.request(req).await?;
        let status = res.status();
        // Read (and drop) a short answer so the connection can be reused;
        // a longer one is not read into memory (the connection then closes).
        let _ = http_body_util::Limited::new(res.into_body(), 64 * 1024)
            .collect()
            .await;
        Ok::<_, hyper_util::client::legacy::Error>(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Attempt::Fail(format!("no answer within {}s", timeout.as_secs_f32())),
        Ok(Err(e)) if e.is_connect() => Attempt::Retry(format!("connect failed: {e}")),
        Ok(Err(e)) => Attempt::Fail(format!("request failed: {e}")),
        Ok(Ok(s)) if s.is_success() => Attempt::Done,
        Ok(Ok(s)) if s.is_server_error() => Attempt::Retry(format!("answered {s}")),
        Ok(Ok(s)) => Attempt::Fail(format!("answered {s}")),
    }
}

/// POSTs `body` to `url`, signed at `now`, retrying per `policy`.
pub async fn send(
    url: &url::Url,
    secret: &Secret,
    body: &[u8],
    now: UnixTime,
    policy: &RetryPolicy,
) -> Result<(), DeliveryError> {
    let client = client()?;
    let header = signature_header(secret, now, body);
    let mut last = String::from("not attempted");
    for n in 0..policy.attempts.max(1) {
        if n > 0 {
            let wait = policy
                .backoff
                .get(usize::try_from(n - 1).unwrap_or(usize::MAX))
                .or(policy.backoff.last())
                .copied()
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        match attempt(client, url, &header, body, policy.timeout).await {
            Attempt::Done => return Ok(()),
            Attempt::Fail(why) => {
                return Err(DeliveryError::Webhook(format!("{}: {why}", redacted(url))));
            }
            Attempt::Retry(why) => {
                tracing::warn!(url = %redacted(url), attempt = n + 1, reason = %why, "webhook delivery failed; retrying");
                last = why;
            }
        }
    }
    Err(DeliveryError::Webhook(format!(
        "{}: {last} (after {} attempts)",
        redacted(url),
        policy.attempts.max(1)
    )))
}

/// The URL's scheme, host and port only, for logs: credentials, path and
/// query may all hold a relay's token (`/services/T0/B0/SECRET`).
fn redacted(url: &url::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn header_format_and_verification() {
        let secret = Secret::new("whsec-0123456789");
        let body = br#"{"kind":"sms"}"#;
        let h = signature_header(&secret, 1_700_000_000, body);
        let (t, v1) = h.split_once(',').unwrap();
        assert_eq!(t, "t=1700000000");
        let hexsig = v1.strip_prefix("v1=").unwrap();
        assert_eq!(hexsig.len(), 64);
        // Independently: HMAC-SHA256(secret, "1700000000." + body).
        let mut signed = b"1700000000.".to_vec();
        signed.extend_from_slice(body);
        assert_eq!(
            hexsig,
            hex::encode(crate::crypto::hmac_sha256(b"whsec-0123456789", &signed))
        );
        let key = secret.expose();
        assert!(verify_signature(key, &h, body, 1_700_000_100, 300));
        assert!(!verify_signature(key, &h, body, 1_700_000_400, 300), "stale");
        assert!(!verify_signature(
            key,
            &h,
            br#"{"kind":"call"}"#,
            1_700_000_000,
            300
        ));
        assert!(!verify_signature(b"other", &h, body, 1_700_000_000, 300));
        assert!(!verify_signature(key, "v1=00", body, 1_700_000_000, 300));
        assert!(!verify_signature(key, "t=1700000000", body, 1_700_000_000, 300));
        // Rotation: any matching v1 entry is enough.
        let two = format!("t=1700000000,v1={},{}", "00".repeat(32), v1);
        assert!(verify_signature(key, &two, body, 1_700_000_000, 300));
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            timeout: Duration::from_millis(500),
            backoff: vec![Duration::from_millis(10), Duration::from_millis(20)],
        }
    }

    /// A tiny server answering each request with the next status of `statuses`
    /// (the last one repeats), counting requests and checking the signature.
    async fn server(statuses: Vec<u16>, secret: &'static [u8]) -> (url::Url, Arc<AtomicU32>) {
        let count = Arc::new(AtomicU32::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let c = c.clone();
                let statuses = statuses.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let c = c.clone();
                        let statuses = statuses.clone();
                        async move {
                            let sig = req.headers()[SIGNATURE_HEADER].to_str().unwrap().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let ok = verify_signature(secret, &sig, &body, 1_700_000_000, 300);
                            let n = c.fetch_add(1, Ordering::SeqCst) as usize;
                            let status = if ok {
                                statuses[n.min(statuses.len() - 1)]
                            } else {
                                401
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}/hook").parse().unwrap(), count)
    }

    /// A relay whose address drops connection attempts (here: a listener
    /// whose accept queue is full) is tried again after the connect timeout,
    /// not given up on as a final timeout.
    #[tokio::test]
    async fn an_unreachable_relay_is_tried_again() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        // Fill the accept queue: then the kernel drops new connection attempts.
        let mut queued = Vec::new();
        loop {
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(300), connect).await {
                Ok(stream) => queued.push(stream.unwrap()),
                Err(_) => break,
            }
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        let policy = RetryPolicy {
            attempts: 2,
            timeout: CONNECT_TIMEOUT + Duration::from_secs(1),
            backoff: vec![Duration::from_millis(10)],
        };
        let url: url::Url = format!("http://{addr}/hook").parse().unwrap();
        let err = send(&url, &Secret::new("s3cret"), b"{}", 1_700_000_000, &policy)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("connect failed") && err.contains("after 2 attempts"),
            "{err}"
        );
        drop(listener);
    }

    #[tokio::test]
    async fn retries_5xx_then_succeeds() {
        let (url, count) = server(vec![503, 502, 204], b"s3cret").await;
        send(&url, &Secret::new("s3cret"), b"{}", 1_700_000_000, &fast())
            .await
            .unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_the_attempts_with_a_clear_error() {
        let (url, count) = server(vec![500], b"s3cret").await;
        let err = send(&url, &Secret::new("s3cret"), b"{}", 1_700_000_000, &fast())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(count.load(Ordering::SeqCst), 3);
        assert!(err.contains("500") && err.contains("after 3 attempts"), "{err}");
    }

    #[tokio::test]
    async fn a_4xx_is_final() {
        let (url, count) = server(vec![400], b"s3cret").await;
        assert!(
            send(&url, &Secret::new("s3cret"), b"{}", 1_700_000_000, &fast())
                .await
                .is_err()
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // A wrong secret is refused by the relay (401), not retried.
        let (url, count) = server(vec![204], b"s3cret").await;
        assert!(
            send(&url, &Secret::new("wrong"), b"{}", 1_700_000_000, &fast())
                .await
                .is_err()
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connect_failures_are_retried_then_reported() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url: url::Url = format!("http://127.0.0.1:{port}/hook?token=x").parse().unwrap();
        let started = std::time::Instant::now();
        let err = send(&url, &Secret::new("s"), b"{}", 0, &fast())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("connect failed") && err.contains("after 3 attempts"),
            "{err}"
        );
        assert!(!err.contains("token=x"), "the query is not logged: {err}");
        assert!(
            started.elapsed() >= Duration::from_millis(30),
            "backoff was waited"
        );
    }
}
