//! `herd run`: boots one instance of an image in herd-vmm, attached to its console, with the
//! instance's configuration appended at boot. (Being written; see docs/image-format.md.)

use std::path::PathBuf;

/// Options of `herd run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Image: `name:version`, `name` (newest), or a digest prefix.
    pub image: String,
    /// Environment variable for the app, `KEY=VALUE` (repeatable; wins over --env-file).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// File of `KEY=VALUE` lines (repeatable).
    #[arg(long = "env-file", value_name = "PATH")]
    pub env_files: Vec<PathBuf>,
    /// vCPUs (default: the image's).
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Memory in MiB (default: the image's).
    #[arg(long)]
    pub memory: Option<u32>,
    /// Arguments for the app, replacing the image's default args.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Errors of `herd run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("herd run is not implemented yet")]
    NotYet,
}

/// Runs the instance; returns the exit status herd should exit with.
pub fn execute(_args: RunArgs) -> Result<i32, RunError> {
    Err(RunError::NotYet)
}
