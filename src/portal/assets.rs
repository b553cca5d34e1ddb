//! Small assets the portal serves itself, so its pages need no inline script
//! or style (the Content-Security-Policy allows neither): the recovery codes'
//! copy and download script and the branding stylesheet.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use crate::state::AppState;

/// Copies the recovery codes to the clipboard and downloads them as a text
/// file. Without JavaScript the page still shows the codes as text and its
/// download link still works (a `data:` URL); the copy button stays hidden.
pub const CODES_SCRIPT: &str = r#"// Portcullis: copy or download the recovery codes.
(function () {
  "use strict";
  var list = document.getElementById("recovery-codes");
  var copy = document.getElementById("copy-codes");
  var download = document.getElementById("download-codes");
  if (!list) { return; }
  function text() {
    var codes = [];
    var items = list.getElementsByTagName("code");
    for (var i = 0; i < items.length; i++) { codes.push(items[i].textContent); }
    return codes.join("\n") + "\n";
  }
  var status = document.getElementById("codes-status");
  function say(msg) { if (status && msg) { status.textContent = msg; } }
  if (copy && navigator.clipboard && window.isSecureContext) {
    copy.classList.remove("hidden");
    copy.addEventListener("click", function () {
      navigator.clipboard.writeText(text()).then(function () {
        say(copy.getAttribute("data-done"));
      }, function () { say(copy.getAttribute("data-failed")); });
    });
  }
  if (download && window.Blob && window.URL && URL.createObjectURL) {
    download.addEventListener("click", function (ev) {
      ev.preventDefault();
      var url = URL.createObjectURL(new Blob([text()], { type: "text/plain;charset=utf-8" }));
      var a = document.createElement("a");
      a.href = url;
      a.download = download.getAttribute("download") || "recovery-codes.txt";
      document.body.appendChild(a);
      a.click();
      document.body.removeChild(a);
      setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
    });
  }
})();
"#;

/// `GET {prefix}/static/codes.js`.
pub async fn codes_script() -> Response {
    let mut res = CODES_SCRIPT.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    res
}

/// `GET {prefix}/static/brand.css`: `portal.accent_color` as a CSS custom
/// property the portal's stylesheet uses (a stylesheet, not a `style`
/// attribute, which the CSP would block).
pub async fn brand_css(State(st): State<Arc<AppState>>) -> Response {
    let css = crate::pages::Branding::of(&st.config.portal).css();
    let mut res = css.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    res
}
