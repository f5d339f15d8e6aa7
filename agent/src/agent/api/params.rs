//! Path and query parameters that name things, checked by shape where they enter: a service
//! name, an instance id, an image reference. Ids and names become file names (an instance's
//! directory is named by its id, which starts with its service's name), so a value that
//! could not name anything (`..`, `/etc/passwd`, a 10 KiB string) is refused here with a
//! 400 naming the parameter, before it reaches the supervisor, the store or the disk. The
//! files are opened confined to their directory as well (`crate::confine`): this check is the
//! first lock, not the only one.

use axum::extract::FromRequestParts;
use axum::http::{StatusCode, request::Parts};

use super::reject::{Failure, PathParam};
use crate::fleet::spec::{INSTANCE_ID_SHAPE, valid_instance_id, valid_service_name};
use crate::store::Reference;

/// What a service name can look like, for errors.
pub const SERVICE_NAME_SHAPE: &str =
    "1 to 32 characters: lowercase letters, digits and '-', starting with a letter";

/// Most characters of a refused value quoted back in the error.
const SHOWN: usize = 64;

/// `{name}`: a service name.
pub struct ServiceName(pub String);

/// `{id}`: an instance id.
pub struct InstanceId(pub String);

/// `{ref}`: an image reference (`name:version`, `name`, or a digest or its prefix).
pub struct ImageRef(pub String);

/// A 400 naming `field`, quoting (the start of) `value`.
pub fn refuse(field: &str, value: &str, shape: &str) -> Failure {
    let shown: String = value.chars().take(SHOWN).collect();
    let more = if shown.len() < value.len() { "..." } else { "" };
    Failure::new(
        StatusCode::BAD_REQUEST,
        format!("{field}: {shown:?}{more} is not {shape}"),
        Some(field.to_owned()),
    )
}

/// Checks a service name given as `field`.
pub fn service_name(field: &str, value: String) -> Result<String, Failure> {
    if valid_service_name(&value) {
        Ok(value)
    } else {
        Err(refuse(
            field,
            &value,
            &format!("a service name ({SERVICE_NAME_SHAPE})"),
        ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ServiceName {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        let PathParam(value) = PathParam::from_request_parts(parts, state).await?;
        service_name("name", value).map(Self)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for InstanceId {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        let PathParam(value) = PathParam::from_request_parts(parts, state).await?;
        if valid_instance_id(&value) {
            Ok(Self(value))
        } else {
            let shape = format!("an instance id ({INSTANCE_ID_SHAPE})");
            Err(refuse("id", &value, &shape))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ImageRef {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        let PathParam(value) = PathParam::from_request_parts(parts, state).await?;
        match Reference::parse(&value) {
            Ok(_) => Ok(Self(value)),
            Err(_) => Err(refuse(
                "ref",
                &value,
                "an image reference (name:version, name, or sha256:HEX or HEX, at least 4 hex \
                 digits)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_field_and_quote_only_the_start_of_long_values() {
        let long = "a".repeat(10_000);
        let f = refuse("id", &long, "an instance id");
        assert_eq!(f.status, StatusCode::BAD_REQUEST);
        assert_eq!(f.body.field.as_deref(), Some("id"));
        assert!(f.body.error.len() < 200, "{}", f.body.error);
        assert!(f.body.error.contains("\"..."), "{}", f.body.error);
    }

    #[test]
    fn service_names_are_checked_by_shape() {
        assert_eq!(service_name("name", "web-1".into()).unwrap(), "web-1");
        for bad in ["", "..", "../etc", "/etc/passwd", "Web", "a/b", "a.b"] {
            let f = service_name("service", bad.into()).unwrap_err();
            assert_eq!(f.body.field.as_deref(), Some("service"), "{bad}");
        }
    }

    #[test]
    fn instance_ids_are_a_service_name_and_8_hex_digits() {
        for good in ["web-0123abcd", "web-1-deadbeef", "a-00000000"] {
            assert!(valid_instance_id(good), "{good}");
        }
        for bad in [
            "",
            "..",
            "web",
            "web-",
            "web-0123abc",
            "web-0123abcde",
            "web-0123ABCD",
            "-0123abcd",
            "../web-0123abcd",
            "web-0123abcd/..",
            "/web-0123abcd",
            "web.0123abcd",
        ] {
            assert!(!valid_instance_id(bad), "{bad}");
        }
        let id = crate::run::new_instance_id("web-1");
        assert!(valid_instance_id(&id), "{id}");
    }
}
