//! `GET {prefix}/enroll`: which enrollment page a user gets. Above the
//! factor pages (`mfa` for authenticator apps, `oob` for codes and push,
//! `webauthn` for keys), so none of them imports another to dispatch.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};

use super::challenge::{self, may_enroll, session, to_login, unavailable_page};
use super::mfa::MfaQuery;
use super::{Ctx, enc, html, oob, redirect, see_other, webauthn};
use crate::factors::{self, FactorType};
use crate::state::AppState;

/// `GET {prefix}/enroll`: start (or resume) a TOTP enrollment.
pub async fn enroll(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<MfaQuery>,
) -> Response {
    let rd = redirect::safe_target(
        q.rd.as_deref(),
        &ctx.0.host,
        &st.config.portal.allowed_redirect_hosts,
    );
    let Some(s) = session(&st, &headers) else {
        return to_login(&st, &rd);
    };
    match may_enroll(&st, &s).await {
        Ok(true) => {}
        Ok(false) => {
            let back = format!("{}/enroll?rd={}", st.config.portal.prefix, enc(&rd));
            return see_other(&format!(
                "{}/mfa?fresh=1&rd={}",
                st.config.portal.prefix,
                enc(&back)
            ));
        }
        Err(()) => return unavailable_page(&st),
    }
    let oob_types: Vec<&str> = FactorType::enabled(&st.config.factors)
        .map(FactorType::as_str)
        .filter(|t| challenge::out_of_band(t) || factors::kind_of(t).is_some_and(|k| k.ceremony()))
        .collect();
    match q.factor_type.as_deref() {
        Some(factors::webauthn::WEBAUTHN_TYPE)
            if factors::type_enabled(&st, factors::webauthn::WEBAUTHN_TYPE) =>
        {
            return webauthn::enroll_page(&st, &headers, &s, &rd).await;
        }
        Some(t) if oob_types.contains(&t) => {
            return oob::enroll_page(&st, &ctx, &headers, &s, &rd, t).await;
        }
        None if !oob_types.is_empty() => {
            return html(StatusCode::OK, oob::chooser_page(&st, &rd));
        }
        _ => {}
    }
    super::mfa::enroll_totp(&st, &headers, &s, &rd).await
}
