//! Feeds the agent API's JSON request bodies: the input is a body, decoded exactly as the
//! router's `JsonBody` extractor decodes it (`reject::parse_json`) as a `ServiceSpec` (the body
//! of `POST /v1/services` and `PUT /v1/services/{name}`), which is then validated as the
//! handlers do, and as a `ScaleBody` (`POST /v1/services/{name}/scale`).
//!
//! Must hold: no panic; a refused body is a 400 with a message; a spec that validates comes
//! back unchanged, and still valid, from the body the client's `encode` sends for it (so
//! nothing the agent accepts is lost or altered on the way from `herd` to the agent), and its
//! name is one path segment as is; the same round trip holds for a scale body.
#![no_main]

use herd::agent::api::encode;
use herd::agent::api::reject::parse_json;
use herd::agent::api::routes::ScaleBody;
use herd::agent::api::{Failure, HttpCall};
use herd::agent::types::Request;
use herd::fleet::ServiceSpec;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

fuzz_target!(|body: &[u8]| {
    if let Some(spec) = decoded::<ServiceSpec>(body)
        && spec.validate().is_ok()
    {
        check_spec_round_trip(&spec);
    }
    if let Some(scale) = decoded::<ScaleBody>(body) {
        let call = encode(&Request::ScaleService {
            name: "web".into(),
            replicas: scale.replicas,
        });
        assert_eq!(decoded::<ScaleBody>(&sent_body(&call)), Some(scale));
    }
});

/// `body` decoded as the API decodes it; a refusal must be a 400 that says why.
fn decoded<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    match parse_json::<T>(body) {
        Ok(v) => Some(v),
        Err(Failure { status, body }) => {
            assert_eq!(status.as_u16(), 400, "{body:?}");
            assert!(!body.error.is_empty());
            None
        }
    }
}

fn sent_body(call: &HttpCall) -> Vec<u8> {
    call.body.clone().expect("this request has a JSON body")
}

fn check_spec_round_trip(spec: &ServiceSpec) {
    for request in [
        Request::CreateService(spec.clone()),
        Request::UpdateService(spec.clone()),
    ] {
        let call = encode(&request);
        let back = decoded::<ServiceSpec>(&sent_body(&call)).expect("the client's body decodes");
        assert_eq!(&back, spec);
        assert!(back.validate().is_ok());
        if let Request::UpdateService(_) = request {
            // The handler compares the path's name with the body's: a valid name must not
            // need percent-encoding, or the two could never agree.
            assert_eq!(call.path, format!("/v1/services/{}", spec.name));
        }
    }
}
