//! Fuzzes the request path: raw bytes as they arrive on a socket, through
//! the UDP fast path (pre-serialised answers, cached between inputs) or
//! hickory's parser and fairlead's handler (index lookups over the test
//! fixtures, pod records, forwarding with no upstream), to the encoded
//! response. It must never panic; every response must be one well-formed
//! message carrying the request's id, within the UDP size limit; and when
//! the fast path answers, the general path (over TCP) must give the same
//! answer.

#![no_main]

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
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    handler: Handler,
}

fn fixture() -> &'static Fixture {
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
                max_concurrent: 10,
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
            1232,
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        Fixture { runtime, handler }
    })
}

fn parse(response: &[u8]) -> Message {
    let mut decoder = BinDecoder::new(response);
    let message = Message::read(&mut decoder).expect("responses are well-formed");
    assert!(decoder.is_empty(), "nothing after the last record");
    message
}

/// Rcode, AA and every section, sorted, lower-case (the fast path points
/// more owner names at the asker's question than the general path).
fn render(message: &Message) -> String {
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

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let ask = |protocol| {
        fixture.runtime.block_on(fixture.handler.answer_raw(
            data,
            "127.0.0.1:5353".parse().unwrap(),
            protocol,
        ))
    };
    let udp = ask(Protocol::Udp);
    let tcp = ask(Protocol::Tcp);
    let mut messages = Vec::new();
    for (response, limit) in [(&udp, 1232), (&tcp, usize::from(u16::MAX))] {
        if let Some(response) = response {
            assert!(response.len() <= limit);
            assert_eq!(&response[..2], &data[..2], "the id comes back");
            messages.push(parse(response));
        }
    }
    // Same answer both ways, unless cut to fit UDP (or no answer at all).
    if let [udp, tcp] = messages.as_slice()
        && !udp.metadata.truncation
    {
        assert_eq!(render(udp), render(tcp));
    }
});
