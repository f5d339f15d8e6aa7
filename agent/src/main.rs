//! `herd`: builds bootable-app images, keeps the local store, runs instances, and runs the
//! agent (`herd agent`) and is its client (`herd service`, `herd ps`, `herd kill`, `herd logs`,
//! `herd events`).
//!
//! This file only parses the command line, dispatches to the library and turns errors into
//! one line (`herd: error: a: b: c`) and a sysexits-style status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herd::agent::cli::{EventsArgs, KillArgs, LogsArgs, PsArgs, ServiceArgs};
use herd::agent::config::AgentArgs;
use herd::image::cli::{self, BuildArgs, ImagesArgs, InspectArgs, LoadArgs, RmArgs, SaveArgs};
use herd::image::exit;

const AFTER_HELP: &str = "\
Exit status: 0 on success; `herd run` exits with the app's status. Errors: 64 bad usage
(also an invalid or ambiguous image reference), 65 unusable input (bad config, not an ELF,
corrupt blob or archive; a request the agent refused), 66 missing input (file, image, library,
kernel; a service or instance the agent does not know), 69 the agent is not reachable, 70
internal error.";

/// Build bootable-app images and run them as disposable microVMs.
#[derive(Debug, Parser)]
#[command(name = "herd", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// herd's state directory; images live in PATH/images [default: $HERD_HOME, else
    /// /var/lib/herd].
    #[arg(long, global = true, value_name = "PATH")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image from an ELF binary or a directory; prints its digest.
    Build(Box<BuildArgs>),
    /// List the images in the store.
    Images(ImagesArgs),
    /// Inspect or remove images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Write one image as an OCI image layout tarball.
    Save(SaveArgs),
    /// Import the images of an OCI image layout tarball, verifying every blob.
    Load(LoadArgs),
    /// Boot an image in a microVM attached to the console.
    Run(Box<herd::run::RunArgs>),
    /// Run the agent: serve the API and keep every service's instances running.
    Agent(Box<AgentArgs>),
    /// Create, change, scale, remove and list the agent's services.
    Service(ServiceArgs),
    /// List the agent's instances (running, and recently ended).
    Ps(PsArgs),
    /// Kill an instance; the agent replaces it.
    Kill(KillArgs),
    /// Print an instance's console output (-f: and follow it until the instance ends).
    Logs(LogsArgs),
    /// Follow the agent's events: instances started, healthy, exited, replaced; services
    /// created, scaled, rolled out, rolled back.
    Events(EventsArgs),
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Show an image's config, manifest and blobs as JSON.
    Inspect(InspectArgs),
    /// Remove an image's ref and every blob no other image uses.
    Rm(RmArgs),
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let home = cli.home.clone().unwrap_or_else(herd::store::default_home);
    match cli.command {
        Command::Build(args) => cli::build(&home, *args)?,
        Command::Images(args) => cli::images(&home, args)?,
        Command::Image(ImageCommand::Inspect(args)) => cli::inspect(&home, args)?,
        Command::Image(ImageCommand::Rm(args)) => cli::rm(&home, args)?,
        Command::Save(args) => cli::save(&home, args)?,
        Command::Load(args) => cli::load(&home, args)?,
        Command::Run(args) => {
            let status = herd::run::execute(*args, &home)?;
            return Ok(u8::try_from(status).unwrap_or(exit::SOFTWARE));
        }
        Command::Agent(args) => herd::agent::run(*args, &home)?,
        Command::Service(args) => herd::agent::cli::service(args)?,
        Command::Ps(args) => herd::agent::cli::ps(args)?,
        Command::Kill(args) => herd::agent::cli::kill(args)?,
        Command::Logs(args) => herd::agent::cli::logs(args)?,
        Command::Events(args) => herd::agent::cli::events(args)?,
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    match run(cli) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("herd: error: {e:#}");
            let code = e
                .chain()
                .find_map(|e| cli::exit_code_of(e).or_else(|| herd::agent::cli::exit_code_of(e)))
                .unwrap_or(exit::SOFTWARE);
            ExitCode::from(code)
        }
    }
}
