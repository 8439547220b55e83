//! `sagaflow.v1.DefinitionService`: saga definitions registered at runtime.

use sagaflow_proto::v1::definition_service_server::DefinitionService;
use sagaflow_proto::v1::{
    DefinitionChange, DefinitionRegistration, DefinitionType, DefinitionVersion, DeprecateDefinitionRequest,
    DeprecateDefinitionResponse, GetDefinitionRequest, GetDefinitionResponse, ListDefinitionsRequest,
    ListDefinitionsResponse, RegisterDefinitionRequest, RegisterDefinitionResponse,
};
use tonic::{Request, Response, Status};

use super::invalid;
use crate::registry::{Change, Entry};
use crate::runtime::Runtime;

/// More definitions than this in one request is refused: a registration is
/// one commit, and an operator's file rarely holds more than a handful.
const MAX_DEFINITIONS_PER_REQUEST: usize = 100;

pub struct DefinitionApi {
    runtime: Runtime,
}

impl DefinitionApi {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }

    fn workflow_type(&self, name: &str) -> Result<(), Status> {
        self.runtime.limits().id("workflow_type", name).map_err(invalid)
    }
}

fn version(entry: &Entry, with_body: bool) -> DefinitionVersion {
    DefinitionVersion {
        workflow_type: entry.definition.name.clone(),
        version: entry.definition.version,
        content_hash: entry.hash.clone(),
        deprecated: entry.deprecated,
        built_in: entry.built_in,
        definition: if with_body { entry.canonical.to_string() } else { String::new() },
    }
}

#[tonic::async_trait]
impl DefinitionService for DefinitionApi {
    async fn register_definition(
        &self,
        request: Request<RegisterDefinitionRequest>,
    ) -> Result<Response<RegisterDefinitionResponse>, Status> {
        let request = request.into_inner();
        if request.definitions.is_empty() {
            return Err(Status::invalid_argument("definitions: at least one definition is needed"));
        }
        if request.definitions.len() > MAX_DEFINITIONS_PER_REQUEST {
            return Err(Status::invalid_argument(format!(
                "definitions: at most {MAX_DEFINITIONS_PER_REQUEST} in one request, this one has {}",
                request.definitions.len()
            )));
        }
        let limits = self.runtime.limits();
        let mut definitions = Vec::with_capacity(request.definitions.len());
        for (i, text) in request.definitions.iter().enumerate() {
            let at = |rule: String| Status::invalid_argument(format!("definitions[{i}]: {rule}"));
            let value = limits.json_payload("definition", text.as_bytes()).map_err(|e| at(e.0))?;
            let value = serde_json::from_str(&value).map_err(|e| at(e.to_string()))?;
            let definition = sagaflow_workflows::document::parse_one(value)
                .map_err(|e| Status::invalid_argument(format!("definitions[{i}].{e}")))?;
            self.workflow_type(&definition.name)
                .map_err(|e| Status::invalid_argument(format!("definitions[{i}].name: {}", e.message())))?;
            definitions.push(definition);
        }
        let results = self
            .runtime
            .register_definitions(definitions, request.dry_run)
            .await?
            .into_iter()
            .map(|r| {
                let (change, registered_hash) = match r.change {
                    Ok(Change::NewType) => (DefinitionChange::NewType, String::new()),
                    Ok(Change::NewVersion) => (DefinitionChange::NewVersion, String::new()),
                    Ok(Change::Identical) => (DefinitionChange::Identical, r.hash.clone()),
                    Err(conflict) => (DefinitionChange::Conflict, conflict.registered),
                };
                DefinitionRegistration {
                    workflow_type: r.workflow_type,
                    version: r.version,
                    content_hash: r.hash,
                    change: change.into(),
                    registered_hash,
                }
            })
            .collect();
        Ok(Response::new(RegisterDefinitionResponse { results }))
    }

    async fn get_definition(
        &self,
        request: Request<GetDefinitionRequest>,
    ) -> Result<Response<GetDefinitionResponse>, Status> {
        let request = request.into_inner();
        self.workflow_type(&request.workflow_type)?;
        let registry = self.runtime.registry();
        let entry = match request.version {
            Some(v) => registry.entry(&request.workflow_type, v),
            None => registry.latest_entry(&request.workflow_type),
        };
        let Some(entry) = entry else {
            let which = request.version.map(|v| format!(" version {v}")).unwrap_or_default();
            return Err(Status::not_found(format!("no definition {}{which}", request.workflow_type)));
        };
        Ok(Response::new(GetDefinitionResponse { definition: Some(version(entry, true)) }))
    }

    async fn list_definitions(
        &self,
        _request: Request<ListDefinitionsRequest>,
    ) -> Result<Response<ListDefinitionsResponse>, Status> {
        let registry = self.runtime.registry();
        let types = registry
            .names()
            .into_iter()
            .map(|name| DefinitionType {
                versions: registry.versions(&name).into_iter().map(|e| version(e, false)).collect(),
                workflow_type: name,
            })
            .collect();
        Ok(Response::new(ListDefinitionsResponse { types }))
    }

    async fn deprecate_definition(
        &self,
        request: Request<DeprecateDefinitionRequest>,
    ) -> Result<Response<DeprecateDefinitionResponse>, Status> {
        let request = request.into_inner();
        self.workflow_type(&request.workflow_type)?;
        let already_deprecated = self.runtime.deprecate_definition(&request.workflow_type, request.version).await?;
        Ok(Response::new(DeprecateDefinitionResponse { already_deprecated }))
    }
}
