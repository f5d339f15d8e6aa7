//! API requests, handled by the supervisor: services are created, changed and removed here
//! (image references are resolved to digests once, when a spec is accepted), and services and
//! instances are reported.

use super::{Live, Supervisor, chain, unix_ms};
use crate::agent::dispatch::Reply;
use crate::agent::types::{EventKind, InstanceInfo, Request, RequestError, Response, ServiceInfo};
use crate::fleet::{MAX_REPLICAS, ServiceSpec, ServiceState};
use crate::store::{Store, StoreError};

impl Supervisor {
    /// Handles one API request.
    pub fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::ListServices => {
                let names: Vec<String> = self.services.keys().cloned().collect();
                Ok(Response::Services(
                    names.iter().map(|n| self.service_info(n)).collect(),
                ))
            }
            Request::GetService { name } => {
                self.known(&name)?;
                Ok(Response::Service(self.service_info(&name)))
            }
            Request::CreateService(spec) => self.create(spec),
            Request::UpdateService(spec) => self.update(spec),
            Request::ScaleService { name, replicas } => self.scale(&name, replicas),
            Request::DeleteService { name } => {
                self.known(&name)?;
                self.services.remove(&name);
                self.db
                    .delete_service(&name)
                    .map_err(|e| RequestError::Internal(chain(&e)))?;
                tracing::info!(service = name, "deleted");
                self.emit(&name, None, EventKind::ServiceDeleted);
                Ok(Response::Done)
            }
            Request::ListInstances { service } => {
                // Ended instances had their last chance when they ended.
                let live: Vec<String> = self
                    .instances
                    .values()
                    .filter(|i| i.record.status.is_live())
                    .map(|i| i.record.id.clone())
                    .collect();
                live.iter().for_each(|id| self.learn_boot_time(id));
                Ok(Response::Instances(
                    self.instances
                        .values()
                        .filter(|i| service.as_ref().is_none_or(|s| *s == i.record.service))
                        .map(|i| self.instance_info(i))
                        .collect(),
                ))
            }
            Request::GetInstance { id } => {
                self.learn_boot_time(&id);
                let live = self
                    .instances
                    .get(&id)
                    .ok_or_else(|| not_found("instance", &id))?;
                Ok(Response::Instance(self.instance_info(live)))
            }
            Request::KillInstance { id } => {
                if !self.kill(&id) {
                    return Err(not_found("instance", &id));
                }
                Ok(Response::Done)
            }
        }
    }

    fn known(&self, name: &str) -> Result<(), RequestError> {
        if self.services.contains_key(name) {
            Ok(())
        } else {
            Err(not_found("service", name))
        }
    }

    fn create(&mut self, spec: ServiceSpec) -> Reply {
        spec.validate()?;
        if self.services.contains_key(&spec.name) {
            return Err(RequestError::Conflict(format!(
                "service {:?} already exists (update it with PUT)",
                spec.name
            )));
        }
        let digest = self.resolve(&spec.image)?;
        let name = spec.name.clone();
        let state = ServiceState::new(spec, digest.clone());
        self.db
            .put_service(&state)
            .map_err(|e| RequestError::Internal(chain(&e)))?;
        let generation = state.generation;
        self.services.insert(name.clone(), state);
        tracing::info!(service = name, "created");
        let kind = EventKind::ServiceCreated { generation, digest };
        self.emit(&name, None, kind);
        Ok(Response::Service(self.service_info(&name)))
    }

    fn update(&mut self, spec: ServiceSpec) -> Reply {
        spec.validate()?;
        let name = spec.name.clone();
        self.known(&name)?;
        let digest = self.resolve(&spec.image)?;
        let mut state = self.services[&name].clone();
        let rolling = state.update(spec, digest.clone());
        self.db
            .put_service(&state)
            .map_err(|e| RequestError::Internal(chain(&e)))?;
        let generation = state.generation;
        self.services.insert(name.clone(), state);
        tracing::info!(service = name, rolling, "updated");
        let kind = EventKind::ServiceUpdated {
            generation,
            digest,
            rolling,
        };
        self.emit(&name, None, kind);
        Ok(Response::Service(self.service_info(&name)))
    }

    fn scale(&mut self, name: &str, replicas: u32) -> Reply {
        self.known(name)?;
        if replicas > MAX_REPLICAS {
            return Err(RequestError::Invalid {
                field: "replicas".into(),
                why: format!("at most {MAX_REPLICAS}"),
            });
        }
        let mut state = self.services[name].clone();
        state.spec.replicas = replicas;
        self.db
            .put_service(&state)
            .map_err(|e| RequestError::Internal(chain(&e)))?;
        self.services.insert(name.to_owned(), state);
        self.emit(name, None, EventKind::ServiceScaled { replicas });
        Ok(Response::Service(self.service_info(name)))
    }

    /// The digest an image reference names now.
    fn resolve(&self, reference: &str) -> Result<String, RequestError> {
        let found = Store::open(&self.settings.home).and_then(|s| s.resolve(reference));
        match found {
            Ok(image) => Ok(image.digest),
            Err(
                e @ (StoreError::NotFound(..)
                | StoreError::Ambiguous { .. }
                | StoreError::BadReference(..)),
            ) => Err(RequestError::Invalid {
                field: "image".into(),
                why: chain(&e),
            }),
            Err(e) => Err(RequestError::Internal(chain(&e))),
        }
    }

    fn service_info(&mut self, name: &str) -> ServiceInfo {
        let state = self.services[name].clone();
        let snapshot = self.snapshot_info(&state).map(Box::new);
        let s = &state;
        let running: Vec<&Live> = self
            .instances
            .values()
            .filter(|i| i.record.service == name && i.record.status.can_check())
            .collect();
        let now = self.now_ms();
        ServiceInfo {
            spec: s.spec.clone(),
            digest: s.digest.clone(),
            generation: s.generation,
            running: running.len() as u32,
            healthy: running
                .iter()
                .filter(|i| i.record.status.is_available())
                .count() as u32,
            rolling_out_from: s.rollout.as_ref().map(|r| r.from_generation),
            replacements: s.replacements,
            crash_looping: s.backoff.is_crash_looping(),
            backoff_until_ms: s
                .backoff
                .blocks(now)
                .then(|| unix_ms() + (s.backoff.not_before_ms - now)),
            snapshot,
        }
    }

    fn instance_info(&self, live: &Live) -> InstanceInfo {
        let r = &live.record;
        let boot_time_ms = live.boot_time_ms;
        let until = r.end.as_ref().map_or_else(unix_ms, |e| e.at_ms);
        InstanceInfo {
            id: r.id.clone(),
            service: r.service.clone(),
            generation: r.generation,
            digest: r.digest.clone(),
            status: r.status,
            pid: r.pid,
            address: r.address.clone(),
            started_at_ms: r.started_at_ms,
            boot_time_ms,
            start: r.start,
            uptime_ms: until.saturating_sub(r.started_at_ms),
            end: r.end.clone(),
        }
    }
}

fn not_found(kind: &'static str, name: &str) -> RequestError {
    RequestError::NotFound {
        kind,
        name: name.to_owned(),
    }
}
