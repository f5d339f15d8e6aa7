use std::vec::Vec;

use super::*;

fn from_host(op: u16, host_port: u32, port: u32) -> Hdr {
    Hdr {
        src_port: host_port,
        dst_port: port,
        op,
        ..Hdr::default()
    }
}

/// (op, payload, fwd) of each reply, all addressed back to `host_port` from `port`.
fn sent(r: Replies, host_port: u32, port: u32) -> Vec<(u16, Vec<u8>, u32)> {
    r.iter()
        .map(|r| {
            assert_eq!((r.hdr.src_port, r.hdr.dst_port), (port, host_port));
            (r.hdr.op, r.payload.as_bytes().to_vec(), r.fwd)
        })
        .collect()
}

/// A reply without payload.
fn bare(op: u16, fwd: u32) -> (u16, Vec<u8>, u32) {
    (op, Vec::new(), fwd)
}

/// Opens a stream from `host_port` and sends `line`; returns the answer's payload.
fn check(s: &mut Server, host_port: u32, line: &[u8]) -> Vec<u8> {
    let others = s.open();
    let open = s.packet(&from_host(OP_REQUEST, host_port, 5000), &[]);
    assert_eq!(sent(open, host_port, 5000), [bare(OP_RESPONSE, 0)]);
    let got = sent(
        s.packet(&from_host(OP_RW, host_port, 5000), line),
        host_port,
        5000,
    );
    let n = line.len() as u32;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].0, got[0].2), (OP_RW, n));
    assert_eq!(got[1], bare(OP_SHUTDOWN, n));
    assert_eq!(s.open(), others, "closed after answering");
    // The host's reset for the stream we shut down finds nothing and needs nothing.
    let rst = s.packet(&from_host(OP_RST, host_port, 5000), &[]);
    assert_eq!(rst.iter().count(), 0);
    got[0].1.clone()
}

#[test]
fn health_values_and_their_answers() {
    assert_eq!(Health::parse(b"ok"), Some(Health::Ok));
    assert_eq!(Health::parse(b"fail"), Some(Health::Fail));
    assert_eq!(Health::parse(b"fail-after:2"), Some(Health::FailAfter(2)));
    for bad in [
        &b"OK"[..],
        b"fail-after:",
        b"fail-after:x",
        b"fail-after:-1",
        b"",
    ] {
        assert_eq!(Health::parse(bad), None, "{bad:?}");
    }
    let answers: Vec<bool> = (0..4).map(|n| Health::FailAfter(2).passes(n)).collect();
    assert_eq!(answers, [true, true, false, false]);
    assert!(Health::Ok.passes(u32::MAX) && !Health::Fail.passes(0));
}

#[test]
fn env_var_is_found_only_as_a_member_of_the_top_level_env_object() {
    let doc = br#"{"instance_id":"i-1","hostname":"h","env":{"A":"1","PROBE_HEALTH":"fail"}}"#;
    assert_eq!(env::var(doc, b"PROBE_HEALTH"), Some(&b"fail"[..]));
    assert_eq!(env::var(doc, b"A"), Some(&b"1"[..]));
    assert_eq!(env::var(doc, b"B"), None);
    let spaced = b"{ \"env\" :\n { \"X\" : \"y\" } ,\"args\":[] }";
    assert_eq!(env::var(spaced, b"X"), Some(&b"y"[..]));
    // Decoys in other members, nested values, and escaped quotes are skipped whole.
    let decoys = br#"{"args":["\"env\":{\"PROBE_HEALTH\":\"fail\"}"],
        "network":{"env":{"PROBE_HEALTH":"fail"},"dns":["1.1.1.1"]},"n":12,"t":true,
        "hostname":"PROBE_HEALTH","env":{"NOT_PROBE_HEALTH":"fail","Q":"a\"b","PROBE_HEALTH":"ok"}}"#;
    assert_eq!(env::var(decoys, b"PROBE_HEALTH"), Some(&b"ok"[..]));
    assert_eq!(
        env::var(decoys, b"Q"),
        Some(&br#"a\"b"#[..]),
        "raw, escapes kept"
    );
    assert_eq!(env::var(br#"{"hostname":"h"}"#, b"PROBE_HEALTH"), None);
    assert_eq!(env::var(br#"{"env":{}}"#, b"PROBE_HEALTH"), None);
    assert_eq!(
        env::var(br#"{"env":{"PROBE_HEALTH":1}}"#, b"PROBE_HEALTH"),
        None
    );
    for broken in [
        &br#"{"env":{"PROBE_HEALTH":"fa"#[..],
        br#"{"env":{"PROBE_HEALTH""ok"}}"#,
        br#"{"env""#,
        b"",
        b"[]",
        b"\\",
    ] {
        assert_eq!(env::var(broken, b"PROBE_HEALTH"), None, "{broken:?}");
    }
    let deep = [&[b'['; 40][..], &[b']'; 40][..]].concat();
    let deep = [&br#"{"a":"#[..], &deep, br#","env":{"K":"v"}}"#].concat();
    assert_eq!(
        env::var(&deep, b"K"),
        None,
        "deeper than the scanner follows"
    );
}

#[test]
fn instance_env_wins_over_the_image_and_bad_values_are_ignored() {
    let image = br#"{"entrypoint":["/x"],"env":{"PROBE_HEALTH":"fail","PROBE_EXIT_AFTER":"9"}}"#;
    let instance = br#"{"instance_id":"i","hostname":"h","env":{"PROBE_HEALTH":"fail-after:3"}}"#;
    let mut o = ServeOptions::default();
    o.apply_env(Some(image), Some(instance));
    assert_eq!(o.health, Health::FailAfter(3));
    assert_eq!(o.exit_after, Some(9), "only the image sets it");
    let mut o = ServeOptions::default();
    o.apply_env(
        None,
        Some(br#"{"env":{"PROBE_HEALTH":"sick","PROBE_EXIT_AFTER":"x"}}"#),
    );
    assert_eq!(o, ServeOptions::default());
    o.word(b"port", b"6000");
    o.word(b"port", b"-1");
    o.word(b"other", b"7");
    assert_eq!(o.port, 6000);
}

#[test]
fn health_checks_are_answered_as_the_policy_says_then_shut_down() {
    let mut s = Server::new(5000, Health::FailAfter(2));
    let answers: Vec<Vec<u8>> = (0..4)
        .map(|i| check(&mut s, 1000 + i, b"health\n"))
        .collect();
    assert_eq!(answers, [&b"ok\n"[..], b"ok\n", b"fail\n", b"fail\n"]);
    assert_eq!(s.checks, 4);
    let mut s = Server::new(5000, Health::Ok);
    assert_eq!(check(&mut s, 7, b"health\r\nignored"), b"ok\n");
    assert_eq!(check(&mut s, 7, b"status\n"), b"error\n");
    assert_eq!(check(&mut s, 7, &[b'h'; MAX_LINE + 1]), b"error\n");
    assert_eq!(s.checks, 1, "only health lines are checks");
}

#[test]
fn a_request_line_may_come_in_pieces_on_overlapping_streams() {
    let mut s = Server::new(5000, Health::Fail);
    for port in [1, 2] {
        let r = s.packet(&from_host(OP_REQUEST, port, 5000), &[]);
        assert_eq!(sent(r, port, 5000), [bare(OP_RESPONSE, 0)]);
    }
    assert_eq!(s.open(), 2);
    let r = s.packet(&from_host(OP_RW, 1, 5000), b"hea");
    assert_eq!(r.iter().count(), 0, "waits for the rest of the line");
    let credit = s.packet(&from_host(OP_CREDIT_REQUEST, 1, 5000), &[]);
    assert_eq!(sent(credit, 1, 5000), [bare(OP_CREDIT_UPDATE, 3)]);
    let r = s.packet(&from_host(OP_RW, 2, 5000), b"health\n");
    assert_eq!(sent(r, 2, 5000)[0], (OP_RW, b"fail\n".to_vec(), 7));
    let r = s.packet(&from_host(OP_RW, 1, 5000), b"lth\n");
    assert_eq!(sent(r, 1, 5000)[0], (OP_RW, b"fail\n".to_vec(), 7));
    assert_eq!((s.open(), s.checks), (0, 2));
}

#[test]
fn streams_the_host_ends_are_freed_and_strangers_are_reset() {
    let mut s = Server::new(5000, Health::Ok);
    for port in 1..=MAX_CONNS as u32 {
        s.packet(&from_host(OP_REQUEST, port, 5000), &[]);
    }
    let full = s.packet(&from_host(OP_REQUEST, 99, 5000), &[]);
    assert_eq!(sent(full, 99, 5000), [bare(OP_RST, 0)], "table full");
    s.packet(&from_host(OP_RW, 1, 5000), b"he");
    let bye = s.packet(&from_host(OP_SHUTDOWN, 1, 5000), &[]);
    assert_eq!(sent(bye, 1, 5000), [bare(OP_RST, 2)]);
    assert_eq!(s.packet(&from_host(OP_RST, 2, 5000), &[]).iter().count(), 0);
    let twice = s.packet(&from_host(OP_REQUEST, 3, 5000), &[]);
    assert_eq!(sent(twice, 3, 5000), [bare(OP_RST, 0)]);
    assert_eq!(s.open(), MAX_CONNS - 3);
    assert_eq!(
        check(&mut s, 1, b"health\n"),
        b"ok\n",
        "a freed slot is reused"
    );
    let other_port = s.packet(&from_host(OP_REQUEST, 5, 5001), &[]);
    assert_eq!(sent(other_port, 5, 5001), [bare(OP_RST, 0)]);
    let stray = s.packet(&from_host(OP_RW, 77, 5000), b"health\n");
    assert_eq!(sent(stray, 77, 5000), [bare(OP_RST, 0)]);
    for op in [OP_RST, OP_SHUTDOWN, OP_CREDIT_UPDATE, OP_RESPONSE, 0] {
        assert_eq!(s.packet(&from_host(op, 77, 5000), &[]).iter().count(), 0);
    }
    let zero = s.packet(&from_host(OP_REQUEST, 0, 5000), &[]);
    assert_eq!(
        sent(zero, 0, 5000),
        [bare(OP_RST, 0)],
        "port 0 is no stream"
    );
    let mut v = Vec::new();
    report_num(&mut v, "port", 5000);
    report_num(&mut v, "checks", 3);
    assert_eq!(v, b"probe: serve port=5000\nprobe: serve checks=3\n");
}

#[test]
fn count_and_id_are_answered_and_are_not_health_checks() {
    let mut s = Server::new(5000, Health::FailAfter(1));
    s.ticks = 1234567;
    assert_eq!(check(&mut s, 1, b"count\n"), b"count=1234567\n");
    assert_eq!(check(&mut s, 2, b"id\n"), b"id=none\n");
    s.id = InstanceId::new(b"web-0123abcd").unwrap();
    assert_eq!(check(&mut s, 3, b"id\r\n"), b"id=web-0123abcd\n");
    s.ticks = u64::MAX;
    assert_eq!(
        check(&mut s, 4, b"count\n"),
        b"count=18446744073709551615\n"
    );
    assert_eq!(check(&mut s, 5, b"count extra\n"), b"error\n");
    assert_eq!(s.checks, 0, "count and id are not checks");
    assert_eq!(
        check(&mut s, 6, b"health\n"),
        b"ok\n",
        "so fail-after:1 still passes the first real check"
    );
    let longest = [b'x'; ID_MAX];
    s.id = InstanceId::new(&longest).unwrap();
    let want = [&b"id="[..], &longest, b"\n"].concat();
    assert_eq!(check(&mut s, 7, b"id\n"), want, "the longest id fits whole");
}

#[test]
fn instance_ids_are_taken_only_when_plain_and_short_enough() {
    assert_eq!(
        InstanceId::new(b"web-0123abcd").unwrap().as_bytes(),
        b"web-0123abcd"
    );
    assert_eq!(InstanceId::NONE.as_bytes(), b"none");
    for bad in [
        &b""[..],
        b"has space",
        br#"esc\"aped"#,
        b"tab\t",
        "caf\u{e9}".as_bytes(),
        &[b'x'; ID_MAX + 1],
    ] {
        assert_eq!(InstanceId::new(bad), None, "{:?}", bad.escape_ascii());
    }
}

#[test]
fn the_instance_id_comes_from_the_instance_document_only() {
    let image = br#"{"entrypoint":["/x"],"instance_id":"from-image","env":{}}"#;
    let instance = br#"{"hostname":"instance_id","env":{"instance_id":"e"},"instance_id":"web-1"}"#;
    let mut o = ServeOptions::default();
    o.apply_env(Some(image), Some(instance));
    assert_eq!(o.instance_id.as_bytes(), b"web-1");
    let mut o = ServeOptions::default();
    o.apply_env(Some(image), None);
    assert_eq!(o.instance_id, InstanceId::NONE, "not from the image");
    o.apply_env(None, Some(br#"{"instance_id":"two words"}"#));
    assert_eq!(o.instance_id, InstanceId::NONE, "a bad id is not taken");
}

#[test]
fn string_members_are_found_only_at_the_top_level() {
    let doc = br#"{"env":{"instance_id":"no"},"args":["\"instance_id\":\"no\""],
        "network":{"instance_id":"no"},"n":1,"instance_id" : "yes","later":"x"}"#;
    assert_eq!(env::string(doc, b"instance_id"), Some(&b"yes"[..]));
    assert_eq!(env::string(doc, b"later"), Some(&b"x"[..]));
    assert_eq!(env::string(doc, b"n"), None, "not a string");
    assert_eq!(env::string(doc, b"missing"), None);
    assert_eq!(env::string(br#"{"instance_id":"cut"#, b"instance_id"), None);
}

#[test]
fn only_complete_objects_are_whole() {
    assert!(env::whole_object(br#" {"a":{"b":["}",1]},"c":"\"{"} "#));
    assert!(env::whole_object(b"{}"));
    for broken in [
        &br#"{"a":"b""#[..],
        br#"{"a":"b"}}"#,
        br#"{"a":"b"},"#,
        br#"{"a":"b}"#,
        b"[]",
        b"\"s\"",
        b"",
    ] {
        assert!(!env::whole_object(broken), "{:?}", broken.escape_ascii());
    }
}
