//! Search-path completion (`--dns-autopath`) at the handler: a pod's
//! question for `<name>.<its namespace>.svc.<zone>` that does not exist is
//! answered with a CNAME to the first later search name that does, over UDP
//! (the fast path must leave these questions to the general path) and TCP
//! alike; anyone else, and every other question, gets the plain answer.

mod support;

use std::net::SocketAddr;

use fairlead_dns::{Handler, Index, PodsMode, Protocol, ZoneConfig};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use support::upstream::Upstream;
use support::{forward_config, handler_with, model, query_bytes, render};

/// db-0 of the fixtures: an endpoint of `db.data` pointing at a Pod.
const POD_OF_DATA: &str = "10.244.1.41:40000";
/// Not an endpoint of any Service.
const OUTSIDER: &str = "10.244.9.9:40000";

fn autopath_handler(upstream: SocketAddr, search: &[&str], on: bool) -> Handler {
    let (_writer, snapshot) = model();
    let config = ZoneConfig::new("cluster.local", 5, PodsMode::Disabled)
        .expect("valid zone")
        .with_autopath(on);
    let index = Index::build(std::sync::Arc::new(config), &snapshot);
    let (handler, _) = handler_with(index, forward_config(vec![upstream]));
    if on {
        handler.with_autopath(
            search
                .iter()
                .map(|s| Name::from_ascii(s).expect("a domain"))
                .collect(),
        )
    } else {
        handler
    }
}

async fn ask_from(
    handler: &Handler,
    from: &str,
    name: &str,
    qtype: RecordType,
    protocol: Protocol,
) -> Message {
    let bytes = query_bytes(name, qtype, DNSClass::IN, Some(1232));
    let raw = handler
        .answer_raw(&bytes, from.parse().unwrap(), protocol)
        .await
        .expect("a response");
    Message::from_vec(&raw).expect("the response parses")
}

/// The answer over UDP and TCP, which must be the same.
async fn both(handler: &Handler, from: &str, name: &str, qtype: RecordType) -> String {
    let udp = render(&ask_from(handler, from, name, qtype, Protocol::Udp).await);
    let tcp = render(&ask_from(handler, from, name, qtype, Protocol::Tcp).await);
    assert_eq!(udp, tcp, "UDP and TCP answers for {name} from {from}");
    udp
}

/// A plain NXDOMAIN from the cluster zone: no answer, the zone's SOA.
fn assert_plain_nxdomain(answer: &str) {
    assert!(
        answer.starts_with("NXDOMAIN aa\nns: cluster.local. 5 IN SOA ") && !answer.contains("an:"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_search_is_completed_with_the_first_name_that_exists() {
    let upstream = Upstream::start(60).await;
    let handler = autopath_handler(upstream.addr, &["example.test."], true);

    // An external name: every cluster candidate is NXDOMAIN, then the host
    // search domain comes before the bare name, as in the resolver (the
    // upstream answers every name below example.test).
    assert_eq!(
        both(
            &handler,
            POD_OF_DATA,
            "www.example.test.data.svc.cluster.local.",
            RecordType::A,
        )
        .await,
        "NOERROR\nan: www.example.test.data.svc.cluster.local. 5 IN CNAME www.example.test.example.test.\nan: www.example.test.example.test. 60 IN A 192.0.2.1",
    );
    // A short name found through the host search domain.
    assert_eq!(
        both(
            &handler,
            POD_OF_DATA,
            "api.data.svc.cluster.local.",
            RecordType::A
        )
        .await,
        "NOERROR\nan: api.data.svc.cluster.local. 5 IN CNAME api.example.test.\nan: api.example.test. 60 IN A 192.0.2.1"
    );
    // `web.shop` from a pod of `data`: the second search domain
    // (`svc.cluster.local`) names a Service; an authoritative answer.
    assert_eq!(
        both(
            &handler,
            POD_OF_DATA,
            "web.shop.data.svc.cluster.local.",
            RecordType::A
        )
        .await,
        "NOERROR aa\nan: web.shop.data.svc.cluster.local. 5 IN CNAME web.shop.svc.cluster.local.\nan: web.shop.svc.cluster.local. 5 IN A 10.96.10.10"
    );
    // The name exists without the asked type: completed all the same (the
    // resolver would have stopped there too).
    let nodata = both(
        &handler,
        POD_OF_DATA,
        "web.shop.data.svc.cluster.local.",
        RecordType::TXT,
    )
    .await;
    assert!(
        nodata.starts_with(
            "NOERROR aa\nan: web.shop.data.svc.cluster.local. 5 IN CNAME web.shop.svc.cluster.local.\nns: cluster.local. 5 IN SOA"
        ),
        "{nodata}"
    );
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn others_and_names_that_exist_nowhere_get_plain_answers() {
    let upstream = Upstream::start(60).await;
    let handler = autopath_handler(upstream.addr, &[], true);
    let external = "www.example.test.data.svc.cluster.local.";
    // No host search domain: the bare name, through the upstream. Asked by
    // a pod first, so a cached completion would show below.
    assert_eq!(
        both(&handler, POD_OF_DATA, external, RecordType::A).await,
        "NOERROR\nan: www.example.test. 60 IN A 192.0.2.1\nan: www.example.test.data.svc.cluster.local. 5 IN CNAME www.example.test."
    );
    // Not a pod in the model: plain NXDOMAIN, it searches by itself.
    assert_plain_nxdomain(&both(&handler, OUTSIDER, external, RecordType::A).await);
    // A pod of `data` asking with another namespace's search domain is
    // not searching with its own list: plain NXDOMAIN.
    assert_plain_nxdomain(
        &both(
            &handler,
            POD_OF_DATA,
            "www.example.test.shop.svc.cluster.local.",
            RecordType::A,
        )
        .await,
    );
    // Exists nowhere (the upstream says NXDOMAIN too): plain NXDOMAIN.
    assert_plain_nxdomain(
        &both(
            &handler,
            POD_OF_DATA,
            "nx.example.test.data.svc.cluster.local.",
            RecordType::A,
        )
        .await,
    );
    // The upstream fails (REFUSED): the plain NXDOMAIN, not its failure.
    assert_plain_nxdomain(
        &both(
            &handler,
            POD_OF_DATA,
            "elsewhere.invalid.data.svc.cluster.local.",
            RecordType::A,
        )
        .await,
    );
    // A name that exists is answered as always, no CNAME.
    let db = both(
        &handler,
        POD_OF_DATA,
        "db.data.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert!(
        db.starts_with("NOERROR aa\nan: db.data.svc.cluster.local. 5 IN A"),
        "{db}"
    );
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_nothing_is_completed() {
    let upstream = Upstream::start(60).await;
    let handler = autopath_handler(upstream.addr, &["example.test."], false);
    for name in [
        "www.example.test.data.svc.cluster.local.",
        "api.data.svc.cluster.local.",
        "web.shop.data.svc.cluster.local.",
    ] {
        let answer = ask_from(&handler, POD_OF_DATA, name, RecordType::A, Protocol::Udp).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(answer.answers.is_empty(), "{name}");
    }
    assert_eq!(upstream.queries(), 0, "nothing forwarded");
    upstream.stop().await;
}
