//! One handler per service and instance [`Op`] (the others are in `observe` and `images`):
//! decode the path, query and body into a typed [`Request`], check what is pure to check (the
//! names and ids in the path, the spec's values, the path/body name agreement, the replica count), send it to the supervisor
//! and turn its reply into a status and a JSON body.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};

use super::params::{InstanceId, ServiceName};
use super::reject::{Failure, InstancesQuery, JsonBody};
use super::routes::{Health, Op, Route, ScaleBody};
use super::{Backend, images, observe};
use crate::agent::dispatch::Dispatcher;
use crate::agent::types::{self, Request, RequestError};
use crate::fleet::ServiceSpec;
use crate::fleet::spec::MAX_REPLICAS;

type Answer = Result<Response, Failure>;

/// The handler serving `route`.
pub fn endpoint(route: &Route) -> MethodRouter<Backend> {
    // ROUTES only holds standard methods (a unit test checks), so this cannot fail.
    let filter = MethodFilter::try_from(route.method.clone()).unwrap_or(MethodFilter::GET);
    match route.op {
        Op::Health => on(filter, health),
        Op::ListServices => on(filter, list_services),
        Op::CreateService => on(filter, create_service),
        Op::GetService => on(filter, get_service),
        Op::UpdateService => on(filter, update_service),
        Op::ScaleService => on(filter, scale_service),
        Op::DeleteService => on(filter, delete_service),
        Op::ListInstances => on(filter, list_instances),
        Op::GetInstance => on(filter, get_instance),
        Op::KillInstance => on(filter, kill_instance),
        Op::InstanceLogs => on(filter, observe::logs),
        Op::Events => on(filter, observe::events),
        Op::Metrics => on(filter, observe::metrics),
        Op::ListImages => on(filter, images::list),
        Op::GetImage => on(filter, images::inspect),
        Op::DeleteImage => on(filter, images::remove),
        Op::ImportImages => on(filter, images::import),
    }
}

/// Sends `request` to the supervisor; a view answers `ok` with it as JSON, `Done` answers
/// 204 No Content.
async fn answer(d: &Dispatcher, request: Request, ok: StatusCode) -> Answer {
    Ok(match d.call(request).await? {
        types::Response::Done => StatusCode::NO_CONTENT.into_response(),
        view => (ok, Json(view)).into_response(),
    })
}

fn validated(spec: ServiceSpec) -> Result<ServiceSpec, Failure> {
    spec.validate().map_err(RequestError::from)?;
    Ok(spec)
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn list_services(State(d): State<Dispatcher>) -> Answer {
    answer(&d, Request::ListServices, StatusCode::OK).await
}

async fn create_service(
    State(d): State<Dispatcher>,
    JsonBody(spec): JsonBody<ServiceSpec>,
) -> Answer {
    let request = Request::CreateService(validated(spec)?);
    answer(&d, request, StatusCode::CREATED).await
}

async fn get_service(State(d): State<Dispatcher>, ServiceName(name): ServiceName) -> Answer {
    answer(&d, Request::GetService { name }, StatusCode::OK).await
}

async fn update_service(
    State(d): State<Dispatcher>,
    ServiceName(name): ServiceName,
    JsonBody(spec): JsonBody<ServiceSpec>,
) -> Answer {
    if spec.name != name {
        return Err(Failure::from(RequestError::Invalid {
            field: "name".into(),
            why: format!(
                "{:?} differs from the service in the path ({name:?}); a service cannot be renamed",
                spec.name
            ),
        }));
    }
    let request = Request::UpdateService(validated(spec)?);
    answer(&d, request, StatusCode::OK).await
}

async fn scale_service(
    State(d): State<Dispatcher>,
    ServiceName(name): ServiceName,
    JsonBody(body): JsonBody<ScaleBody>,
) -> Answer {
    if body.replicas > MAX_REPLICAS {
        return Err(Failure::from(RequestError::Invalid {
            field: "replicas".into(),
            why: format!("at most {MAX_REPLICAS}"),
        }));
    }
    let request = Request::ScaleService {
        name,
        replicas: body.replicas,
    };
    answer(&d, request, StatusCode::OK).await
}

async fn delete_service(State(d): State<Dispatcher>, ServiceName(name): ServiceName) -> Answer {
    answer(&d, Request::DeleteService { name }, StatusCode::OK).await
}

async fn list_instances(State(d): State<Dispatcher>, query: InstancesQuery) -> Answer {
    let request = Request::ListInstances {
        service: query.service,
    };
    answer(&d, request, StatusCode::OK).await
}

async fn get_instance(State(d): State<Dispatcher>, InstanceId(id): InstanceId) -> Answer {
    answer(&d, Request::GetInstance { id }, StatusCode::OK).await
}

async fn kill_instance(State(d): State<Dispatcher>, InstanceId(id): InstanceId) -> Answer {
    answer(&d, Request::KillInstance { id }, StatusCode::OK).await
}
