//! What every fuzz target shares: a handler over the test fixtures (pods in
//! insecure mode, a forwarder without upstreams), a current-thread runtime,
//! and the checks every response must pass.

#![allow(dead_code, reason = "each target uses part of it")]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use fairlead_dns::{
    ForwardConfig, Forwarder, Handler, Index, Metrics, PodsMode, Protocol, ZoneConfig,
};
use fairlead_model::ModelWriter;
use fairlead_model::source::ManifestDir;
use hickory_proto::op::Message;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// Largest UDP answer the handler sends (its `--dns-max-udp-payload`).
pub const MAX_UDP: usize = 1232;

pub struct Fixture {
    pub runtime: tokio::runtime::Runtime,
    pub handler: Handler,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (mut writer, _rx) = ModelWriter::new();
        ManifestDir::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/cluster"
        ))
        .sync(&mut writer)
        .expect("fixtures load");
        let config = Arc::new(ZoneConfig::new("cluster.local", 5, PodsMode::Insecure).unwrap());
        let index = Index::build(config, &writer.snapshot());
        let metrics = Metrics::default();
        let forwarder = Forwarder::new(
            ForwardConfig {
                upstreams: Vec::new(),
                timeout: Duration::from_millis(10),
                // High enough that concurrent forwarded questions (TCP
                // pipelining) are never refused for the cap: answers must
                // not depend on timing.
                max_concurrent: 100_000,
                cache_size: 100,
                max_ttl: 60,
                max_negative_ttl: 60,
                stale_window: Duration::ZERO,
                stale_answer_timeout: Duration::from_millis(10),
            },
            metrics.clone(),
        );
        let handler = Handler::new(
            Arc::new(ArcSwap::from_pointee(index)),
            forwarder,
            metrics,
            u16::try_from(MAX_UDP).unwrap(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        Fixture { runtime, handler }
    })
}

impl Fixture {
    /// The handler's answer to `raw` over `protocol`.
    pub fn ask(&self, raw: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
        self.runtime.block_on(self.handler.answer_raw(
            raw,
            "127.0.0.1:5353".parse().unwrap(),
            protocol,
        ))
    }
}

/// Parses `response` strictly: one message, nothing after it.
pub fn parse(response: &[u8]) -> Message {
    let mut decoder = BinDecoder::new(response);
    let message = Message::read(&mut decoder).expect("responses are well-formed");
    assert!(decoder.is_empty(), "nothing after the last record");
    message
}

/// Rcode, AA and every section, sorted, lower-case (the fast path points
/// more owner names at the asker's question than the general path).
pub fn render(message: &Message) -> String {
    let mut out = format!(
        "{} aa={} tc={}",
        message.metadata.response_code, message.metadata.authoritative, message.metadata.truncation
    );
    for section in [&message.answers, &message.authorities, &message.additionals] {
        let mut lines: Vec<String> = section.iter().map(|r| format!("\n{r}")).collect();
        lines.sort();
        out.extend(lines);
        out.push_str("\n--");
    }
    out.to_ascii_lowercase()
}

/// Asks `query` over UDP and TCP and checks both answers: well-formed, the
/// query's id, UDP within `udp_limit`, and (unless cut to fit UDP) the same
/// answer both ways — the UDP fast path against the general path. Returns
/// the parsed answers.
pub fn ask_both(query: &[u8], udp_limit: usize) -> (Option<Message>, Option<Message>) {
    let fixture = fixture();
    let udp = fixture.ask(query, Protocol::Udp);
    let tcp = fixture.ask(query, Protocol::Tcp);
    let check = |response: Option<Vec<u8>>, limit: usize| {
        response.map(|response| {
            assert!(response.len() <= limit, "{} > {limit} bytes", response.len());
            assert_eq!(&response[..2], &query[..2], "the id comes back");
            parse(&response)
        })
    };
    let udp = check(udp, udp_limit);
    let tcp = check(tcp, usize::from(u16::MAX));
    if let (Some(u), Some(t)) = (&udp, &tcp)
        && !u.metadata.truncation
    {
        assert_eq!(render(u), render(t));
    }
    (udp, tcp)
}
