//! The OpenAPI 3 document of both JSON APIs: the management API on the admin
//! listener and the authentication and self-service API under the portal
//! prefix on the main listener. Served at `/openapi.json` (no token needed).
//!
//! The document is `openapi.json` beside this file, written for the default
//! prefix `/_portcullis`; it is served with the configured prefix. Tests keep
//! it true: its paths equal the route tables the routers are built from
//! (`admin::ROUTES`, `portal::api::ROUTES`, `portal::me::ROUTES`), both ways;
//! every documented path answers on the real routers with exactly the
//! documented methods; and real answers validate against its schemas. The
//! portal's HTML pages are not in it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use crate::state::AppState;

/// The document as written (default prefix).
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The prefix the document is written with.
pub const DOCUMENT_PREFIX: &str = "/_portcullis";

/// The document for a gateway whose portal prefix is `prefix`.
pub fn document(prefix: &str) -> String {
    if prefix == DOCUMENT_PREFIX {
        return DOCUMENT.to_owned();
    }
    DOCUMENT.replace(&format!("\"{DOCUMENT_PREFIX}/"), &format!("\"{prefix}/"))
}

/// `GET /openapi.json`.
pub async fn serve(State(st): State<Arc<AppState>>) -> Response {
    let mut res = document(&st.config.portal.prefix).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}
