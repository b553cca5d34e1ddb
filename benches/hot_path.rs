//! Micro-benchmarks of the per-request hot path (`cargo bench --bench hot_path`).
//!
//! Each group measures one piece the gateway runs for every proxied request:
//! session cookie verification and re-issue, the policy decision over 50 rules,
//! path normalization and the proxy's header rewriting; and, per sign-in, the
//! TOTP check. The issue's target for session verification is under 2
//! microseconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use portcullis::config::{
    IdentityHeaders, PolicyKind, RuleConfig, SameSite, SessionConfig, TotpAlgorithm, TotpConfig,
};
use portcullis::factors::totp;
use portcullis::identity::{Principal, PrincipalInfo};
use portcullis::policy::normalize::normalize;
use portcullis::policy::{Policy, RequestFacts, decide};
use portcullis::proxy::headers;
use portcullis::secret::Secret;
use portcullis::session::revocation::RevocationView;
use portcullis::session::{SessionClaims, SessionCodec};
use portcullis::store::SharedStore;
use portcullis::store::memory::MemoryStore;

const NOW: i64 = 1_800_000_000;

fn session_config() -> SessionConfig {
    SessionConfig {
        cookie_name: "portcullis_session".into(),
        secrets: vec![Secret::new(b"0123456789abcdef0123456789abcdef-bench".to_vec())],
        lifetime: Duration::from_secs(8 * 3600),
        idle_timeout: Duration::from_secs(1800),
        revocation_check: Duration::from_secs(3600),
        domain: None,
        secure: true,
        same_site: SameSite::Lax,
    }
}

/// A two-factor session as the portal issues it, signed in ten minutes ago.
fn claims() -> SessionClaims {
    let mut c = SessionClaims::new(
        "00u1a2b3c4d5e6f7g8h",
        2,
        vec!["pwd".into(), "totp".into()],
        NOW - 600,
        Some(NOW - 590),
        3,
        NOW - 30,
    );
    c.last = NOW - 30;
    c
}

/// A revocation view holding what a busy replica knows: a thousand logged-out
/// sessions and a hundred users who logged out everywhere.
fn revocation_view() -> RevocationView {
    let view = RevocationView::new(Duration::from_secs(3600));
    let store: SharedStore = Arc::new(MemoryStore::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(view.refresh(&store, NOW, Instant::now())).unwrap();
    for i in 0..1000 {
        view.note_revoked(&format!("revoked-session-{i:04}"), NOW + 3600);
    }
    for i in 0..100 {
        view.note_epoch(&format!("00uuser{i:03}"), 2);
    }
    view
}

/// The `Cookie` header of a browser that also carries analytics and app cookies.
fn cookie_header(session: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "_ga=GA1.2.1234567890.1790000000; theme=dark; portcullis_session={session}; \
         portcullis_csrf=v1.abcdefghijklmnopqrstuvwxyz012345.AbCdEf; app_sid=s%3Aabcdef0123456789"
    ))
    .unwrap()
}

fn session(c: &mut Criterion) {
    let codec = SessionCodec::new(&session_config());
    let view = revocation_view();
    let claims = claims();
    let value = codec.encode(&claims);
    let mut request = HeaderMap::new();
    request.insert(http::header::COOKIE, cookie_header(&value));

    let mut g = c.benchmark_group("session");
    g.bench_function("decode", |b| {
        b.iter(|| codec.decode(black_box(&value), black_box(NOW)).unwrap())
    });
    g.bench_function("verify (find + decode + revocation check)", |b| {
        b.iter(|| {
            let v = codec.find(black_box(&request)).unwrap();
            let claims = codec.decode(v, NOW).unwrap();
            view.check(&claims, Instant::now()).unwrap();
            claims
        })
    });
    g.bench_function("verify, cached (find + verify + revocation check)", |b| {
        b.iter(|| {
            let v = codec.find(black_box(&request)).unwrap();
            let claims = codec.verify(v, NOW).unwrap();
            view.check(&claims, Instant::now()).unwrap();
            claims
        })
    });
    g.bench_function("revocation check", |b| {
        let now = Instant::now();
        b.iter(|| view.check(black_box(&claims), now).unwrap())
    });
    g.bench_function("encode", |b| b.iter(|| codec.encode(black_box(&claims))));
    g.bench_function("re-issue (set_cookie)", |b| {
        b.iter(|| {
            let mut c = black_box(&claims).clone();
            c.last = NOW;
            c.iat = NOW;
            codec.set_cookie(&c, NOW)
        })
    });
    g.finish();
}

/// Fifty rules of the kinds operators write (host-specific apps, anchored
/// path prefixes, method and network restrictions); the request matches only
/// the last one.
fn fifty_rules() -> Vec<RuleConfig> {
    let re = |s: &str| Some(regex::Regex::new(s).unwrap());
    let mut rules = Vec::with_capacity(50);
    for i in 0..49 {
        let rule = match i % 4 {
            // A path prefix on any host.
            0 => RuleConfig {
                hosts: vec![],
                path: re(&format!("^/service{i}/")),
                methods: vec![],
                networks: vec![],
                policy: PolicyKind::Bypass,
                groups: vec![],
                max_age: None,
            },
            // Another application's host.
            1 => RuleConfig {
                hosts: vec![format!("app{i}.example.com"), format!("app{i}.internal")],
                path: re("^/"),
                methods: vec![],
                networks: vec![],
                policy: PolicyKind::TwoFactor,
                groups: vec!["ops".into()],
                max_age: None,
            },
            // A write API restricted by method and network.
            2 => RuleConfig {
                hosts: vec![],
                path: re(&format!("^/api/v{i}/(users|groups|settings)(/|$)")),
                methods: vec![Method::POST, Method::PUT, Method::DELETE],
                networks: vec!["10.0.0.0/8".parse().unwrap(), "192.168.0.0/16".parse().unwrap()],
                policy: PolicyKind::TwoFactor,
                groups: vec![],
                max_age: Some(Duration::from_secs(900)),
            },
            // Static assets by extension under a prefix.
            _ => RuleConfig {
                hosts: vec![],
                path: re(&format!(r"^/assets{i}/.*\.(css|js|png|svg|woff2)$")),
                methods: vec![Method::GET, Method::HEAD],
                networks: vec![],
                policy: PolicyKind::Bypass,
                groups: vec![],
                max_age: None,
            },
        };
        rules.push(rule);
    }
    rules.push(RuleConfig {
        hosts: vec!["app.example.com".into()],
        path: re("^/dashboard(/|$)"),
        methods: vec![Method::GET, Method::HEAD, Method::POST],
        networks: vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
        policy: PolicyKind::TwoFactor,
        groups: vec!["staff".into(), "admins".into()],
        max_age: None,
    });
    rules
}

fn policy(c: &mut Criterion) {
    let policy = Policy::new(fifty_rules(), PolicyKind::Deny);
    let method = Method::GET;
    let facts = RequestFacts {
        host: "app.example.com",
        path: "/dashboard/reports/2026/summary",
        method: &method,
        client_addr: "10.1.2.3".parse::<IpAddr>().unwrap(),
    };
    let claims = claims();
    let groups = vec!["staff".to_owned()];
    {
        let r = policy.requirement(&facts);
        assert_eq!(r.rule, Some(49));
        assert_eq!(
            decide(&r, Some((&claims, &groups)), NOW),
            portcullis::policy::Decision::Allow
        );
    }
    let mut g = c.benchmark_group("policy");
    g.bench_function("requirement + decide (50 rules, last matches)", |b| {
        b.iter(|| {
            let r = policy.requirement(black_box(&facts));
            decide(&r, Some((&claims, &groups)), NOW)
        })
    });
    // What inline mode runs: every reading of the path, the strictest wins.
    g.bench_function("decide_request (50 rules, clean path: one reading)", |b| {
        b.iter(|| policy.decide_request(black_box(&facts), Some((&claims, &groups)), NOW))
    });
    let with_params = RequestFacts {
        path: "/dashboard;jsessionid=0123ABCD/reports/2026/summary",
        ..facts
    };
    g.bench_function("decide_request (50 rules, ;jsessionid: two readings)", |b| {
        b.iter(|| policy.decide_request(black_box(&with_params), Some((&claims, &groups)), NOW))
    });
    g.finish();
}

fn normalization(c: &mut Criterion) {
    let clean = "/dashboard/reports/2026/summary.html";
    let dirty = "/dashboard//reports/./2026/../2026/%7Euser/summary%2Ehtml";
    assert_eq!(
        normalize(dirty).unwrap(),
        "/dashboard/reports/2026/~user/summary.html"
    );
    let mut g = c.benchmark_group("normalize");
    g.bench_function("clean path", |b| b.iter(|| normalize(black_box(clean))));
    g.bench_function("dirty path", |b| b.iter(|| normalize(black_box(dirty))));
    g.finish();
}

fn identity() -> IdentityHeaders {
    IdentityHeaders {
        user: HeaderName::from_static("remote-user"),
        groups: HeaderName::from_static("remote-groups"),
        email: HeaderName::from_static("remote-email"),
        name: HeaderName::from_static("remote-name"),
    }
}

/// What Chromium sends for a page load, plus the gateway's cookies.
fn browser_request(session: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |k: &'static str, v: &str| {
        h.append(HeaderName::from_static(k), HeaderValue::from_str(v).unwrap());
    };
    add("host", "app.example.com");
    add("connection", "keep-alive");
    add("cache-control", "max-age=0");
    add(
        "sec-ch-ua",
        "\"Chromium\";v=\"130\", \"Google Chrome\";v=\"130\", \"Not?A_Brand\";v=\"99\"",
    );
    add("sec-ch-ua-mobile", "?0");
    add("sec-ch-ua-platform", "\"Linux\"");
    add("upgrade-insecure-requests", "1");
    add(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    );
    add(
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8",
    );
    add("sec-fetch-site", "same-origin");
    add("sec-fetch-mode", "navigate");
    add("sec-fetch-user", "?1");
    add("sec-fetch-dest", "document");
    add("referer", "https://app.example.com/dashboard/");
    add("accept-encoding", "gzip, deflate, br, zstd");
    add("accept-language", "en-GB,en;q=0.9,de;q=0.8");
    h.append(http::header::COOKIE, cookie_header(session));
    h
}

fn header_rewriting(c: &mut Criterion) {
    let codec = SessionCodec::new(&session_config());
    let request = browser_request(&codec.encode(&claims()));
    let ids = identity();
    let gateway_cookies = vec!["portcullis_session".to_owned(), "portcullis_csrf".to_owned()];
    let principal = Principal::new(PrincipalInfo {
        user_id: "00u1a2b3c4d5e6f7g8h".into(),
        username: "alice".into(),
        display_name: Some("Alice Example".into()),
        email: Some("alice@example.com".into()),
        groups: vec!["staff".into(), "admins".into()],
        level: 2,
        session_id: "sid".into(),
    });
    let authority = HeaderValue::from_static("app.example.com");
    let client: IpAddr = "192.0.2.10".parse().unwrap();

    // Each case starts from a fresh copy of the request's headers, as the proxy
    // does; the first case is that copy alone, to subtract.
    let mut g = c.benchmark_group("headers");
    g.bench_function("copy of a browser request's headers (baseline)", |b| {
        b.iter(|| black_box(&request).clone())
    });
    g.bench_function("copy + rewrite (all rules)", |b| {
        b.iter(|| {
            let mut h = black_box(&request).clone();
            headers::strip_hop_by_hop(&mut h);
            headers::strip_reserved_inbound(&mut h, &ids);
            headers::strip_gateway_cookies(&mut h, &gateway_cookies);
            headers::set_forwarding(&mut h, client, "https", Some(&authority));
            headers::set_identity(&mut h, &ids, &principal);
            h
        })
    });
    g.bench_function("copy + strip_hop_by_hop", |b| {
        b.iter(|| {
            let mut h = black_box(&request).clone();
            headers::strip_hop_by_hop(&mut h);
            h
        })
    });
    g.bench_function("copy + strip_reserved_inbound", |b| {
        b.iter(|| {
            let mut h = black_box(&request).clone();
            headers::strip_reserved_inbound(&mut h, &ids);
            h
        })
    });
    g.bench_function("copy + strip_gateway_cookies", |b| {
        b.iter(|| {
            let mut h = black_box(&request).clone();
            headers::strip_gateway_cookies(&mut h, &gateway_cookies);
            h
        })
    });
    g.bench_function("copy + set_forwarding", |b| {
        b.iter(|| {
            let mut h = black_box(&request).clone();
            headers::set_forwarding(&mut h, client, "https", Some(&authority));
            h
        })
    });
    g.bench_function("copy + set_identity", |b| {
        b.iter(|| {
            let mut h = black_box(&request).clone();
            headers::set_identity(&mut h, &ids, &principal);
            h
        })
    });
    g.finish();
}

fn totp_verify(c: &mut Criterion) {
    let cfg = TotpConfig {
        enabled: true,
        issuer: "Portcullis".into(),
        digits: 6,
        period: 30,
        algorithm: TotpAlgorithm::Sha1,
        skew: 1,
    };
    let secret = b"12345678901234567890".to_vec();
    let good = totp::code_at(&cfg, &secret, NOW);
    // A code no step in the window produces: every candidate is computed.
    let bad = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| totp::check(&cfg, &secret, c, NOW).is_none())
        .unwrap();
    assert!(totp::check(&cfg, &secret, &good, NOW).is_some());
    let mut g = c.benchmark_group("totp");
    g.bench_function("check (right code)", |b| {
        b.iter(|| totp::check(&cfg, &secret, black_box(&good), NOW))
    });
    g.bench_function("check (wrong code, whole window)", |b| {
        b.iter(|| totp::check(&cfg, &secret, black_box(&bad), NOW))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = session, policy, normalization, header_rewriting, totp_verify
}
criterion_main!(benches);
