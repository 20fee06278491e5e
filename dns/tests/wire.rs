//! The wire: every response is a well-formed message with nothing after its
//! last record (also when cut to the asker's buffer), and bad input —
//! truncated and random packets, compression loops, huge label counts, odd
//! opcodes and counts — gets FORMERR (or another error code) or no answer,
//! never a panic.

mod support;

use std::net::Ipv4Addr;

use fairlead_dns::{Handler, Index, PodsMode, Protocol};
use fairlead_model::{Change, ModelWriter, decode};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use support::{config, handler, model, query_bytes, src};

/// Parses `raw` strictly: a message, and not one byte more.
fn strict(raw: &[u8]) -> Message {
    let mut decoder = BinDecoder::new(raw);
    let message = Message::read(&mut decoder).expect("a well-formed message");
    assert!(
        decoder.is_empty(),
        "{} bytes after the last record of a {}-byte message",
        decoder.len(),
        raw.len()
    );
    message
}

fn fixtures_handler() -> Handler {
    let (_writer, snapshot) = model();
    handler(Index::build(config(PodsMode::Insecure), &snapshot))
}

/// A headless Service with `n` ready endpoints.
fn big_handler(n: u16) -> Handler {
    let (mut writer, _rx) = ModelWriter::new();
    let endpoints: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            serde_json::json!({"addresses": [Ipv4Addr::new(10, 1, hi, lo).to_string()]})
        })
        .collect();
    let objects = [
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "big", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}
        }),
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "big-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "big"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}],
            "endpoints": endpoints,
        }),
    ];
    writer.apply(objects.into_iter().map(|o| Change::Upsert {
        object: decode(o).unwrap(),
        origin: None,
    }));
    writer.set_synced();
    handler(Index::build(config(PodsMode::Disabled), &writer.snapshot()))
}

async fn raw(handler: &Handler, bytes: &[u8], protocol: Protocol) -> Option<Message> {
    handler
        .answer_raw(bytes, src(), protocol)
        .await
        .map(|r| strict(&r))
}

#[tokio::test]
async fn large_answers_fit_the_buffer_with_nothing_trailing() {
    let handler = big_handler(300);
    let name = "big.default.svc.cluster.local.";
    for (edns, protocol, limit) in [
        (None, Protocol::Udp, 512),
        (Some(512), Protocol::Udp, 512),
        (Some(1232), Protocol::Udp, 1232),
        (Some(4096), Protocol::Udp, 1232), // capped by --dns-max-udp-payload
        (None, Protocol::Tcp, 65535),
    ] {
        for qtype in [RecordType::A, RecordType::SRV] {
            let bytes = query_bytes(name, qtype, DNSClass::IN, edns);
            let response = handler.answer_raw(&bytes, src(), protocol).await.unwrap();
            assert!(
                response.len() <= limit,
                "{edns:?} {protocol}: {}",
                response.len()
            );
            let message = strict(&response);
            assert_eq!(message.metadata.response_code, ResponseCode::NoError);
            assert_eq!(
                message.edns.is_some(),
                edns.is_some(),
                "OPT present iff asked"
            );
            if protocol == Protocol::Tcp {
                assert!(!message.metadata.truncation);
                assert_eq!(message.answers.len(), 300);
            } else {
                assert!(message.metadata.truncation, "{edns:?} {qtype}");
                assert!(!message.answers.is_empty() && message.answers.len() < 300);
                assert!(message.additionals.is_empty());
            }
        }
    }
}

#[tokio::test]
async fn every_prefix_of_a_query_is_formerr_or_dropped() {
    let handler = fixtures_handler();
    let bytes = query_bytes(
        "web.shop.svc.cluster.local.",
        RecordType::A,
        DNSClass::IN,
        Some(1232),
    );
    for len in 0..bytes.len() {
        let response = raw(&handler, &bytes[..len], Protocol::Udp).await;
        if len < 12 {
            assert!(response.is_none(), "no header, no answer ({len} bytes)");
        } else {
            let response = response.expect("a header gets an answer");
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::FormErr,
                "{len} bytes"
            );
            assert_eq!(response.metadata.id, 4242);
        }
    }
    let whole = raw(&handler, &bytes, Protocol::Udp).await.unwrap();
    assert_eq!(whole.metadata.response_code, ResponseCode::NoError);
}

fn header(id: u16, flags: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    [id, flags, qd, an, ns, ar]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

#[tokio::test]
async fn compression_loops_and_huge_names_are_formerr() {
    let handler = fixtures_handler();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // The question's name points at itself.
    let mut p = header(1, 0x0100, 1, 0, 0, 0);
    p.extend([0xC0, 12, 0, 1, 0, 1]);
    cases.push(("self pointer", p));
    // Two pointers pointing at each other.
    let mut p = header(2, 0x0100, 1, 0, 0, 0);
    p.extend([1, b'a', 0xC0, 16, 0xC0, 12, 0, 1, 0, 1]);
    cases.push(("pointer pair", p));
    // A forward pointer past the end.
    let mut p = header(3, 0x0100, 1, 0, 0, 0);
    p.extend([0xC0, 200, 0, 1, 0, 1]);
    cases.push(("pointer past the end", p));
    // 200 one-letter labels: longer than 255 bytes.
    let mut p = header(4, 0x0100, 1, 0, 0, 0);
    for _ in 0..200 {
        p.extend([1, b'a']);
    }
    p.extend([0, 0, 1, 0, 1]);
    cases.push(("name over 255 bytes", p));
    // 150 questions, each name one label plus a pointer to the previous
    // one: the later names grow past 255 bytes.
    let mut p = header(5, 0x0100, 150, 0, 0, 0);
    let mut previous = 12u16;
    p.extend([1, b'a', 0, 0, 1, 0, 1]);
    for _ in 1..150 {
        let at = u16::try_from(p.len()).unwrap();
        p.extend([1, b'b']);
        p.extend((0xC000 | previous).to_be_bytes());
        p.extend([0, 1, 0, 1]);
        previous = at;
    }
    cases.push(("pointer chain", p));
    // A label length with the reserved 0b01/0b10 prefixes.
    let mut p = header(6, 0x0100, 1, 0, 0, 0);
    p.extend([0x41, b'a', 0, 0, 1, 0, 1]);
    cases.push(("extended label type", p));
    // A record count far beyond the bytes.
    let mut p = header(7, 0x0100, 1, 0xFFFF, 0xFFFF, 0xFFFF);
    p.extend([0, 0, 1, 0, 1]);
    cases.push(("huge counts", p));
    for (what, packet) in cases {
        let response = raw(&handler, &packet, Protocol::Udp).await;
        let response = response.unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::FormErr,
            "{what}"
        );
    }
}

#[tokio::test]
async fn odd_messages_get_the_right_error() {
    let handler = fixtures_handler();
    let question = {
        let q = query_bytes(
            "web.shop.svc.cluster.local.",
            RecordType::A,
            DNSClass::IN,
            None,
        );
        q[12..].to_vec()
    };
    let with = |flags: u16, qd: u16, body: &[u8]| {
        let mut p = header(9, flags, qd, 0, 0, 0);
        p.extend(body);
        p
    };
    // A response is never answered (reflection).
    assert!(
        raw(&handler, &with(0x8100, 1, &question), Protocol::Udp)
            .await
            .is_none()
    );
    // No question, two questions.
    let none = raw(&handler, &with(0x0100, 0, &[]), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(none.metadata.response_code, ResponseCode::FormErr);
    let two = [question.clone(), question.clone()].concat();
    let two = raw(&handler, &with(0x0100, 2, &two), Protocol::Udp)
        .await
        .unwrap();
    assert_eq!(two.metadata.response_code, ResponseCode::FormErr);
    // NOTIFY (opcode 4) and UPDATE (opcode 5) are not implemented.
    for opcode in [4u16, 5] {
        let r = raw(&handler, &with(opcode << 11, 1, &question), Protocol::Udp)
            .await
            .unwrap();
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::NotImp,
            "opcode {opcode}"
        );
    }
    // EDNS version 1: BADVERS (in the OPT record's extended rcode).
    let mut p = header(9, 0x0100, 1, 0, 0, 1);
    p.extend(&question);
    p.extend([0, 0, 41, 0x04, 0xD0, 0, 1, 0, 0, 0, 0]);
    let r = raw(&handler, &p, Protocol::Udp).await.unwrap();
    // 16 is BADVERS in an OPT record (hickory decodes it as BADSIG, same code).
    assert_eq!(u16::from(r.metadata.response_code), 16);
    assert!(r.edns.is_some());
    // Two OPT records: FORMERR (RFC 6891).
    let mut p = header(9, 0x0100, 1, 0, 0, 2);
    p.extend(&question);
    for _ in 0..2 {
        p.extend([0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]);
    }
    let r = raw(&handler, &p, Protocol::Udp).await.unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
}

#[tokio::test]
async fn random_and_mutated_packets_never_panic() {
    let handler = fixtures_handler();
    let mut rng = fastrand::Rng::with_seed(0x5EED);
    let valid = query_bytes(
        "web.shop.svc.cluster.local.",
        RecordType::SRV,
        DNSClass::IN,
        Some(1232),
    );
    let mut answered = 0;
    for i in 0..20_000 {
        let packet: Vec<u8> = if i % 2 == 0 {
            let len = rng.usize(0..600);
            (0..len).map(|_| rng.u8(..)).collect()
        } else {
            let mut p = valid.clone();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(0..p.len());
                p[at] = rng.u8(..);
            }
            p.truncate(rng.usize(p.len() / 2..=p.len()));
            p
        };
        if let Some(response) = handler.answer_raw(&packet, src(), Protocol::Udp).await {
            let message = strict(&response);
            assert_eq!(&response[..2], &packet[..2], "the id comes back");
            assert_eq!(
                message.metadata.message_type,
                hickory_proto::op::MessageType::Response
            );
            answered += 1;
        }
    }
    assert!(
        answered > 5_000,
        "most packets with a header get an answer: {answered}"
    );
}

/// The query of issue 20, as the fuzzer found it: `Dual.Shop` and a
/// compression pointer to offset 3 (the low flags byte, 0: the root),
/// class 0x6307 (so REFUSED), and trailing bytes. Copied verbatim, the
/// pointer pointed at the answer's flags byte (0x85) and the name did not
/// decode.
const POINTER_TO_THE_HEADER: [u8; 46] = [
    18, 52, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, 68, 117, 97, 108, 4, 83, 104, 111, 112, 192, 3, 115,
    118, 99, 7, 99, 108, 117, 115, 116, 101, 114, 5, 108, 111, 99, 97, 108, 0, 0, 228, 0, 1,
];

#[tokio::test]
async fn a_question_with_a_pointer_is_answered_with_the_name_written_out() {
    let handler = fixtures_handler();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        let response = raw(&handler, &POINTER_TO_THE_HEADER, protocol)
            .await
            .expect("an answer");
        assert_eq!(response.metadata.id, 0x1234, "{protocol}");
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::Refused,
            "{protocol}"
        );
        let [question] = response.queries.as_slice() else {
            panic!("{protocol}: one question, got {:?}", response.queries);
        };
        // The decoded name, in the asker's case.
        assert_eq!(question.name().to_string(), "Dual.Shop.", "{protocol}");
        assert_eq!(u16::from(question.query_type()), 0x7376, "{protocol}");
    }

    // A real question whose root label is a pointer to the header: answered
    // like the same question written out, in the asker's case.
    let mut packet = header(0x0BAD, 0x0100, 1, 0, 0, 0);
    packet.extend(b"\x03Web\x04Shop\x03svc\x07cluster\x05local\xC0\x03\x00\x01\x00\x01");
    let plain = query_bytes(
        "Web.Shop.svc.cluster.local.",
        RecordType::A,
        DNSClass::IN,
        None,
    );
    let expected = raw(&handler, &plain, Protocol::Tcp).await.unwrap();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        let response = raw(&handler, &packet, protocol).await.unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert_eq!(response.queries, expected.queries, "{protocol}");
        assert_eq!(
            response.queries[0].name().to_string(),
            "Web.Shop.svc.cluster.local."
        );
        let mut answers: Vec<String> = response.answers.iter().map(ToString::to_string).collect();
        let mut want: Vec<String> = expected.answers.iter().map(ToString::to_string).collect();
        answers.sort();
        want.sort();
        assert!(!answers.is_empty());
        assert_eq!(answers, want, "{protocol}");
    }

    // Two questions, the second compressed against the first: FORMERR, and
    // both come back written out.
    let mut packet = header(0x0BAE, 0x0100, 2, 0, 0, 0);
    packet.extend(b"\x03web\x04shop\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01");
    packet.extend(b"\x03api\xC0\x10\x00\x1C\x00\x01");
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        let response = raw(&handler, &packet, protocol).await.unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
        let names: Vec<String> = response
            .queries
            .iter()
            .map(|q| q.name().to_string())
            .collect();
        assert_eq!(
            names,
            ["web.shop.svc.cluster.local.", "api.shop.svc.cluster.local."],
            "{protocol}"
        );
    }
}

#[tokio::test]
async fn the_do_bit_of_the_query_comes_back() {
    let handler = fixtures_handler();
    let names = [
        // The fast path (UDP) and the general path (TCP) for a cluster name,
        "web.shop.svc.cluster.local.",
        // a negative answer,
        "nope.shop.svc.cluster.local.",
        // and an error.
        "web.shop.svc.cluster.local.",
    ];
    for (i, name) in names.into_iter().enumerate() {
        let class = if i == 2 { DNSClass::CH } else { DNSClass::IN };
        for dnssec_ok in [false, true] {
            let mut packet = query_bytes(name, RecordType::A, class, Some(1232));
            // The OPT record ends the query; its flags' high byte is 4 from
            // the end (then RDLENGTH 0).
            let flags = packet.len() - 4;
            if dnssec_ok {
                packet[flags] |= 0x80;
            }
            for protocol in [Protocol::Udp, Protocol::Udp, Protocol::Tcp] {
                let response = raw(&handler, &packet, protocol).await.unwrap();
                let edns = response.edns.as_ref().expect("an OPT record");
                assert_eq!(
                    edns.flags().dnssec_ok,
                    dnssec_ok,
                    "{name} {class} {protocol} DO={dnssec_ok}"
                );
            }
        }
    }
}
