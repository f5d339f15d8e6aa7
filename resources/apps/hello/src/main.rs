//! `hello`: the smallest useful bootable app. It prints its arguments and its environment
//! (sorted, one `env KEY=VALUE` line each) and exits with the status in `EXIT_STATUS`
//! (default 0), so tests can see exactly what configuration reached the app.

use std::process::ExitCode;

/// The exit status asked for by `EXIT_STATUS`: 0-255, anything else is 0 with a warning.
fn requested_status(value: Option<&str>) -> Result<u8, String> {
    match value {
        None => Ok(0),
        Some(v) => v
            .trim()
            .parse::<u8>()
            .map_err(|_| format!("EXIT_STATUS={v:?} is not 0-255")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("hello from herd: {} argument(s)", args.len());
    for (i, a) in args.iter().enumerate() {
        println!("arg {i} {a}");
    }
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in &env {
        println!("env {k}={v}");
    }
    let status =
        requested_status(std::env::var("EXIT_STATUS").ok().as_deref()).unwrap_or_else(|e| {
            eprintln!("hello: {e}; exiting 0");
            0
        });
    println!("hello: exiting with status {status}");
    ExitCode::from(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_comes_from_env_and_is_validated() {
        assert_eq!(requested_status(None), Ok(0));
        assert_eq!(requested_status(Some("42")), Ok(42));
        assert!(requested_status(Some("256")).is_err());
        assert!(requested_status(Some("x")).is_err());
    }
}
