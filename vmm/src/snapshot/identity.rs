//! A restored VM's new identity, sent to the guest as one `restored {json}` line on the
//! control port before its vCPUs run: a fresh generation id and fresh entropy on every
//! restore (clones must not share either), plus whatever identity the caller gives in
//! `--identity FILE` (the agent's instance id, hostname and network settings), which
//! herd-vmm passes on without interpreting beyond checking it is a small JSON object.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Largest identity file accepted: the whole line must stay well inside the serial backlog.
pub const IDENTITY_MAX: usize = 3 * 1024;
/// Members herd-vmm sets itself.
const RESERVED: [&str; 2] = ["generation_id", "entropy"];

/// Errors reading an identity file or making the line.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity file {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("identity file {0} is over {IDENTITY_MAX} bytes")]
    TooBig(PathBuf),
    #[error("identity file {0} is not JSON")]
    Json(PathBuf, #[source] serde_json::Error),
    #[error("identity file {0} is not a JSON object")]
    NotAnObject(PathBuf),
    #[error("identity file {0} sets {1}, which herd-vmm sets itself")]
    Reserved(PathBuf, &'static str),
    #[error("cannot draw random bytes for the new identity")]
    Random(#[source] io::Error),
}

/// Members to add to the guest's `restored` line.
pub type IdentityMembers = Map<String, Value>;

/// Reads and checks `--identity FILE`.
pub fn read_identity(path: &Path) -> Result<IdentityMembers, IdentityError> {
    let read_err = |e| IdentityError::Read(path.to_owned(), e);
    let mut text = Vec::new();
    File::open(path)
        .map_err(read_err)?
        .take(IDENTITY_MAX as u64 + 1)
        .read_to_end(&mut text)
        .map_err(read_err)?;
    parse_identity(path, &text)
}

fn parse_identity(path: &Path, text: &[u8]) -> Result<IdentityMembers, IdentityError> {
    if text.len() > IDENTITY_MAX {
        return Err(IdentityError::TooBig(path.to_owned()));
    }
    let value: Value =
        serde_json::from_slice(text).map_err(|e| IdentityError::Json(path.to_owned(), e))?;
    let Value::Object(members) = value else {
        return Err(IdentityError::NotAnObject(path.to_owned()));
    };
    if let Some(name) = RESERVED.iter().find(|n| members.contains_key(**n)) {
        return Err(IdentityError::Reserved(path.to_owned(), name));
    }
    Ok(members)
}

/// The control-port line for one restore: `restored {...}\n`, all on one line.
pub fn restored_line(extra: Option<&IdentityMembers>) -> Result<Vec<u8>, IdentityError> {
    let mut generation = [0u8; 16];
    let mut entropy = [0u8; 32];
    crate::sys::random::fill(&mut generation).map_err(IdentityError::Random)?;
    crate::sys::random::fill(&mut entropy).map_err(IdentityError::Random)?;
    let mut members = Map::new();
    members.insert("generation_id".into(), hex::encode(generation).into());
    members.insert("entropy".into(), hex::encode(entropy).into());
    if let Some(extra) = extra {
        members.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    // serde_json escapes control characters, so the object cannot contain a newline.
    let mut line = b"restored ".to_vec();
    line.extend(serde_json::to_vec(&Value::Object(members)).expect("a JSON map encodes"));
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_has_fresh_ids_and_the_callers_members_on_one_line() {
        let extra = parse_identity(
            Path::new("id.json"),
            br#"{"instance_id":"web-2","hostname":"a\nb"}"#,
        )
        .unwrap();
        let one = restored_line(Some(&extra)).unwrap();
        let two = restored_line(Some(&extra)).unwrap();
        let text = String::from_utf8(one.clone()).unwrap();
        assert!(
            text.starts_with("restored {") && text.ends_with("}\n"),
            "{text}"
        );
        assert_eq!(text.matches('\n').count(), 1);
        let parse = |l: &[u8]| -> Value { serde_json::from_slice(&l[9..]).unwrap() };
        let (a, b) = (parse(&one), parse(&two));
        assert_eq!(a["instance_id"], "web-2");
        assert_eq!(a["generation_id"].as_str().unwrap().len(), 32);
        assert_eq!(a["entropy"].as_str().unwrap().len(), 64);
        assert_ne!(a["generation_id"], b["generation_id"]);
        assert_ne!(a["entropy"], b["entropy"]);
    }

    #[test]
    fn identity_files_that_are_not_small_objects_or_set_reserved_members_are_refused() {
        let p = Path::new("id.json");
        assert!(matches!(
            parse_identity(p, b"[1]"),
            Err(IdentityError::NotAnObject(_))
        ));
        assert!(matches!(
            parse_identity(p, b"{"),
            Err(IdentityError::Json(..))
        ));
        let err = parse_identity(p, br#"{"entropy":"00"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "identity file id.json sets entropy, which herd-vmm sets itself"
        );
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(IDENTITY_MAX));
        assert!(matches!(
            parse_identity(p, big.as_bytes()),
            Err(IdentityError::TooBig(_))
        ));
    }
}
