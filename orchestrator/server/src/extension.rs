//! How an application plugs its own gRPC services into a server, beside the
//! platform's: the reference shop's `CheckoutService` is one. An extension
//! reaches the workflows only through the [`Runtime`]'s public methods, as
//! any client library would, and names who may call each of its methods;
//! a method it does not name is operator-only.
//!
//! An extension may also add pages to the operator console
//! ([`console_routes`](Extension::console_routes)) and links to them on a
//! workflow's page ([`console_links`](Extension::console_links)).

use sagaflow_worker::WorkerBuilder;
use tonic::service::RoutesBuilder;

use sagaflow_proto::v1::WorkflowSummary;

use crate::auth::Role;
use crate::console::Link;
use crate::runtime::Runtime;

pub trait Extension: Send + Sync + 'static {
    /// The gRPC service's full name (`package.Service`): health reports it.
    fn service_name(&self) -> &'static str;

    /// Who may call each method, by full path (`/package.Service/Method`).
    /// Rules for the platform's own paths are ignored: an extension cannot
    /// open a platform method to more callers.
    fn rules(&self) -> Vec<(String, &'static [Role])>;

    /// Adds the service, built on the running `runtime`; requests larger
    /// than `max_message_bytes` must be refused by its decoder.
    fn add_to(&self, routes: &mut RoutesBuilder, runtime: &Runtime, max_message_bytes: usize);

    /// Activities of the server's in-process jobs worker (the `jobs.*`
    /// queues) that need the runtime at hand; none by default.
    fn job_activities(&self, worker: WorkerBuilder, _runtime: &Runtime) -> WorkerBuilder {
        worker
    }

    /// Pages of the operator console (ADR 0027), served on the HTTP
    /// listener behind the console's sessions: a handler takes a
    /// [`console::Viewer`](crate::console::Viewer) (who looks, and whether
    /// they may act), reads through `runtime` with the same `may_read` rule
    /// as the API, and frames its HTML with [`console::page`](crate::console::page).
    /// A form that changes something carries `Viewer::csrf` and checks it
    /// with `Viewer::check_csrf`. None by default.
    fn console_routes(&self, _runtime: &Runtime) -> Option<axum::Router> {
        None
    }

    /// Links to this extension's pages on a workflow's console page (the
    /// shop's checkout view on a checkout's); none by default.
    fn console_links(&self, _summary: &WorkflowSummary) -> Vec<Link> {
        Vec::new()
    }
}
