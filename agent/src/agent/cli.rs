//! The client commands as the user sees them: `herd service create|update|scale|rm|ls`,
//! `herd ps`, `herd kill`, `herd logs` and `herd events`, their clap arguments, and handlers
//! that call the agent through [`Client`] and print a table (or the agent's JSON with
//! `--json`); logs and events are printed as they stream in.
//!
//! A spec comes from a file (`-f`, checked here as the agent would, so a bad field is named
//! before anything is sent) or from flags. `update` with flags applies them to the service's
//! current spec, so flags not given keep their values.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::api::reject::parse_json;
use super::api::routes::{events_path, logs_path};
use super::client::{Client, ClientError};
use super::config::default_socket;
use super::table;
use super::types::{ErrorBody, Event, Request, Response};
use crate::fleet::ServiceSpec;
use crate::image::cli::{parse_env, parse_health_http};
use crate::image::config::HttpCheck;
use crate::image::exit;

/// How to reach the agent and how to print its answers.
#[derive(Clone, Debug, Args)]
pub struct ClientOpts {
    /// The agent's socket [default: $HERD_SOCKET, else /run/herd/herd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the agent's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientOpts {
    fn client(&self) -> Client {
        Client::new(self.socket.clone().unwrap_or_else(default_socket))
    }
}

/// `herd service ...`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service from a spec file or from flags.
    Create(SpecArgs),
    /// Replace a service's spec with a file, or change the fields given as flags. A new image
    /// or new instance settings roll out instance by instance.
    Update(SpecArgs),
    /// Set a service's number of instances.
    Scale(ScaleArgs),
    /// Delete a service and stop its instances.
    Rm(NameArg),
    /// List the services and how their instances are doing.
    Ls,
}

/// A service spec, from a file or flags.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The spec as a JSON file (`-` reads stdin): the ServiceSpec of agent/openapi.json.
    #[arg(short = 'f', long = "file", value_name = "SPEC.json", conflicts_with_all = [
        "name", "image", "replicas", "env", "vcpus", "memory", "health_vsock", "health_tcp",
        "health_http", "snapshot_starts",
    ])]
    pub file: Option<PathBuf>,
    /// The service's name: lowercase letters, digits and '-'.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The image to run (name:version, or a digest); the agent resolves it to a digest.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Number of instances [create's default: 1].
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// An environment variable for the app (repeatable); on update, added to the others.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// vCPUs per instance [default: the image's].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u8>,
    /// Memory per instance in MiB [default: the image's].
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// Health check: the guest answers `ok` to `health` on this vsock port.
    #[arg(long, value_name = "PORT", group = "health")]
    pub health_vsock: Option<u32>,
    /// Health check: the instance accepts TCP connections on this port.
    #[arg(long, value_name = "PORT", group = "health")]
    pub health_tcp: Option<u16>,
    /// Health check: `GET PATH` on this port answers 2xx or 3xx.
    #[arg(long, value_name = "PORT:/PATH", group = "health", value_parser = parse_http_check)]
    pub health_http: Option<HttpCheck>,
    /// Start instances from a snapshot of the first one that turns healthy (needs a health
    /// check); `--snapshot-starts=false` turns it off on update.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub snapshot_starts: Option<bool>,
}

/// `herd service scale NAME N`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    pub name: String,
    /// The number of instances wanted.
    pub replicas: u32,
}

/// A service name.
#[derive(Debug, Args)]
pub struct NameArg {
    pub name: String,
}

/// `herd ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// Only this service's instances.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
}

/// `herd kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// The instance to kill; the agent replaces it.
    pub instance: String,
}

/// `herd logs`: the output is the guest's, so there is no `--json`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The agent's socket [default: $HERD_SOCKET, else /run/herd/herd.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Keep printing new output until the instance has ended.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines of the output kept so far.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// The instance: running, or ended while its logs are still kept.
    pub instance: String,
}

/// `herd events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// Start after this sequence number [default: with every event the agent still keeps].
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
}

/// Errors of the client commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{what}: {}{}", .body.error, .body.field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Spec { what: String, body: ErrorBody },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot start the client")]
    Runtime(#[source] std::io::Error),
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// The exit status this error should end `herd` with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Read(_, e) => exit::io_input(e),
            Self::Spec { .. } => exit::DATA,
            Self::Client(e) => client_exit_code(e),
            Self::Runtime(_) | Self::Output(_) => exit::SOFTWARE,
        }
    }
}

/// Unreachable agent 69; unknown service or instance 66; other refusals 65; else 70.
pub fn client_exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Connect { .. } => exit::UNAVAILABLE,
        ClientError::Api { status: 404, .. } => exit::NO_INPUT,
        ClientError::Api { status, .. } if (400..500).contains(status) => exit::DATA,
        _ => exit::SOFTWARE,
    }
}

/// The exit status for one error of a cause chain, if it is one of the client's.
pub fn exit_code_of(err: &(dyn std::error::Error + 'static)) -> Option<u8> {
    if let Some(e) = err.downcast_ref::<CliError>() {
        Some(e.exit_code())
    } else {
        err.downcast_ref::<ClientError>().map(client_exit_code)
    }
}

/// `PORT:/PATH`, or `PORT/PATH` as `herd build` takes it.
fn parse_http_check(s: &str) -> Result<HttpCheck, String> {
    parse_health_http(&s.replacen(":/", "/", 1))
}

/// Runs `future` on a single-threaded runtime: the client does one thing at a time.
fn block_on<F: Future>(future: F) -> Result<F::Output, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    Ok(rt.block_on(future))
}

/// `herd service ...`.
pub fn service(args: ServiceArgs) -> Result<(), CliError> {
    let client = args.opts.client();
    let removed = match &args.command {
        ServiceCommand::Rm(a) => Some(a.name.clone()),
        _ => None,
    };
    let response = block_on(async {
        match args.command {
            ServiceCommand::Create(spec) => {
                let spec = spec_from_args(&spec, None)?;
                Ok(client.call(&Request::CreateService(spec)).await?)
            }
            ServiceCommand::Update(spec) => update(&client, &spec).await,
            ServiceCommand::Scale(a) => Ok(client
                .call(&Request::ScaleService {
                    name: a.name,
                    replicas: a.replicas,
                })
                .await?),
            ServiceCommand::Rm(a) => Ok(client
                .call(&Request::DeleteService { name: a.name })
                .await?),
            ServiceCommand::Ls => Ok(client.call(&Request::ListServices).await?),
        }
    })??;
    print(&response, args.opts.json, removed.as_deref())
}

/// `herd service update`: a file replaces the spec; flags change the current one.
async fn update(client: &Client, args: &SpecArgs) -> Result<Response, CliError> {
    let current = match (&args.file, &args.name) {
        (Some(_), _) => None,
        (None, Some(name)) => match client
            .call(&Request::GetService { name: name.clone() })
            .await?
        {
            Response::Service(info) => Some(info.spec),
            _ => None,
        },
        (None, None) => {
            return Err(CliError::Usage(
                "update needs --name or -f SPEC.json".into(),
            ));
        }
    };
    let spec = spec_from_args(args, current)?;
    Ok(client.call(&Request::UpdateService(spec)).await?)
}

/// `herd ps`.
pub fn ps(args: PsArgs) -> Result<(), CliError> {
    let client = args.opts.client();
    let request = Request::ListInstances {
        service: args.service,
    };
    let response = block_on(client.call(&request))??;
    print(&response, args.opts.json, None)
}

/// `herd kill`.
pub fn kill(args: KillArgs) -> Result<(), CliError> {
    let client = args.opts.client();
    let request = Request::KillInstance {
        id: args.instance.clone(),
    };
    let response = block_on(client.call(&request))??;
    print(&response, args.opts.json, Some(&args.instance))
}

/// `herd logs`: the console output as it arrives.
pub fn logs(args: LogsArgs) -> Result<(), CliError> {
    let client = Client::new(args.socket.unwrap_or_else(default_socket));
    let path = logs_path(&args.instance, args.tail, args.follow);
    let mut out = Output::default();
    block_on(client.stream(&path, |chunk| out.write(chunk)))??;
    out.finish()
}

/// `herd events`: follows the event stream, one line per event (its JSON with `--json`).
pub fn events(args: EventsArgs) -> Result<(), CliError> {
    let client = args.opts.client();
    let path = events_path(args.since.unwrap_or(0), true);
    let mut out = Output::default();
    let mut partial = Vec::new();
    let sink = |chunk: &[u8]| {
        partial.extend_from_slice(chunk);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let text = match serde_json::from_slice::<Event>(&line) {
                Ok(event) if !args.opts.json => table::event_line(&event).into_bytes(),
                _ => line,
            };
            if !out.write(&text) {
                return false;
            }
        }
        true
    };
    block_on(client.stream(&path, sink))??;
    out.finish()
}

/// Standard output for streamed answers: flushed per chunk, and a reader that went away
/// (`herd logs -f x | head`) ends the command quietly.
#[derive(Default)]
struct Output {
    failed: Option<std::io::Error>,
}

impl Output {
    /// Writes `bytes`; false when output is no longer possible.
    fn write(&mut self, bytes: &[u8]) -> bool {
        let mut out = std::io::stdout().lock();
        match out.write_all(bytes).and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                self.failed = Some(e);
                false
            }
        }
    }

    fn finish(self) -> Result<(), CliError> {
        match self.failed {
            Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
            _ => Ok(()),
        }
    }
}

/// Prints an answer: its JSON, or the table of what it holds; for an accepted removal or
/// kill (no JSON to print), what was removed or killed, unless `--json`.
fn print(response: &Response, json: bool, done: Option<&str>) -> Result<(), CliError> {
    let text = match (response, json) {
        (Response::Done, false) if done.is_some() => format!("{}\n", done.unwrap_or_default()),
        (Response::Done, _) => return Ok(()),
        (_, true) => {
            let mut s = serde_json::to_string_pretty(response).unwrap_or_default();
            s.push('\n');
            s
        }
        (Response::Services(list), false) => table::services(list),
        (Response::Service(s), false) => table::services(std::slice::from_ref(s)),
        (Response::Instances(list), false) => table::instances(list),
        (Response::Instance(i), false) => table::instances(std::slice::from_ref(i)),
    };
    write_out(&text)
}

fn write_out(text: &str) -> Result<(), CliError> {
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(CliError::Output)
}

/// The spec to send: the file's, or `current` (for update; an empty one for create) with the
/// flags applied. Checked as the agent checks it.
fn spec_from_args(args: &SpecArgs, current: Option<ServiceSpec>) -> Result<ServiceSpec, CliError> {
    let (what, spec) = match &args.file {
        Some(path) => {
            let bytes = read_spec(path)?;
            let spec = parse_json::<ServiceSpec>(&bytes).map_err(|f| CliError::Spec {
                what: path.display().to_string(),
                body: f.body,
            })?;
            (path.display().to_string(), spec)
        }
        None => (
            "invalid service spec".to_owned(),
            spec_from_flags(args, current)?,
        ),
    };
    spec.validate().map_err(|e| CliError::Spec {
        what,
        body: ErrorBody {
            error: e.to_string(),
            field: Some(e.field),
        },
    })?;
    Ok(spec)
}

fn read_spec(path: &Path) -> Result<Vec<u8>, CliError> {
    let read = |e| CliError::Read(path.to_owned(), e);
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map_err(read)?;
        Ok(bytes)
    } else {
        std::fs::read(path).map_err(read)
    }
}

/// `current` (or nothing) as JSON with each flag given set, parsed back so every field left
/// out gets the API's default.
fn spec_from_flags(args: &SpecArgs, current: Option<ServiceSpec>) -> Result<ServiceSpec, CliError> {
    let mut spec = match current.map(serde_json::to_value) {
        Some(Ok(Value::Object(map))) => map,
        _ => {
            if args.name.is_none() || args.image.is_none() {
                return Err(CliError::Usage(
                    "create needs --name and --image, or -f SPEC.json".into(),
                ));
            }
            Map::new()
        }
    };
    let mut set = |key: &str, value: Value| spec.insert(key.to_owned(), value);
    args.name.as_ref().map(|v| set("name", json!(v)));
    args.image.as_ref().map(|v| set("image", json!(v)));
    args.replicas.map(|v| set("replicas", json!(v)));
    args.vcpus.map(|v| set("vcpus", json!(v)));
    args.memory.map(|v| set("memory_mib", json!(v)));
    args.snapshot_starts
        .map(|v| set("snapshot_starts", json!(v)));
    let probe = match (&args.health_vsock, &args.health_tcp, &args.health_http) {
        (Some(port), _, _) => Some(("vsock", json!({ "port": port }))),
        (_, Some(port), _) => Some(("tcp", json!({ "port": port }))),
        (_, _, Some(h)) => Some(("http", json!({ "port": h.port, "path": h.path }))),
        _ => None,
    };
    if let Some((kind, probe)) = probe {
        set_probe(&mut spec, kind, probe);
    }
    if !args.env.is_empty() {
        let env = spec.entry("env").or_insert_with(|| json!({}));
        if let Value::Object(env) = env {
            for (k, v) in &args.env {
                env.insert(k.clone(), json!(v));
            }
        }
    }
    serde_json::from_value(Value::Object(spec)).map_err(|e| CliError::Spec {
        what: "invalid service spec".into(),
        body: ErrorBody {
            error: e.to_string(),
            field: None,
        },
    })
}

/// Replaces the health check's probe, keeping its timing settings.
fn set_probe(spec: &mut Map<String, Value>, kind: &str, probe: Value) {
    let check = spec.entry("health_check").or_insert_with(|| json!({}));
    if let Value::Object(check) = check {
        for k in ["vsock", "tcp", "http"] {
            check.remove(k);
        }
        check.insert(kind.to_owned(), probe);
    }
}
