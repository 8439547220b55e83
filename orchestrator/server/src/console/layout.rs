//! The frame of every page (landmarks, navigation, who is signed in) and the
//! headers every answer of the console carries.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::Viewer;

/// Which entry of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Workflows,
    Workers,
    /// A page of an extension's, or none of the above.
    Other,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Sagaflow" }
            link rel="stylesheet" href=(super::assets::CSS_PATH);
            script src=(super::assets::JS_PATH) defer {}
        }
    }
}

/// A whole page: the navigation, `body` under an `h1` of `title`, the footer.
pub fn page(viewer: &Viewer, current: Page, title: &str, body: Markup) -> Response {
    let nav_link = |href: &str, label: &str, this: Page| {
        html! {
            li { a href=(href) aria-current=[(current == this).then_some("page")] { (label) } }
        }
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    nav aria-label="Console" {
                        a class="brand" href="/" { "Sagaflow" }
                        ul {
                            (nav_link("/", "Workflows", Page::Workflows))
                            @if viewer.may_act() {
                                (nav_link("/workers", "Workers", Page::Workers))
                            }
                        }
                    }
                    div class="who" {
                        span { (viewer.principal.name) " · " (viewer.principal.role.as_str()) }
                        @if viewer.signed_in() {
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(viewer.csrf());
                                button type="submit" class="link" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
                footer {
                    "Times are UTC. "
                    a href="/metrics" { "Metrics" } " · " a href="/healthz" { "Health" }
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A page with no navigation (sign-in, errors), for a visitor the console
/// may not know yet.
pub fn bare_markup(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header class="top" { nav aria-label="Console" { a class="brand" href="/" { "Sagaflow" } } }
                main id="main" { h1 { (title) } (body) }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// An error page: what went wrong, and the way back.
pub fn bare(title: &str, message: &str) -> Response {
    bare_markup(
        title,
        html! { p class="error" role="alert" { (message) } p { a href="/" { "Back to the workflows" } } },
    )
}

/// The headers of every answer: no inline script or style can run (the
/// console has none, so an injected one is dead), no framing, no caching of
/// pages that show workflow data, and the time the server spent
/// (`Server-Timing`), which the console bench reads.
pub(super) async fn headers(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let spent = started.elapsed().as_secs_f64() * 1000.0;
    let headers = response.headers_mut();
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={spent:.1}")) {
        headers.insert("server-timing", value);
    }
    response
}
