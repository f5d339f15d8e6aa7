//! `herd`: builds bootable-app images, keeps the local store and runs instances.
//!
//! This file only parses the command line, dispatches to the library and turns errors into
//! one line (`herd: error: a: b: c`) and a sysexits-style status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herd::image::cli::{self, BuildArgs, ImagesArgs, InspectArgs, LoadArgs, RmArgs, SaveArgs};
use herd::image::exit;

const AFTER_HELP: &str = "\
Exit status: 0 on success; `herd run` exits with the app's status. Errors: 64 bad usage
(also an invalid or ambiguous image reference), 65 unusable input (bad config, not an ELF,
corrupt blob or archive), 66 missing input (file, image, library, kernel), 70 internal error.";

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
                .find_map(cli::exit_code_of)
                .unwrap_or(exit::SOFTWARE);
            ExitCode::from(code)
        }
    }
}
