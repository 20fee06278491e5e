//! Fuzzes DNS over TCP: a byte stream, cut into reads of random sizes,
//! through the server's connection loop (length-prefixed messages,
//! pipelining, partial reads, answers out of order). The first input byte
//! seeds the read sizes; the rest is what the client sends before closing
//! its side. Whatever arrives, the server must write back exactly one
//! well-formed, length-prefixed answer for each complete message the
//! handler answers on its own (the same id and response code), nothing for
//! the rest, nothing half-written, and then close.

#![no_main]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use fairlead_dns::Protocol;
use fairlead_dns::tcp::connection;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// The complete length-prefixed messages at the front of `stream`.
fn messages(mut stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while stream.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([stream[0], stream[1]]));
        let Some(message) = stream.get(2..2 + len) else {
            break;
        };
        out.push(message);
        stream = &stream[2 + len..];
    }
    out
}

/// (id, response code) of each answer, counted.
type Answers = BTreeMap<(u16, u16), usize>;

fn tally(answers: impl IntoIterator<Item = hickory_proto::op::Message>) -> Answers {
    let mut out = Answers::new();
    for m in answers {
        *out.entry((m.metadata.id, u16::from(m.metadata.response_code)))
            .or_default() += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let fixture = common::fixture();
    // What the handler answers, message by message.
    let expected = tally(
        messages(stream)
            .into_iter()
            .filter_map(|m| fixture.ask(m, Protocol::Tcp))
            .map(|r| common::parse(&r)),
    );
    // Read sizes from 1 to 64 bytes (xorshift; never 0).
    let mut state = u32::from(seed) | 0x100;
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let take = (1 + state as usize % 64).min(rest.len());
        chunks.push(&rest[..take]);
        rest = &rest[take..];
    }
    let written = fixture.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(4096);
        let served = tokio::spawn(connection(
            server,
            "127.0.0.1:5353".parse().unwrap(),
            fixture.handler.clone(),
            Duration::from_secs(30),
            CancellationToken::new(),
        ));
        let (mut reader, mut writer) = tokio::io::split(client);
        let send = async move {
            for chunk in chunks {
                if writer.write_all(chunk).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            let _ = writer.shutdown().await;
        };
        let receive = async move {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).await.expect("reads to the close");
            out
        };
        let ((), out) = tokio::join!(send, receive);
        served.await.expect("the connection task does not panic");
        out
    });
    // Exactly whole answers, each well-formed.
    let mut answers = Vec::new();
    let mut rest = written.as_slice();
    while !rest.is_empty() {
        assert!(rest.len() >= 2, "a dangling length byte");
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let answer = rest.get(2..2 + len).expect("a whole answer");
        answers.push(common::parse(answer));
        rest = &rest[2 + len..];
    }
    assert_eq!(tally(answers), expected);
});
