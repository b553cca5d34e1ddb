//! Path normalization on the wire: raw request lines (a client library would
//! normalize them itself) must match rules, and be forwarded, in one form.

use crate::support::{ALICE, TestGateway, raw_get};

#[tokio::test]
async fn dot_segments_and_double_slashes_cannot_reach_around_rules() {
    let gw = TestGateway::start("").await;
    let login = gw.login(ALICE).await;
    let cookie = format!("Cookie: {}\r\n", login.session_cookie());
    for target in [
        "/public/../private",
        "/public/%2e%2e/private",
        "/public/%2E%2E/private",
        "/public/./%2e./private",
        "/public/x/../../private",
        "//private",
        "/public/..//private",
        "/%70ublic/../private",
    ] {
        let res = raw_get(gw.main, target, "").await;
        assert_eq!(
            res.status,
            401,
            "{target} must be challenged, not bypassed: {}",
            res.text()
        );

        let res = raw_get(gw.main, &format!("{target}?q=1"), &cookie).await;
        assert_eq!(res.status, 200, "{target}: {}", res.text());
        let echo = res.echo();
        assert_eq!(echo.path(), "/private", "{target}");
        assert_eq!(echo.0["query"], "q=1", "{target}");
        assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
    }
    // Spellings of a bypassed path are bypassed and forwarded in normal form.
    for target in ["//public/x", "/%70ublic/x", "/public/./x", "/other/../public/x"] {
        let res = raw_get(gw.main, target, "").await;
        assert_eq!(res.status, 200, "{target}: {}", res.text());
        assert_eq!(res.echo().path(), "/public/x", "{target}");
    }
}

#[tokio::test]
async fn ambiguous_paths_are_refused() {
    let gw = TestGateway::start("").await;
    let login = gw.login(ALICE).await;
    let cookie = format!("Cookie: {}\r\n", login.session_cookie());
    for target in [
        "/public/%2Fsecret",
        "/public/%2fsecret",
        "/public/..%2Fprivate",
        "/public/%5Csecret",
        "/public/%5c..%5cprivate",
        "/public/..;/private",
        "/public/..;x/private",
        "/public/.;x/private",
        "/public/%2e%2e;/private",
        "/public/%00",
        "/public/a\\..\\private",
        "/public/%zz",
    ] {
        for extra in ["", cookie.as_str()] {
            let res = raw_get(gw.main, target, extra).await;
            assert_eq!(
                res.status,
                400,
                "{target} (cookie: {}): {}",
                !extra.is_empty(),
                res.text()
            );
        }
    }
}
