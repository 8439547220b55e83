//! Who is looking at the console, and the defence of its forms.
//!
//! Without `--auth-file` the listener is on loopback (or `--insecure`), as
//! the gRPC API is, and every visitor is [`Principal::anonymous`], the
//! operator. With it, `/login` takes a token once, checks it against the
//! same [`Tokens`] as the API, and sets a session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` under TLS); the token itself is never
//! stored in the browser. Client tokens read only their own workflows
//! (`Principal::may_read`), worker tokens have no console.
//!
//! Every form that changes something carries the session's CSRF token and
//! is checked against it ([`Viewer::check_csrf`]), on top of the cookie's
//! `SameSite=Strict`; a POST a browser marks as cross-site
//! (`Sec-Fetch-Site`) is refused before any handler runs. That holds
//! without auth too: a web page in the operator's browser must not be able
//! to cancel workflows on a loopback console. The login form, which has no
//! session yet, uses a double-submit cookie instead.
//!
//! Sessions live in memory: a restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Form, FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{Console, ConsoleError, layout};
use crate::auth::{Principal, Role};

const SESSION_COOKIE: &str = "sagaflow_session";
const LOGIN_COOKIE: &str = "sagaflow_login";
/// A session unused this long is gone.
const IDLE: Duration = Duration::from_secs(8 * 3600);
/// And none lasts longer than this.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Sessions held at once; past it the least recently used goes. Bounds what
/// visitors (or a script that drops its cookies) can make the server hold.
const MAX_SESSIONS: usize = 4096;

/// The person (or script) behind a request, put in its extensions by
/// [`sessions`]. A handler of the console, or of an extension's page, takes
/// it as an argument.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub principal: Principal,
    csrf: String,
    /// Signed in with a token (there is something to sign out of).
    signed_in: bool,
}

impl Viewer {
    /// Whether this viewer may act (cancel, signal, …): operators only.
    pub fn may_act(&self) -> bool {
        self.principal.role == Role::Operator
    }

    /// Whether this viewer may read a workflow with these labels.
    pub fn may_read(&self, labels: &HashMap<String, String>) -> bool {
        self.principal.may_read(labels)
    }

    /// The token every form of this session carries (`<input name="csrf">`).
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    pub fn signed_in(&self) -> bool {
        self.signed_in
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), ConsoleError> {
        if !presented.is_empty() && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            return Ok(());
        }
        tracing::warn!(viewer = %self.principal.name, "refused a console form without this session's CSRF token");
        metrics::counter!("sagaflow_auth_failures_total", "reason" => "console_csrf").increment(1);
        Err(ConsoleError::Forbidden(
            "this form's security token is missing or stale; reload the page and try again".into(),
        ))
    }

    /// Refuses anyone but an operator.
    pub fn must_act(&self) -> Result<(), ConsoleError> {
        if self.may_act() {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(format!(
                "this needs the role operator; you are signed in as {} ({})",
                self.principal.name,
                self.principal.role.as_str()
            )))
        }
    }

    /// A viewer for unit tests of pages.
    #[cfg(test)]
    pub(crate) fn for_tests(principal: Principal) -> Self {
        Self { principal, csrf: "test-csrf".into(), signed_in: false }
    }

    /// What an action records as who did it.
    pub fn identity(&self) -> String {
        format!("console:{}", self.principal.name)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Viewer>()
            .cloned()
            .ok_or_else(|| ConsoleError::Forbidden("this page is served only behind the console's sessions".into()))
    }
}

struct Session {
    principal: Principal,
    csrf: String,
    signed_in: bool,
    created: Instant,
    last_seen: Instant,
}

/// The sessions of one server.
#[derive(Default)]
pub(super) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn find(&self, id: &str) -> Option<Viewer> {
        let mut map = self.lock();
        let now = Instant::now();
        let session = map.get_mut(id)?;
        if now.duration_since(session.last_seen) > IDLE || now.duration_since(session.created) > LIFETIME {
            map.remove(id);
            return None;
        }
        session.last_seen = now;
        Some(Viewer { principal: session.principal.clone(), csrf: session.csrf.clone(), signed_in: session.signed_in })
    }

    /// A new session; returns its id and viewer.
    fn open(&self, principal: Principal, signed_in: bool) -> (String, Viewer) {
        let id = random_hex();
        let csrf = random_hex();
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| now.duration_since(s.last_seen) <= IDLE && now.duration_since(s.created) <= LIFETIME);
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(id, _)| id.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session { principal: principal.clone(), csrf: csrf.clone(), signed_in, created: now, last_seen: now },
        );
        (id, Viewer { principal, csrf, signed_in })
    }

    fn close(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// 256 random bits, hex: session ids and CSRF tokens.
fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(name: &str, value: &str, tls: bool, max_age: Option<u64>) -> Option<HeaderValue> {
    let secure = if tls { "; Secure" } else { "" };
    let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
    HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}")).ok()
}

/// Paths that need no session: the login form and its answer.
fn public(path: &str) -> bool {
    path == "/login"
}

/// Whether the browser says this request comes from another site.
fn cross_site(headers: &HeaderMap) -> bool {
    headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|v| v == "cross-site")
}

/// The console's session layer: finds (or, without auth, opens) the
/// request's session and puts its [`Viewer`] in the request's extensions.
pub(super) async fn sessions(State(console): State<Console>, mut request: Request, next: Next) -> Response {
    if request.method() == Method::POST && cross_site(request.headers()) {
        metrics::counter!("sagaflow_auth_failures_total", "reason" => "console_cross_site").increment(1);
        return ConsoleError::Forbidden("a form posted from another site is refused".into()).into_response();
    }
    let path = request.uri().path().to_owned();
    let found = cookie(request.headers(), SESSION_COOKIE).and_then(|id| console.inner.sessions.find(&id));
    let (viewer, new_cookie) = match (found, &console.inner.tokens) {
        (Some(viewer), _) => (Some(viewer), None),
        // No auth: everyone is the operator, each browser with its own CSRF token.
        (None, None) => {
            let (id, viewer) = console.inner.sessions.open(Principal::anonymous(), false);
            (Some(viewer), set_cookie(SESSION_COOKIE, &id, console.inner.tls, None))
        }
        (None, Some(_)) => (None, None),
    };
    let Some(viewer) = viewer else {
        if public(&path) {
            return next.run(request).await;
        }
        return sign_in_first(&request);
    };
    request.extensions_mut().insert(viewer);
    let mut response = next.run(request).await;
    if let Some(cookie) = new_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// A page asks the visitor to sign in; a fragment (the script's refresh)
/// is told 401, so that it stops instead of swapping a login form in.
fn sign_in_first(request: &Request) -> Response {
    let fragment = request.uri().query().is_some_and(|q| q.contains("fragment="));
    if request.method() != Method::GET || fragment {
        return (StatusCode::UNAUTHORIZED, "sign in at /login first\n").into_response();
    }
    let next = request.uri().path_and_query().map_or("/", |p| p.as_str());
    Redirect::to(&format!("/login?next={}", super::format::encode(next))).into_response()
}

/// Where to go after signing in: a path on this listener, never elsewhere.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') { next } else { "/" }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LoginQuery {
    #[serde(default)]
    next: String,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    login_csrf: String,
}

fn login_page(next: &str, message: Option<&str>, tls: bool) -> Response {
    let nonce = random_hex();
    let body = html! {
        form class="login" method="post" action="/login" {
            @if let Some(message) = message {
                p class="error" role="alert" { (message) }
            }
            p { "This server runs with tokens (" code { "--auth-file" } "). Sign in with your client or operator token; it is checked once and not kept in the browser." }
            input type="hidden" name="next" value=(safe_next(next));
            input type="hidden" name="login_csrf" value=(nonce);
            label for="token" { "Token" }
            input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
            button type="submit" { "Sign in" }
        }
    };
    let status = if message.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    let mut response = (status, layout::bare_markup("Sign in", body)).into_response();
    if let Some(cookie) = set_cookie(LOGIN_COOKIE, &nonce, tls, Some(600)) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

pub(super) async fn login_form(
    axum::Extension(console): axum::Extension<Console>,
    Query(query): Query<LoginQuery>,
) -> Response {
    if console.inner.tokens.is_none() {
        return Redirect::to("/").into_response();
    }
    login_page(&query.next, None, console.inner.tls)
}

pub(super) async fn login(
    axum::Extension(console): axum::Extension<Console>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(tokens) = &console.inner.tokens else { return Redirect::to("/").into_response() };
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(form.login_csrf.as_bytes())) {
        metrics::counter!("sagaflow_auth_failures_total", "reason" => "console_csrf").increment(1);
        return login_page(&form.next, Some("The sign-in form expired; try again."), console.inner.tls);
    }
    let Some(principal) = tokens.find(form.token.trim()).cloned() else {
        tracing::warn!(reason = "unknown_token", "refused a console sign-in");
        metrics::counter!("sagaflow_auth_failures_total", "reason" => "unknown_token").increment(1);
        return login_page(&form.next, Some("Unknown token."), console.inner.tls);
    };
    if principal.role == Role::Worker {
        metrics::counter!("sagaflow_auth_failures_total", "reason" => "wrong_role").increment(1);
        return login_page(
            &form.next,
            Some("Worker tokens serve queues; the console takes client and operator tokens."),
            console.inner.tls,
        );
    }
    tracing::info!(viewer = %principal.name, role = principal.role.as_str(), "signed in to the console");
    let (id, _) = console.inner.sessions.open(principal, true);
    let mut response = Redirect::to(safe_next(&form.next)).into_response();
    for value in [
        set_cookie(SESSION_COOKIE, &id, console.inner.tls, None),
        set_cookie(LOGIN_COOKIE, "", console.inner.tls, Some(0)),
    ]
    .into_iter()
    .flatten()
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
    axum::Extension(console): axum::Extension<Console>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Result<Response, ConsoleError> {
    viewer.check_csrf(&form.csrf)?;
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        console.inner.sessions.close(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    if let Some(value) = set_cookie(SESSION_COOKIE, "", console.inner.tls, Some(0)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_name_and_set_strict() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; sagaflow_session=abc; b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
        let set = set_cookie(SESSION_COOKIE, "abc", true, None).expect("a valid header");
        assert_eq!(set.to_str().ok(), Some("sagaflow_session=abc; Path=/; HttpOnly; SameSite=Strict; Secure"));
    }

    #[test]
    fn only_local_paths_follow_a_sign_in() {
        assert_eq!(safe_next("/workflows/x?y=1"), "/workflows/x?y=1");
        assert_eq!(safe_next("//evil.example/"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/\\evil"), "/");
    }

    #[test]
    fn a_session_holds_its_principal_and_token() {
        let sessions = Sessions::default();
        let (id, viewer) = sessions.open(Principal::anonymous(), false);
        let found = sessions.find(&id).expect("the session");
        assert_eq!(found.csrf(), viewer.csrf());
        assert!(found.check_csrf(viewer.csrf()).is_ok());
        assert!(found.check_csrf("").is_err());
        assert!(found.check_csrf("0000").is_err());
        sessions.close(&id);
        assert!(sessions.find(&id).is_none());
    }
}
