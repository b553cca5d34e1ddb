//! The enforcement layer: [`MfaLayer`] wraps any service (the proxy, or an
//! axum app) and lets a request through only with a session that satisfies
//! the policy.
//!
//! For each request it normalizes the path (refusing the ambiguous ones),
//! strips client-supplied identity headers, finds the matching rule, checks
//! the session cookie (signature, lifetime, idle time, revocation) and
//! decides. Allowed requests carry a [`Principal`] in their extensions;
//! browsers without a good enough session are redirected to the portal, API
//! clients get 401 with an Okta-style error. It fails closed: when the
//! revocation view is stale (store unreachable) protected routes answer 503.
//! The outcome travels up in the response's [`AccessInfo`] extension for the
//! access log.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::response::IntoResponse;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};

pub mod denied;

use crate::clock::SharedClock;
use crate::config::IdentityHeaders;
use crate::context::{self, ConnInfo, RequestContext};
use crate::error::{ApiError, ErrorCode};
use crate::identity::{Principal, PrincipalInfo};
use crate::policy::normalize::{NormalTarget, TargetError, normalize_target};
use crate::policy::{Decision, Policy, Readings, RequestFacts};
use crate::session::revocation::RevocationView;
use crate::session::{SessionClaims, SessionCodec, SessionReject};
use crate::users::{SharedUsers, User};

/// What the access log should say about a request; set on every response.
#[derive(Debug, Clone, Default)]
pub struct AccessInfo {
    /// The decision label (`allow`, `bypass`, `challenge`, `deny`, `portal`, ...).
    pub decision: &'static str,
    /// The signed-in user, if any.
    pub user: Option<LoggedUser>,
}

/// Whom an access line names: a name, or a signed-in user as the session
/// check found it (shared, so a proxied request copies no name for its line).
/// Its `Debug` shows the name only (a user holds a password hash).
#[derive(Clone)]
pub enum LoggedUser {
    Name(String),
    User(Arc<User>),
}

impl LoggedUser {
    /// The login name the line shows.
    pub fn name(&self) -> &str {
        match self {
            Self::Name(name) => name,
            Self::User(user) => &user.username,
        }
    }
}

impl std::fmt::Debug for LoggedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LoggedUser").field(&self.name()).finish()
    }
}

impl From<String> for LoggedUser {
    fn from(name: String) -> Self {
        Self::Name(name)
    }
}

/// A verified session and its user.
#[derive(Debug, Clone)]
pub struct ActiveSession {
    /// Shared with this thread's cache of verified cookies.
    pub claims: Arc<SessionClaims>,
    pub user: Arc<User>,
}

/// The result of looking at a request's session cookie.
#[derive(Debug, Clone)]
pub enum SessionState {
    /// No cookie.
    None,
    /// A cookie that is no longer (or never was) valid; it should be cleared.
    Invalid(SessionReject),
    /// The revocation view is too stale to decide: fail closed.
    Unavailable,
    /// A valid session.
    Valid(ActiveSession),
}

/// The store could not be asked recently enough to trust a session (503).
#[derive(Debug, Clone, Copy)]
pub struct StoreUnavailable;

/// Everything the enforcement decision needs; shared by the layer, the
/// portal and the forward-auth endpoints (each serving thread has its own
/// copy: [`Enforcer::for_thread`]).
#[derive(Debug, Clone)]
pub struct Enforcer {
    pub policy: Policy,
    pub sessions: SessionCodec,
    pub revocations: Arc<RevocationView>,
    pub users: SharedUsers,
    pub clock: SharedClock,
    /// The portal prefix (`/_portcullis`).
    pub prefix: String,
    pub identity: IdentityHeaders,
    /// Trusted proxies, for deriving the client address when no gateway
    /// context is present (the layer embedded in another app).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The CSRF key and cookie settings for the denied page's sign-out
    /// button (none when the layer is embedded without a portal).
    pub sign_out: Option<denied::SignOut>,
}

impl Enforcer {
    /// A copy for one serving thread: the same users, revocations, clock,
    /// keys and per-rule counters (all shared), with the rules' regexes
    /// cloned. A regex hands its scratch space without locking to the first
    /// thread that used it only; every other thread takes it from a locked
    /// stack and gives it back on each match, so on a thread of its own each
    /// rule's regex is that thread's first.
    pub fn for_thread(&self) -> Self {
        self.clone()
    }

    /// Reads and verifies the session cookie in `headers`: its signature
    /// (remembered per thread, see [`SessionCodec::verify`]), then on every
    /// request its lifetime and idle time, revocation, the user's epoch, the
    /// directory's freshness and the user.
    pub fn session(&self, headers: &http::HeaderMap) -> SessionState {
        self.session_at(headers, self.clock.now())
    }

    /// [`Enforcer::session`] at `now` (a request's clock, read once).
    fn session_at(&self, headers: &http::HeaderMap, now: crate::clock::UnixTime) -> SessionState {
        let Some(value) = self.sessions.find_bytes(headers) else {
            return SessionState::None;
        };
        let claims = match self.sessions.verify_bytes(value, now) {
            Ok(c) => c,
            Err(e) => return SessionState::Invalid(e),
        };
        match self.revocations.check(&claims, Instant::now()) {
            Ok(()) => {}
            Err(SessionReject::Unavailable) => return SessionState::Unavailable,
            Err(e) => return SessionState::Invalid(e),
        }
        let user = {
            let users = self.users.read().unwrap_or_else(|p| p.into_inner());
            // A directory user's groups and state are only as good as the
            // last read of the directory: past `refresh_interval`, fail closed.
            if users.directory_stale() && users.is_directory(&claims.uid) {
                return SessionState::Unavailable;
            }
            // Before the directory's first read (start-up while it is down)
            // an unknown id may be a directory user's: fail closed rather
            // than end the session.
            if users.directory_pending() && users.get(&claims.uid).is_none() {
                return SessionState::Unavailable;
            }
            users.get(&claims.uid).cloned()
        };
        match user {
            Some(user) => SessionState::Valid(ActiveSession { claims, user }),
            None => SessionState::Invalid(SessionReject::Revoked),
        }
    }

    /// The request context: the gateway's, or one derived here when the layer
    /// runs inside another app (from axum's `ConnectInfo` or our `ConnInfo`).
    pub fn context(&self, req: &Request<Body>) -> Option<RequestContext> {
        if let Some(ctx) = req.extensions().get::<RequestContext>() {
            return Some(ctx.clone());
        }
        let conn = req.extensions().get::<ConnInfo>().copied().or_else(|| {
            req.extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| ConnInfo {
                    peer: c.0,
                    tls: false,
                })
        })?;
        let (authority, host) = context::authority(req.uri(), req.headers())?;
        Some(RequestContext {
            peer_addr: conn.peer,
            client_addr: context::client_addr(conn.peer.ip(), req.headers(), &self.trusted_proxies),
            scheme: context::scheme(&conn, req.headers(), &self.trusted_proxies),
            authority,
            host,
            upstream: None,
            request_id: context::RequestId::none(),
        })
    }

    /// The one decision of inline mode and forward-auth: the rules under
    /// every reading of the path ([`Policy::evaluate`]), the session cookie in
    /// `headers` read only when some reading needs one, and the strictest
    /// outcome. `Err(StoreUnavailable)` when the revocation view is too stale to
    /// trust a session (fail closed: answer 503).
    ///
    /// Decided on as well, with every method: the other methods and the
    /// `Destination` path in `readings` ([`Readings::of`]: HEAD as GET, a
    /// POST's method overrides, a COPY's or MOVE's target, raw and
    /// normalized), and `sent`, the path as the client wrote it where that
    /// is what the app gets (forward-auth: the front proxy forwards it, not
    /// the normal form `facts.path`, and an app that neither decodes nor
    /// merges reads `/%70ublic/x` or `/api//public/x` literally).
    pub fn decide(
        &self,
        facts: &RequestFacts<'_>,
        readings: &Readings<'_>,
        sent: Option<&str>,
        headers: &http::HeaderMap,
        now: crate::clock::UnixTime,
    ) -> Result<(Decision, SessionState), StoreUnavailable> {
        let mut evaluation = self.policy.evaluate(facts);
        if readings.methods.is_empty()
            && readings.destination.is_none()
            && sent.is_none_or(|s| s == facts.path)
        {
            // The usual request: its own method and path only.
            return self.decide_on(evaluation, headers, now);
        }
        let (raw, normal) = readings
            .destination
            .as_ref()
            .map(|(r, n)| (*r, n.as_ref()))
            .unzip();
        let paths: [Option<&str>; 3] = [sent, raw, normal];
        for (m, method) in std::iter::once(facts.method).chain(&readings.methods).enumerate() {
            let facts = RequestFacts { method, ..*facts };
            if m > 0 {
                evaluation = evaluation.with(&self.policy.evaluate(&facts));
            }
            for (i, path) in paths.iter().enumerate() {
                if let Some(path) = *path
                    && path != facts.path
                    && !paths[..i].contains(&Some(path))
                {
                    evaluation = evaluation.with(&self.policy.evaluate(&RequestFacts { path, ..facts }));
                }
            }
        }
        self.decide_on(evaluation, headers, now)
    }

    fn decide_on(
        &self,
        evaluation: crate::policy::Evaluation<'_>,
        headers: &http::HeaderMap,
        now: crate::clock::UnixTime,
    ) -> Result<(Decision, SessionState), StoreUnavailable> {
        if !evaluation.needs_session() {
            let (decision, requirement) = evaluation.decide(None, now);
            self.policy.count(&requirement, decision);
            return Ok((decision, SessionState::None));
        }
        let state = self.session_at(headers, now);
        let (decision, requirement) = match &state {
            SessionState::Unavailable => return Err(StoreUnavailable),
            SessionState::Valid(s) => evaluation.decide(Some((&s.claims, &s.user.groups)), now),
            _ => match evaluation.decide(None, now) {
                // Without a usable session the answer is a sign-in, which needs
                // the store: while it is out of reach (the staleness that fails
                // sessions closed) that is 503 for everyone, not a challenge
                // that cannot be completed. A refusal needs no store.
                (Decision::Challenge { .. }, _) if !self.revocations.is_fresh(Instant::now()) => {
                    return Err(StoreUnavailable);
                }
                decided => decided,
            },
        };
        self.policy.count(&requirement, decision);
        Ok((decision, state))
    }

    /// The session cookie to send back with an allowed request: a re-issued
    /// one when the sliding idle timeout needs it, else `None`.
    pub fn refreshed_cookie(
        &self,
        session: &ActiveSession,
        now: crate::clock::UnixTime,
    ) -> Option<HeaderValue> {
        self.sessions.needs_refresh(&session.claims, now).then(|| {
            let mut c = SessionClaims::clone(&session.claims);
            c.last = now;
            c.iat = now;
            self.sessions.set_cookie(&c, now)
        })
    }

    /// The principal for a valid session: built once per session and user on
    /// each thread and then shared (see `PRINCIPALS`).
    pub fn principal(s: &ActiveSession) -> Principal {
        PRINCIPALS
            .try_with(|cache| {
                let mut cache = cache.try_borrow_mut().ok()?;
                if cache.is_empty() {
                    cache.resize_with(PRINCIPAL_SLOTS, || None);
                }
                // Fibonacci hashing of the claims' address: its top bits.
                let slot = Arc::as_ptr(&s.claims)
                    .addr()
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15_usize)
                    >> (usize::BITS - PRINCIPAL_SLOTS.trailing_zeros());
                let entry = cache.get_mut(slot)?;
                match entry {
                    Some((claims, user, p))
                        if Arc::ptr_eq(claims, &s.claims) && Arc::ptr_eq(user, &s.user) =>
                    {
                        Some(p.clone())
                    }
                    _ => {
                        let p = Self::build_principal(s);
                        *entry = Some((s.claims.clone(), s.user.clone(), p.clone()));
                        Some(p)
                    }
                }
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| Self::build_principal(s))
    }

    fn build_principal(s: &ActiveSession) -> Principal {
        Principal::new(PrincipalInfo {
            user_id: s.user.id.clone(),
            username: s.user.username.clone(),
            display_name: s.user.display_name.clone(),
            email: s.user.email.clone(),
            groups: s.user.groups.clone(),
            level: s.claims.lvl,
            session_id: s.claims.sid.clone(),
        })
    }

    /// Removes every client-supplied copy of the identity and forwarding
    /// headers, in any spelling (case, `_` for `-`).
    pub fn strip_identity(&self, headers: &mut http::HeaderMap) {
        crate::proxy::headers::strip_reserved_inbound(headers, &self.identity);
    }
}

/// A principal and the verified claims and user it was built from.
type PrincipalEntry = (Arc<SessionClaims>, Arc<User>, Principal);

/// Principals per thread ([`PRINCIPAL_SLOTS`], direct-mapped).
const PRINCIPAL_SLOTS: usize = 128;

thread_local! {
    /// The principals this thread built lately, with the verified claims and
    /// the user they were built from: a request whose session verified to the
    /// same shared claims (see [`SessionCodec::verify`]) for the same user
    /// (a changed user is a new `Arc` in the directory) gets the same
    /// principal, its identity header values included, instead of copies of
    /// the user's fields. Holding both `Arc`s keeps their addresses from being
    /// reused while an entry names them.
    static PRINCIPALS: std::cell::RefCell<Vec<Option<PrincipalEntry>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// True when the client is a browser (it accepts HTML).
pub fn is_browser(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// A small HTML page answer, styled from the portal at `prefix`.
pub fn html_status(status: StatusCode, prefix: &str, title: &str, message: &str) -> Response<Body> {
    html_status_body(status, crate::pages::message_page(prefix, title, message))
}

/// An HTML answer with the portal's security headers.
pub(crate) fn html_status_body(status: StatusCode, body: String) -> Response<Body> {
    let mut res = (status, body).into_response();
    crate::pages::security_headers(res.headers_mut());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

pub(crate) fn with_access(
    mut res: Response<Body>,
    decision: &'static str,
    user: Option<LoggedUser>,
) -> Response<Body> {
    res.extensions_mut().insert(AccessInfo { decision, user });
    res
}

/// A response and what its access line says, side by side (the gateway
/// takes them as they are; the tower service puts the second into the
/// response's extensions with [`with_access`]).
pub(crate) fn passed(
    res: Response<Body>,
    decision: &'static str,
    user: Option<LoggedUser>,
) -> (Response<Body>, AccessInfo) {
    (res, AccessInfo { decision, user })
}

/// Builds the [`Mfa`] service around an inner service.
#[derive(Debug, Clone)]
pub struct MfaLayer {
    enforcer: Arc<Enforcer>,
}

impl MfaLayer {
    /// A layer enforcing with `enforcer`.
    pub fn new(enforcer: Arc<Enforcer>) -> Self {
        Self { enforcer }
    }
}

impl<S> tower::Layer<S> for MfaLayer {
    type Service = Mfa<S>;
    fn layer(&self, inner: S) -> Mfa<S> {
        Mfa {
            enforcer: self.enforcer.clone(),
            inner,
        }
    }
}

/// The enforcement service.
#[derive(Debug, Clone)]
pub struct Mfa<S> {
    enforcer: Arc<Enforcer>,
    inner: S,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> tower::Service<Request<Body>> for Mfa<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        // Take the service that was driven to readiness, leave a clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let enforcer = self.enforcer.clone();
        let pass = move |mut req: Request<Body>, ctx: RequestContext, principal: Option<Principal>| {
            let mut inner = inner;
            // An embedded app reads the context and who signed in from the
            // extensions.
            req.extensions_mut().insert(ctx);
            if let Some(principal) = principal {
                req.extensions_mut().insert(principal);
            }
            async move { inner.call(req).await.unwrap_or_else(|never| match never {}) }
        };
        Box::pin(async move {
            let (res, info) = enforce(&enforcer, pass, req, None).await;
            Ok(with_access(res, info.decision, info.user))
        })
    }
}

impl Mfa<crate::proxy::Proxy> {
    /// Enforces and proxies `req`, as [`tower::Service::call`] does, inside
    /// the caller's future (the gateway's: no box per layer per request);
    /// what the access line says comes beside the response, not in its
    /// extensions.
    /// `req`'s path must be normalized already, `normal` the proof of it
    /// (the gateway's `route` normalizes before it builds `ctx`; a request
    /// whose target is not the one `normal` vouches for is refused, 400); the
    /// reserved inbound headers are left to the proxy, which strips them as
    /// it forwards.
    /// (Not an `async fn`: its future would hold `req` and `ctx` beside the
    /// `enforce` future that holds them too.)
    pub(crate) fn forward(
        &self,
        req: Request<Body>,
        ctx: RequestContext,
        normal: NormalTarget,
    ) -> impl Future<Output = (Response<Body>, AccessInfo)> + '_ {
        enforce(
            &self.enforcer,
            |req, ctx, principal| self.inner.forward_as(req, ctx, principal),
            req,
            Some((ctx, normal)),
        )
    }
}

/// Decides on `req` and hands it to `pass` when it may go on, with its
/// context and the principal on an allowed protected route (`None` on a
/// bypass route). The context is the gateway's (`from_gateway`: the path is
/// then normalized already, with the proof of it, and `pass` is the proxy,
/// which strips the reserved headers), else the one in the request's
/// extensions, else one derived here (an embedded layer: the headers are
/// stripped and the path normalized here).
///
/// A function returning an `async move` block rather than an `async fn`: the
/// block works on `req` in place, where an `async fn` future would also hold
/// a moved copy of it.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold moved copies of its arguments"
)]
fn enforce<'a, F, Fut>(
    e: &'a Enforcer,
    pass: F,
    mut req: Request<Body>,
    from_gateway: Option<(RequestContext, NormalTarget)>,
) -> impl Future<Output = (Response<Body>, AccessInfo)> + 'a
where
    F: FnOnce(Request<Body>, RequestContext, Option<Principal>) -> Fut + 'a,
    Fut: Future<Output = Response<Body>> + 'a,
{
    async move {
        let invalid = |cause: &str| {
            passed(
                ApiError::new(ErrorCode::E0000001).cause(cause).into_response(),
                "invalid",
                None,
            )
        };
        // The context first: deriving it may read a trusted proxy's X-Forwarded-For.
        // It goes to `pass` with the request (the gateway's proxy takes it as it
        // is; an embedded layer puts it back into the extensions).
        let (ctx, normal) = from_gateway.unzip();
        let ctx = match ctx.or_else(|| req.extensions_mut().remove::<RequestContext>()) {
            Some(ctx) => ctx,
            None => match e.context(&req) {
                Some(ctx) => ctx,
                None => return invalid("missing or invalid Host"),
            },
        };
        let client_addr = ctx.client_addr;
        if let Some(normal) = normal {
            // The gateway has normalized the path (`MainService::route`), and
            // its proxy, the only `pass` it gives, strips the reserved headers
            // as it forwards (`rewrite_request_headers`): neither is done
            // twice per request. The decision reads none of those headers
            // (an identity header an operator named `Accept` could only change
            // a refusal's format). The proof is still checked, failing closed:
            // a target other than the one normalized (rebuilt or replaced on
            // the way) is refused instead of decided on.
            if !normal.holds_for(req.uri()) {
                tracing::error!(request_id = %ctx.request_id, "a request reached enforcement with a target other than the one normalized; refused");
                return invalid("invalid path");
            }
        } else {
            e.strip_identity(req.headers_mut());
            // Normalize (embedded, nobody has): rules match the normal form
            // and it is what the inner service sees. Fail closed: never
            // decide on (or pass on) the unnormalized path.
            match normalize_target(req.uri_mut()) {
                Ok(_) => {}
                Err(TargetError::Path(reason)) => {
                    crate::audit!("request.path_refused", reason = %reason, client = %client_addr);
                    return invalid("invalid path");
                }
                Err(TargetError::Unrepresentable) => return invalid("invalid path"),
            }
        }
        let facts = RequestFacts {
            host: &ctx.host,
            path: req.uri().path(),
            method: req.method(),
            client_addr,
        };
        // Decided on the strictest reading of the path (`;params` dropped,
        // trailing dots trimmed: see `Policy::evaluate`), of the method (and
        // the methods it may be read as) and, for WebDAV's COPY and MOVE, of
        // the path in `Destination`, which they act on as well; the session
        // is read only when some reading needs one.
        let now = e.clock.now();
        let decided = match Readings::of(req.method(), req.uri().query(), req.headers(), &ctx.host) {
            Ok(readings) => e.decide(&facts, &readings, None, req.headers(), now),
            Err(reason) => {
                crate::audit!("request.path_refused", reason = %reason, client = %client_addr);
                return invalid(&reason.to_string());
            }
        };
        let Ok((decision, state)) = decided else {
            return passed(
                ApiError::new(ErrorCode::E0000009).into_response(),
                "unavailable",
                None,
            );
        };
        let user = match &state {
            SessionState::Valid(s) => Some(LoggedUser::User(s.user.clone())),
            _ => None,
        };

        match decision {
            Decision::Bypass => {
                let res = pass(req, ctx, None).await;
                passed(res, "bypass", None)
            }
            Decision::Allow => {
                let SessionState::Valid(session) = state else {
                    // decide() allows only with a valid session; anything else is a bug: fail closed.
                    return passed(ApiError::new(ErrorCode::E0000009).into_response(), "error", None);
                };
                let principal = Enforcer::principal(&session);
                let refresh = e.refreshed_cookie(&session, now);
                let mut res = pass(req, ctx, Some(principal)).await;
                if let Some(cookie) = refresh {
                    // The app's answer now holds this user's session: no
                    // shared cache may keep it for anyone else.
                    crate::proxy::headers::keep_from_shared_caches(res.headers_mut());
                    res.headers_mut().append(header::SET_COOKIE, cookie);
                }
                passed(res, "allow", user)
            }
            Decision::Deny | Decision::Forbidden => {
                let res = if is_browser(req.headers()) {
                    denied::denied_page(e, req.headers(), req.uri().path())
                } else {
                    ApiError::new(ErrorCode::E0000006).into_response()
                };
                passed(
                    res,
                    if decision == Decision::Deny {
                        "deny"
                    } else {
                        "forbidden"
                    },
                    user,
                )
            }
            Decision::Challenge { level, step_up } => {
                let signed_in = matches!(state, SessionState::Valid(_));
                let cause = challenge_cause(signed_in, level, step_up);
                let mut res = challenge(e, &ctx, &req, signed_in, cause);
                if matches!(state, SessionState::Invalid(_)) {
                    res.headers_mut()
                        .append(header::SET_COOKIE, e.sessions.clear_cookie());
                }
                passed(res, "challenge", user)
            }
        }
    }
}

/// Sends a browser to the login page (302 for GET/HEAD, 303 otherwise), or
/// answers an API client 401.
pub(crate) fn challenge(
    e: &Enforcer,
    ctx: &RequestContext,
    req: &Request<Body>,
    signed_in: bool,
    cause: &'static str,
) -> Response<Body> {
    if is_browser(req.headers()) {
        let original = format!(
            "{}://{}{}",
            ctx.scheme,
            ctx.authority,
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        let location = portal_location("", &e.prefix, &original, signed_in);
        let status = if req.method() == Method::GET || req.method() == Method::HEAD {
            StatusCode::FOUND
        } else {
            StatusCode::SEE_OTHER
        };
        return redirect(status, &location);
    }
    api_challenge(&e.prefix, cause)
}

/// Where to send a browser that must sign in (or, `signed_in`, step up) to
/// reach `original`: `{base}{prefix}/login?rd=...` or `.../mfa?rd=...`; `base`
/// is empty (same host) or a scheme and authority.
pub(crate) fn portal_location(base: &str, prefix: &str, original: &str, signed_in: bool) -> String {
    format!(
        "{base}{prefix}/{}?rd={}",
        if signed_in { "mfa" } else { "login" },
        percent_encoding::utf8_percent_encode(original, percent_encoding::NON_ALPHANUMERIC)
    )
}

/// A redirect that no cache keeps.
pub(crate) fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// What an API client that gets a challenge lacks (the cause of its 401):
/// a session, or, signed in (`signed_in`), a second factor (a recent one
/// when `step_up`) or a recent sign-in.
pub(crate) fn challenge_cause(signed_in: bool, level: u8, step_up: bool) -> &'static str {
    match (signed_in, level >= 2, step_up) {
        (false, _, _) => "a session is required",
        (true, true, false) => "a second factor is required",
        (true, true, true) => "a recent second factor is required",
        (true, false, _) => "a recent sign-in is required",
    }
}

/// The API client's answer to a challenge: 401 `E0000011` with `cause`
/// (see [`challenge_cause`]) and `WWW-Authenticate` naming the authn API.
pub(crate) fn api_challenge(prefix: &str, cause: &str) -> Response<Body> {
    let www = format!("Portcullis realm=\"portcullis\", login=\"{prefix}/api/v1/authn\"");
    let mut err = ApiError::new(ErrorCode::E0000011).cause(cause);
    if let Ok(v) = HeaderValue::from_str(&www) {
        err = err.header(header::WWW_AUTHENTICATE, v);
    }
    err.into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::gateway::Gateway;

    const CONFIG: &str = r#"
default_policy = "one_factor"
[admin]
tokens = []
[[upstreams]]
name = "unused"
url = "http://127.0.0.1:9"
[session]
secrets = ["0123456789abcdef0123456789abcdef"]
[store]
kind = "memory"
encryption_keys = []
[factors.totp]
enabled = false
[factors.recovery_codes]
enabled = false
[[rules]]
path = "^/public$"
policy = "bypass"
[[rules]]
path = "^/admin"
policy = "one_factor"
groups = ["admins"]
"#;

    async fn app() -> (Gateway, axum::Router, ManualClock) {
        let loaded = crate::config::load_str(CONFIG, &|_| None).expect("config");
        let clock = ManualClock::new(1_800_000_000);
        let gw = Gateway::build_with(loaded.config, Arc::new(clock.clone()))
            .await
            .expect("gateway");
        gw.state().enforcer.users.write().unwrap().insert(User {
            id: "00uALICE".into(),
            username: "alice".into(),
            display_name: None,
            email: None,
            phone: None,
            groups: vec!["staff".into()],
            password_hash: None,
            from_file: false,
            config_totp: None,
        });
        let app = axum::Router::new()
            .route(
                "/",
                get(
                    |p: Option<axum::Extension<Principal>>, h: http::HeaderMap| async move {
                        let spoofed = h.get("remote-user").is_some();
                        format!(
                            "{}|{spoofed}",
                            p.map(|p| p.0.username.clone()).unwrap_or_default()
                        )
                    },
                ),
            )
            // A bypass route's handler still gets the request's context.
            .route(
                "/public",
                get(|c: Option<axum::Extension<RequestContext>>| async move {
                    c.map(|c| c.0.host.clone()).unwrap_or_default()
                }),
            )
            .route("/admin", get(|| async { "admin" }))
            .layer(gw.mfa_layer());
        (gw, app, clock)
    }

    fn req(path: &str, cookie: Option<&str>) -> Request<Body> {
        let mut r = Request::builder()
            .uri(path)
            .header("host", "app.test")
            .header("remote-user", "mallory");
        if let Some(c) = cookie {
            // secure = true (the default) and no domain: the `__Host-` name.
            r = r.header("cookie", format!("__Host-portcullis_session={c}"));
        }
        let mut r = r.body(Body::empty()).unwrap();
        r.extensions_mut()
            .insert(ConnectInfo("192.0.2.1:5000".parse::<SocketAddr>().unwrap()));
        r
    }

    async fn body(res: Response<Body>) -> String {
        let b = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// With the store out of reach longer than `revocation_check` (here:
    /// the refresher stopped), a sign-in cannot be completed, so a protected
    /// route answers 503 without a session as with one; a route every reading
    /// of which refuses still answers 403, and a bypass route still passes.
    #[tokio::test]
    async fn a_stale_view_fails_challenges_closed_but_not_refusals() {
        let text = CONFIG.replace(
            "[[rules]]\npath = \"^/public$\"",
            "[[rules]]\npath = \"^/closed$\"\npolicy = \"deny\"\n[[rules]]\npath = \"^/public$\"",
        );
        let text = text.replacen("[session]\n", "[session]\nrevocation_check = \"1s\"\n", 1);
        assert!(
            text.contains("revocation_check = \"1s\"") && text.contains("^/closed"),
            "{text}"
        );
        let loaded = crate::config::load_str(&text, &|_| None).expect("config");
        let gw = Gateway::build(loaded.config).await.expect("gateway");
        let app = axum::Router::new()
            .route("/admin", get(|| async { "admin" }))
            .route("/closed", get(|| async { "closed" }))
            .route("/public", get(|| async { "public" }))
            .layer(gw.mfa_layer());
        let status = |path: &'static str| {
            let app = app.clone();
            async move { app.oneshot(req(path, None)).await.unwrap().status() }
        };
        assert_eq!(status("/admin").await, StatusCode::UNAUTHORIZED);
        gw.stop();
        tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
        assert_eq!(status("/admin").await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status("/closed").await, StatusCode::FORBIDDEN);
        // `/closed/` is read both as itself (the default: a session) and
        // without its trailing `/` (denied): a refusal, which needs no store.
        assert_eq!(status("/closed/").await, StatusCode::FORBIDDEN);
        assert_eq!(status("/public").await, StatusCode::OK);
    }

    /// The gateway's path trusts `route` to have normalized the target; a
    /// request handed over without that is refused, never decided on.
    #[tokio::test]
    async fn the_gateway_path_refuses_a_request_without_its_own_proof_of_normal_form() {
        use tower::Layer as _;
        let (gw, _app, _clock) = app().await;
        let config = &gw.state().config;
        let proxy = crate::proxy::Proxy::new(crate::proxy::ProxySettings {
            upstreams: config.upstreams.clone(),
            identity: config.identity_headers.clone(),
            gateway_cookies: config.session.gateway_cookie_names(),
            upstream_connections: crate::proxy::ConnectionBudget::new(config.server.max_connections),
            tunnel_idle_timeout: config.server.idle_timeout,
        })
        .unwrap();
        let protected = gw.mfa_layer().layer(proxy);
        let context = |request: &Request<Body>| RequestContext {
            upstream: Some(0),
            ..gw.state().enforcer.context(request).unwrap()
        };
        // A proof made for another request's target (here a normal one)
        // does not carry over: an unnormalized path (a bypass rule's path
        // after `..`, an encoded letter) or even an equal one is refused.
        let mut other = req("/public", None);
        let foreign = crate::policy::normalize::normalize_target(other.uri_mut()).unwrap();
        for path in ["/x/../public", "/%70ublic", "/public"] {
            let request = req(path, None);
            let ctx = context(&request);
            let (res, info) = protected.forward(request, ctx, foreign.clone()).await;
            assert_eq!(
                (res.status(), info.decision),
                (StatusCode::BAD_REQUEST, "invalid"),
                "{path}"
            );
        }
        // Nor does it hold once the target it was made for is replaced.
        let mut request = req("/public", None);
        let normal = crate::policy::normalize::normalize_target(request.uri_mut()).unwrap();
        *request.uri_mut() = "/%70ublic".parse().unwrap();
        let ctx = context(&request);
        let (res, info) = protected.forward(request, ctx, normal).await;
        assert_eq!(
            (res.status(), info.decision),
            (StatusCode::BAD_REQUEST, "invalid")
        );
        // Normalized with its proof: decided (bypass) on the normal form and
        // passed on to the (closed) upstream.
        for path in ["/public", "/x/../%70ublic"] {
            let mut request = req(path, None);
            let normal = crate::policy::normalize::normalize_target(request.uri_mut()).unwrap();
            let ctx = context(&request);
            let (res, info) = protected.forward(request, ctx, normal).await;
            assert_eq!(
                (res.status(), info.decision),
                (StatusCode::BAD_GATEWAY, "bypass"),
                "{path}"
            );
        }
        // An empty path (absolute form), read as `/`, with and without a
        // query: decided on (`/` is no bypass route here), not refused.
        for target in ["http://app.test", "http://app.test?x=1"] {
            let mut request = req(target, None);
            let normal = crate::policy::normalize::normalize_target(request.uri_mut()).unwrap();
            let ctx = context(&request);
            let (_, info) = protected.forward(request, ctx, normal).await;
            assert_eq!(info.decision, "challenge", "{target}");
        }
    }

    #[test]
    fn a_logged_user_shows_only_its_name() {
        let user = Arc::new(User {
            id: "00uALICE".into(),
            username: "alice".into(),
            display_name: None,
            email: Some("alice@example.com".into()),
            phone: None,
            groups: vec![],
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into()),
            from_file: false,
            config_totp: None,
        });
        let shown = format!(
            "{:?}",
            AccessInfo {
                decision: "allow",
                user: Some(LoggedUser::User(user.clone())),
            }
        );
        assert!(shown.contains("\"alice\""), "{shown}");
        assert!(
            !shown.contains("argon2") && !shown.contains("example.com"),
            "{shown}"
        );
        assert_eq!(LoggedUser::from("bob".to_owned()).name(), "bob");
        // Nor does the user itself, as a verified session holds it.
        let session = ActiveSession {
            claims: Arc::new(SessionClaims::new(
                "00uALICE",
                1,
                vec!["pwd".into()],
                1,
                None,
                0,
                1,
            )),
            user,
        };
        let shown = format!("{session:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("argon2"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn guards_an_axum_app_on_its_own() {
        let (gw, app, clock) = app().await;
        let now = clock.now();
        // Anonymous: challenged; bypass passes without identity.
        let res = app.clone().oneshot(req("/", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = app.clone().oneshot(req("/public", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body(res).await, "app.test", "the context reaches the app");
        // Signed in: the handler sees the principal, never the spoofed header.
        let claims = SessionClaims::new("00uALICE", 1, vec!["pwd".into()], now, None, 0, now);
        let cookie = gw.state().enforcer.sessions.encode(&claims);
        let res = app.clone().oneshot(req("/", Some(&cookie))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body(res).await, "alice|false");
        // Group requirement: signed in but not an admin.
        let res = app.clone().oneshot(req("/admin", Some(&cookie))).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        // Sliding refresh after a minute of activity.
        clock.advance(61);
        let res = app.clone().oneshot(req("/", Some(&cookie))).await.unwrap();
        assert!(res.headers().get(header::SET_COOKIE).is_some());
        // Normalized before matching: a dot segment cannot reach around a rule.
        let res = app
            .clone()
            .oneshot(req("/public/../admin", Some(&cookie)))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let res = app.clone().oneshot(req("/public%2F..", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }

    /// A `Cookie` header map carrying `cookie` as the session.
    fn cookie_headers(cookie: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; __Host-portcullis_session={cookie}; b=2")).unwrap(),
        );
        h
    }

    fn valid(state: SessionState) -> ActiveSession {
        match state {
            SessionState::Valid(s) => s,
            other => panic!("not valid: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_changed_user_gets_a_new_principal() {
        let (gw, _app, clock) = app().await;
        let e = &gw.state().enforcer;
        let now = clock.now();
        let claims = SessionClaims::new("00uALICE", 2, vec!["pwd".into()], now, None, 0, now);
        let h = cookie_headers(&e.sessions.encode(&claims));
        let s = valid(e.session(&h));
        let first = Enforcer::principal(&s);
        // The same session and user again: the same shared principal.
        let again = Enforcer::principal(&valid(e.session(&h)));
        assert!(first == again && first.groups == ["staff"]);
        // The user changed in the directory (a new `Arc`): built anew.
        let alice = e.users.read().unwrap().get("00uALICE").cloned().unwrap();
        e.users.write().unwrap().insert(User {
            groups: vec!["admins".into()],
            ..User::clone(&alice)
        });
        let changed = Enforcer::principal(&valid(e.session(&h)));
        assert_eq!(changed.groups, ["admins"]);
        assert_eq!(
            changed
                .identity_values()
                .groups
                .as_ref()
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("admins".to_owned())
        );
    }

    #[tokio::test]
    async fn a_cached_cookie_is_still_checked_on_every_request() {
        let (gw, app, clock) = app().await;
        let e = &gw.state().enforcer;
        let now = clock.now();
        let issue = || {
            let claims = SessionClaims::new("00uALICE", 1, vec!["pwd".into()], now, None, 0, now);
            (e.sessions.encode(&claims), claims)
        };

        // The second look at a cookie is answered from this thread's cache.
        let (cookie, claims) = issue();
        let h = cookie_headers(&cookie);
        let first = valid(e.session(&h));
        let second = valid(e.session(&h));
        assert!(Arc::ptr_eq(&first.claims, &second.claims));
        assert_eq!(*second.claims, claims);

        // Signed out (its session id revoked): refused, cached or not, and
        // the layer challenges it.
        e.revocations.note_revoked(&claims.sid, now + 3600);
        assert!(matches!(
            e.session(&h),
            SessionState::Invalid(SessionReject::Revoked)
        ));
        let res = app.clone().oneshot(req("/", Some(&cookie))).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

        // Its whole sign-in revoked.
        let (cookie, claims) = issue();
        let h = cookie_headers(&cookie);
        valid(e.session(&h));
        valid(e.session(&h));
        e.revocations.note_revoked(&claims.sin, now + 3600);
        assert!(matches!(
            e.session(&h),
            SessionState::Invalid(SessionReject::Revoked)
        ));

        // The user's epoch moved on (every session of the user ended).
        let (cookie, _) = issue();
        let h = cookie_headers(&cookie);
        valid(e.session(&h));
        e.revocations.note_epoch("00uALICE", 1);
        assert!(matches!(
            e.session(&h),
            SessionState::Invalid(SessionReject::Revoked)
        ));

        // Idle too long, then past its lifetime: the time is checked each time.
        let claims = SessionClaims::new("00uALICE", 1, vec!["pwd".into()], now, None, 1, now);
        let cookie = e.sessions.encode(&claims);
        let h = cookie_headers(&cookie);
        valid(e.session(&h));
        clock.advance(e.sessions.lifetime().min(1800) + 1);
        assert!(matches!(
            e.session(&h),
            SessionState::Invalid(SessionReject::Idle | SessionReject::Expired)
        ));

        // The user is gone, or changed: read from the directory each time.
        let now = clock.now();
        let claims = SessionClaims::new("00uALICE", 1, vec!["pwd".into()], now, None, 1, now);
        let h = cookie_headers(&e.sessions.encode(&claims));
        assert_eq!(valid(e.session(&h)).user.groups, ["staff"]);
        let alice = e.users.write().unwrap().remove("00uALICE").unwrap();
        assert!(matches!(
            e.session(&h),
            SessionState::Invalid(SessionReject::Revoked)
        ));
        e.users.write().unwrap().insert(User {
            groups: vec!["admins".into()],
            ..User::clone(&alice)
        });
        assert_eq!(valid(e.session(&h)).user.groups, ["admins"]);

        // A directory user's session while the directory is stale: fail closed.
        let mut carol = User::clone(&alice);
        carol.id = "00uCAROL".into();
        carol.username = "carol".into();
        e.users.write().unwrap().upsert_directory_user(
            carol,
            crate::users::ldap::DirectoryRef {
                dn: "uid=carol".into(),
                stable_id: "carol-1".into(),
            },
        );
        let claims = SessionClaims::new("00uCAROL", 1, vec!["pwd".into()], now, None, 0, now);
        let h = cookie_headers(&e.sessions.encode(&claims));
        valid(e.session(&h));
        e.users.write().unwrap().set_directory_stale(true);
        assert!(matches!(e.session(&h), SessionState::Unavailable));
        e.users.write().unwrap().set_directory_stale(false);
        valid(e.session(&h));
    }

    #[tokio::test]
    async fn fails_closed_without_a_client_address() {
        let (_gw, app, _clock) = app().await;
        let mut r = req("/public", None);
        r.extensions_mut().remove::<ConnectInfo<SocketAddr>>();
        let res = app.oneshot(r).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
}
