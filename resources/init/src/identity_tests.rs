//! Unit tests of [`Identity`] parsing and of the decisions of [`Current::restore`].

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::*;

const GEN: &str = "00112233445566778899aabbccddeeff";
const ENTROPY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// A request's JSON: the two host members, then `extra` members.
fn request(extra: Value) -> String {
    let mut v = json!({"generation_id": GEN, "entropy": ENTROPY});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v.to_string()
}

fn booted() -> Current {
    let network = NetworkConfig {
        address: "10.0.0.2/24".into(),
        gateway: Some("10.0.0.1".into()),
        dns: vec!["10.0.0.1".into()],
    };
    Current::booted(
        Some("web-0000aaaa".into()),
        Some("web-0000aaaa".into()),
        Some(network.parse().unwrap()),
    )
}

#[test]
fn a_full_request_is_parsed_into_checked_values() {
    let text = request(json!({
        "instance_id": "web-1234abcd",
        "hostname": "web-1234abcd",
        "mac": "02:5A:00:00:00:01",
        "network": {"address": "10.0.0.7/24", "gateway": "10.0.0.1", "dns": ["9.9.9.9"]},
    }));
    let id = Identity::from_json(&text).unwrap();
    assert_eq!(id.mac.unwrap().octets(), [2, 0x5a, 0, 0, 0, 1]);
    assert_eq!(id.generation_id, GEN);
    let want: Vec<u8> = (0..32).collect();
    assert_eq!(id.entropy.0.as_slice(), want.as_slice());
    assert_eq!(id.instance_id.as_deref(), Some("web-1234abcd"));
    assert_eq!(id.hostname.as_deref(), Some("web-1234abcd"));
    let net = id.network.unwrap();
    assert_eq!((net.address, net.prefix), (Ipv4Addr::new(10, 0, 0, 7), 24));
    assert_eq!(net.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(net.dns.len(), 1);
}

#[test]
fn only_the_two_host_members_are_required_and_hex_may_be_upper_case() {
    let text = format!(
        r#"{{"entropy":"{}","generation_id":"{}"}}"#,
        ENTROPY.to_uppercase(),
        GEN.to_uppercase()
    );
    let id = Identity::from_json(&text).unwrap();
    assert_eq!(id.generation_id, GEN, "kept in lower case");
    assert_eq!(id.entropy.0[31], 0x1f);
    assert_eq!(
        (id.instance_id, id.hostname, id.network, id.mac),
        (None, None, None, None)
    );
}

#[test]
fn malformed_requests_are_refused_naming_what_is_wrong() {
    let cases: [(String, &str); 18] = [
        (request(json!({"mtu": 1500})), "not a JSON object"),
        (r#"{"entropy":"00"}"#.into(), "not a JSON object"),
        ("[]".into(), "not a JSON object"),
        (
            format!("{} trailing", request(json!({}))),
            "not a JSON object",
        ),
        (
            format!(r#"{{"generation_id":"{GEN}","generation_id":"{GEN}","entropy":"{ENTROPY}"}}"#),
            "not a JSON object",
        ),
        (
            request(json!({"generation_id": &GEN[1..]})),
            "generation_id must be 32 hex digits",
        ),
        (
            request(json!({"generation_id": format!("{}0g", &GEN[2..])})),
            "generation_id must be",
        ),
        (
            request(json!({"entropy": &ENTROPY[2..]})),
            "entropy must be 64 hex digits",
        ),
        (request(json!({"entropy": 7})), "not a JSON object"),
        (request(json!({"instance_id": ""})), "instance_id must be"),
        (
            request(json!({"instance_id": "a\nb"})),
            "instance_id must be",
        ),
        (
            request(json!({"hostname": "h".repeat(65)})),
            "hostname \"hhhh",
        ),
        (
            request(json!({"network": {"address": "10.0.0.7"}})),
            "network: address \"10.0.0.7\" needs a prefix length",
        ),
        (
            request(json!({"network": {"address": "10.0.0.7/24", "gateway": "10.0.9.1"}})),
            "network: gateway 10.0.9.1 must be another address inside",
        ),
        (
            request(json!({"mac": "01:00:5e:00:00:01"})),
            "mac: 01:00:5e:00:00:01 is a multicast address",
        ),
        (
            request(json!({"mac": "00:00:00:00:00:00"})),
            "mac: 00:00:00:00:00:00 is not an interface address",
        ),
        (
            request(json!({"mac": "02:00:00:00:01"})),
            "mac: \"02:00:00:00:01\" is not six two-digit hex octets",
        ),
        (
            request(json!({"mac": [2, 0, 0, 0, 0, 1]})),
            "not a JSON object",
        ),
    ];
    for (text, want) in cases {
        let err = crate::boot::one_line(&Identity::from_json(&text).expect_err(&text));
        assert!(err.starts_with(want), "{text}: {err}");
    }
}

#[test]
fn the_entropy_never_shows_in_debug_output_or_the_record() {
    let text = request(json!({"instance_id": "web-1"}));
    let id = Identity::from_json(&text).unwrap();
    let hex_tail = &ENTROPY[40..];
    // Its bytes are 0 to 31: as a derived Debug would print them, and as hex.
    let leaks = |text: &str| text.contains("30, 31") || text.contains(hex_tail);
    let shown = format!("{id:?}");
    assert!(
        shown.contains("Entropy(32 bytes)") && !leaks(&shown),
        "{shown}"
    );
    let restore = booted().restore(id);
    assert!(!leaks(&format!("{restore:?}")), "{restore:?}");
    assert!(!leaks(&restore.record), "{}", restore.record);
    assert!(!restore.record.contains("entropy"), "{}", restore.record);
}

#[test]
fn a_restore_replaces_what_it_names_and_keeps_the_rest() {
    let mut current = booted();
    let bare = Identity::from_json(&request(json!({}))).unwrap();
    let restore = current.restore(bare);
    assert_eq!(
        (restore.hostname, restore.network, restore.mac),
        (None, None, None),
        "nothing to move"
    );
    assert_eq!(
        current.mac, None,
        "no address known before a restore names one"
    );
    assert_eq!(
        restore.summary,
        format!("restored as web-0000aaaa (generation {GEN})")
    );
    assert_eq!(current.hostname.as_deref(), Some("web-0000aaaa"));
    assert_eq!(current.generation_id.as_deref(), Some(GEN));

    let text = request(json!({
        "instance_id": "web-1234abcd",
        "hostname": "clone",
        "mac": "02:00:00:00:00:07",
        "network": {"address": "10.0.0.7/24", "gateway": "10.0.0.1"},
    }));
    let restore = current.restore(Identity::from_json(&text).unwrap());
    assert_eq!(restore.hostname.as_deref(), Some("clone"));
    let mac: MacAddr = "02:00:00:00:00:07".parse().unwrap();
    assert_eq!((restore.mac, current.mac), (Some(mac), Some(mac)));
    let net = restore.network.unwrap();
    assert_eq!(net.address, Ipv4Addr::new(10, 0, 0, 7));
    assert_eq!(current.network, Some(net), "the new network, dns and all");
    assert_eq!(current.instance_id.as_deref(), Some("web-1234abcd"));
    assert!(
        restore
            .summary
            .starts_with("restored as web-1234abcd (generation ")
    );

    // A later restore naming no mac changes none and keeps the last one in the record.
    let restore = current.restore(Identity::from_json(&request(json!({}))).unwrap());
    assert_eq!((restore.mac, current.mac), (None, Some(mac)));
    assert!(restore.record.contains(r#""mac":"02:00:00:00:00:07""#));

    let mut nameless = Current::default();
    let restore = nameless.restore(Identity::from_json(&request(json!({}))).unwrap());
    assert!(restore.summary.starts_with("restored as none (generation "));
}

#[test]
fn the_record_is_one_line_of_json_with_every_member() {
    let mut current = booted();
    let text = request(json!({"instance_id": "web-1234abcd", "hostname": "clone",
        "mac": "02:00:00:00:00:0B"}));
    let restore = current.restore(Identity::from_json(&text).unwrap());
    assert!(restore.record.ends_with('\n') && restore.record.lines().count() == 1);
    let record: Value = serde_json::from_str(&restore.record).unwrap();
    let want = json!({
        "instance_id": "web-1234abcd",
        "hostname": "clone",
        "generation_id": GEN,
        "network": {"address": "10.0.0.2/24", "gateway": "10.0.0.1", "dns": ["10.0.0.1"]},
        "mac": "02:00:00:00:00:0b",
    });
    assert_eq!(record, want);
    let empty: Value = serde_json::from_str(&Current::default().record()).unwrap();
    let nulls = json!({"instance_id": null, "hostname": null, "generation_id": null,
        "network": null, "mac": null});
    assert_eq!(empty, nulls);
}
