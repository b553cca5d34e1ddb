//! Helpers of the out-of-band tests.

use std::time::Duration;

use serde_json::Value;

use crate::support::{TestGateway, set_cookie};

/// The real current time: webhook signatures are checked against it.
#[allow(clippy::disallowed_methods)]
pub fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A gateway with `extra` TOML on a manual clock standing at the real time.
pub async fn gateway(extra: &str) -> TestGateway {
    TestGateway::builder()
        .toml(extra)
        .clock(portcullis::clock::ManualClock::new(real_now()))
        .start()
        .await
}

/// An answer: status, headers, JSON body, and the session cookie it set.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub session: Option<String>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
    }
}

/// POSTs JSON to the main listener, with an optional cookie header.
pub async fn post(gw: &TestGateway, path: &str, body: Value, cookie: Option<&str>) -> Answer {
    let mut req = gw
        .client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(body.to_string());
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send().await.unwrap();
    let session = set_cookie(&res, "portcullis_session").map(|(v, _)| v);
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
        session,
    }
}

/// Starts the password step of the authn API.
pub async fn authn(gw: &TestGateway, username: &str, password: Option<&str>) -> Answer {
    let mut body = serde_json::json!({ "username": username });
    if let Some(p) = password {
        body["password"] = p.into();
    }
    post(gw, "/_portcullis/api/v1/authn", body, None).await
}

/// Messages the `file` delivery wrote so far.
pub fn messages(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until `f` gives `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of the hidden field `name` in a page (the first one).
pub fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in:\n{html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].replace("&amp;", "&")
}

/// The digits of the first run of `n` digits in `text`.
pub fn code_in(text: &str, n: usize) -> String {
    let digits: Vec<char> = text.chars().collect();
    for i in 0..digits.len() {
        let run: String = digits[i..].iter().take_while(|c| c.is_ascii_digit()).collect();
        if run.len() == n {
            return run;
        }
    }
    panic!("no {n}-digit code in {text:?}")
}
