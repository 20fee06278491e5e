//! Helpers shared by the DNS integration tests: load fixtures into a model,
//! build a handler, ask questions through the raw request path, and render
//! responses as text for table comparisons.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use fairlead_dns::{
    ForwardConfig, Forwarder, Handler, Index, Metrics, PodsMode, Protocol, ZoneConfig,
};
use fairlead_model::source::ManifestDir;
use fairlead_model::{ModelWriter, Snapshot};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};

pub(crate) fn fixtures() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cluster"
    ))
}

/// The fixtures' model, synced, and its writer (for further changes).
pub(crate) fn model() -> (ModelWriter, Arc<Snapshot>) {
    let (mut writer, _rx) = ModelWriter::new();
    ManifestDir::new(fixtures())
        .sync(&mut writer)
        .expect("fixtures load");
    let snapshot = writer.snapshot();
    assert!(
        !snapshot.has_errors(),
        "fixtures are valid: {:?}",
        snapshot.problems
    );
    (writer, snapshot)
}

pub(crate) fn config(pods: PodsMode) -> Arc<ZoneConfig> {
    Arc::new(ZoneConfig::new("cluster.local", 5, pods).expect("valid zone"))
}

pub(crate) fn forward_config(upstreams: Vec<SocketAddr>) -> ForwardConfig {
    ForwardConfig {
        upstreams,
        timeout: Duration::from_millis(500),
        max_concurrent: 100,
        cache_size: 1000,
        max_ttl: 3600,
        max_negative_ttl: 1800,
        stale_window: Duration::from_secs(3600),
        stale_answer_timeout: Duration::from_millis(300),
    }
}

/// A handler answering from `index`, forwarding to `upstreams`.
pub(crate) fn handler_with(index: Index, forward: ForwardConfig) -> (Handler, Arc<ArcSwap<Index>>) {
    let metrics = Metrics::default();
    let swap = Arc::new(ArcSwap::from_pointee(index));
    let forwarder = Forwarder::new(forward, metrics.clone());
    (Handler::new(swap.clone(), forwarder, metrics, 1232), swap)
}

/// A handler answering from `index`, with no upstream.
pub(crate) fn handler(index: Index) -> Handler {
    handler_with(index, forward_config(Vec::new())).0
}

pub(crate) fn query_bytes(
    name: &str,
    qtype: RecordType,
    class: DNSClass,
    edns: Option<u16>,
) -> Vec<u8> {
    let mut message = Message::new(4242, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    let mut query = Query::query(Name::from_ascii(name).expect("valid name"), qtype);
    query.set_query_class(class);
    message.add_query(query);
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        message.set_edns(e);
    }
    message.to_vec().expect("encodes")
}

pub(crate) fn src() -> SocketAddr {
    "127.0.0.1:5353".parse().unwrap()
}

/// Asks `name`/`qtype` over UDP with EDNS (1232 bytes).
pub(crate) async fn ask(handler: &Handler, name: &str, qtype: RecordType) -> Message {
    ask_class(handler, name, qtype, DNSClass::IN).await
}

pub(crate) async fn ask_class(
    handler: &Handler,
    name: &str,
    qtype: RecordType,
    class: DNSClass,
) -> Message {
    ask_over(handler, name, qtype, class, Protocol::Udp).await
}

/// Asks with EDNS (1232 bytes) over `protocol`: over UDP, plain questions
/// about cluster names take the fast path (pre-serialised answers); over
/// TCP, every question takes the general path.
pub(crate) async fn ask_over(
    handler: &Handler,
    name: &str,
    qtype: RecordType,
    class: DNSClass,
    protocol: Protocol,
) -> Message {
    let bytes = query_bytes(name, qtype, class, Some(1232));
    let raw = handler
        .answer_raw(&bytes, src(), protocol)
        .await
        .expect("a response");
    let message = Message::from_vec(&raw).expect("the response parses");
    assert_eq!(message.metadata.id, 4242);
    assert_eq!(message.metadata.message_type, MessageType::Response);
    message
}

/// `RCODE [aa] [tc]` then `an:`, `ns:`, `ar:` lines, each section sorted
/// (address sets are shuffled).
pub(crate) fn render(message: &Message) -> String {
    let mut out = rcode_name(message.metadata.response_code).to_owned();
    if message.metadata.authoritative {
        out.push_str(" aa");
    }
    if message.metadata.truncation {
        out.push_str(" tc");
    }
    for (tag, section) in [
        ("an", &message.answers),
        ("ns", &message.authorities),
        ("ar", &message.additionals),
    ] {
        let mut lines: Vec<String> = section.iter().map(|r| format!("\n{tag}: {r}")).collect();
        lines.sort();
        out.extend(lines);
    }
    out
}

pub(crate) fn rcode_name(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

pub(crate) mod upstream;

/// Sends one query over UDP and waits (at most 5 s) for its response.
pub(crate) async fn udp_query(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    socket
        .send(&query_bytes(name, qtype, DNSClass::IN, Some(1232)))
        .await
        .unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("a response within 5 s")
        .unwrap();
    Message::from_vec(&buf[..n]).expect("the response parses")
}

/// Sends one query over TCP and waits (at most 5 s) for its response.
pub(crate) async fn tcp_query(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let bytes = query_bytes(name, qtype, DNSClass::IN, None);
    let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    framed.extend(bytes);
    stream.write_all(&framed).await.unwrap();
    let read = async {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a response within 5 s");
    Message::from_vec(&buf).expect("the response parses")
}
