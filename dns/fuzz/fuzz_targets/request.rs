//! Fuzzes the request path: raw bytes as they arrive on a socket, through
//! hickory's parser and fairlead's handler (index lookups over the test
//! fixtures, pod records, forwarding with no upstream), to the encoded
//! response. It must never panic, and every response must be one
//! well-formed message carrying the request's id.

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

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        let response = fixture.runtime.block_on(fixture.handler.answer_raw(
            data,
            "127.0.0.1:5353".parse().unwrap(),
            protocol,
        ));
        if let Some(response) = response {
            let mut decoder = BinDecoder::new(&response);
            Message::read(&mut decoder).expect("responses are well-formed");
            assert!(decoder.is_empty(), "nothing after the last record");
            assert_eq!(&response[..2], &data[..2], "the id comes back");
            if protocol == Protocol::Udp {
                assert!(response.len() <= 1232);
            }
        }
    }
});
