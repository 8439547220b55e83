//! The operator console (ADR 0027): server-rendered pages on the HTTP
//! listener, beside `/healthz` and `/metrics`.
//!
//! | path | page |
//! |---|---|
//! | `/` | workflows, newest first, filtered, paged, refreshed while open |
//! | `/workflows/{id}` | one workflow: summary, timeline, pending activities, history |
//! | `/workflows/{id}/act/{action}` | an operator's action: a confirmation (GET), then the act (POST) |
//! | `/workers` | queues, their workers, credit, in flight, backlog, pauses |
//! | `/login`, `/logout` | sessions, when the server runs with `--auth-file` |
//! | `/console/…` | the stylesheet and the script, compiled into the binary |
//!
//! An [`Extension`](crate::Extension) adds its own pages
//! (`console_routes`) and links on a workflow's page (`console_links`).
//!
//! Reading goes through the runtime's read methods and the same `may_read`
//! rule as the gRPC API; acting goes through [`crate::operator`], which the
//! API calls too. Every page is HTML built with maud, which escapes what it
//! interpolates: a payload holding `<script>` is shown, never run.

mod actions;
mod assets;
mod auth;
pub mod format;
mod layout;
mod list;
pub mod timeline;
mod workers;
mod workflow;

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sagaflow_proto::v1::WorkflowSummary;

pub use auth::Viewer;
pub use layout::{Page, page};
pub use list::ListQuery;

use crate::auth::Tokens;
use crate::extension::Extension;
use crate::runtime::Runtime;

/// A link an extension offers on a workflow's page (the shop's "Checkout").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub label: String,
    /// A path on this listener, such as `/checkouts/chk-…`.
    pub href: String,
}

/// What the console is built from.
pub struct Setup {
    pub runtime: Runtime,
    /// `None`: no auth, every visitor is the anonymous operator (the
    /// listener is on loopback, or `--insecure` was given).
    pub tokens: Option<Arc<Tokens>>,
    /// The listener speaks TLS: cookies are `Secure`.
    pub tls: bool,
    pub extensions: Arc<Vec<Box<dyn Extension>>>,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup").field("auth", &self.tokens.is_some()).field("tls", &self.tls).finish_non_exhaustive()
    }
}

/// The console's shared state: cheap to clone.
#[derive(Clone)]
pub(crate) struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    tokens: Option<Arc<Tokens>>,
    tls: bool,
    sessions: auth::Sessions,
    extensions: Arc<Vec<Box<dyn Extension>>>,
}

impl Console {
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The links every extension offers for this workflow.
    fn links(&self, summary: &WorkflowSummary) -> Vec<Link> {
        self.inner.extensions.iter().flat_map(|e| e.console_links(summary)).collect()
    }
}

/// The console's routes, with their session layer; merged into the HTTP
/// listener's router beside `/healthz` and `/metrics`.
pub fn router(setup: Setup) -> Router {
    let Setup { runtime, tokens, tls, extensions } = setup;
    let mut pages = Router::new()
        .route("/", get(list::handler))
        .route("/workflows/{id}", get(workflow::handler))
        .route("/workflows/{id}/act/{action}", get(actions::confirm).post(actions::act))
        .route("/workers", get(workers::handler))
        .route("/queues/{queue}/{action}", get(workers::confirm).post(workers::act))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", axum::routing::post(auth::logout));
    for extension in extensions.iter() {
        if let Some(routes) = extension.console_routes(&runtime) {
            pages = pages.merge(routes);
        }
    }
    let console =
        Console { inner: Arc::new(Inner { runtime, tokens, tls, sessions: auth::Sessions::default(), extensions }) };
    Router::new()
        .merge(pages.layer(axum::Extension(console.clone())))
        .layer(axum::middleware::from_fn_with_state(console, auth::sessions))
        .merge(assets::router())
        .layer(axum::middleware::from_fn(layout::headers))
}

/// Why a page could not be shown, as the page that says so.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    /// The request was understood but the workflow's state refuses it (a
    /// cancel after the pivot, a resume of a running workflow).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<crate::runtime::Error> for ConsoleError {
    fn from(error: crate::runtime::Error) -> Self {
        use crate::runtime::Error;
        match error {
            Error::InvalidArgument(m) => Self::BadRequest(m),
            Error::NotFound(m) => Self::NotFound(m),
            Error::AlreadyExists(m) | Error::FailedPrecondition(m) | Error::ResourceExhausted(m) => Self::Refused(m),
            Error::Store(crate::store::Error::IdTooLong { .. }) => Self::BadRequest(error.to_string()),
            Error::NotServed { .. } | Error::Unreachable(_) => Self::Unavailable(error.to_string()),
            Error::Internal(_) | Error::Store(_) | Error::Archive(_) => {
                tracing::error!(error = %error, "the console could not read or act");
                Self::Unavailable(error.to_string())
            }
        }
    }
}

impl ConsoleError {
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Refused(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let title = match &self {
            Self::NotFound(_) => "Not found",
            Self::BadRequest(_) => "Bad request",
            Self::Forbidden(_) => "Not allowed",
            Self::Refused(_) => "Refused",
            Self::Unavailable(_) => "Unavailable",
        };
        (self.status(), layout::bare(title, &self.to_string())).into_response()
    }
}
