//! The record and negative-answer rules, table-driven over the fixtures in
//! `tests/fixtures/cluster`, through the whole request path (raw query in,
//! raw response out): exact rcode, flags and the answer, authority and
//! additional sections.

mod support;

use fairlead_dns::Protocol;
use fairlead_dns::{Index, PodsMode, UpdateKind};
use fairlead_model::{Change, ModelWriter, decode};
use hickory_proto::rr::{DNSClass, RecordType};
use support::{ask, ask_class, ask_over, config, handler, handler_with, model, render};

const SOA: &str = "ns: cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. {serial} 7200 1800 86400 5";

fn nodata() -> String {
    format!("NOERROR aa\n{SOA}")
}

fn nxdomain() -> String {
    format!("NXDOMAIN aa\n{SOA}")
}

/// Every rule of the specification the fixtures exercise.
#[allow(clippy::too_many_lines, reason = "one table, one case per line")]
fn table() -> Vec<(&'static str, RecordType, String)> {
    use RecordType::{A, AAAA, ANY, CNAME, MX, NS, PTR, SOA as Soa, SRV, TXT};
    let s = |lines: &[&str]| lines.join("\n");
    vec![
        // ClusterIP, IPv4 only.
        (
            "web.shop.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: web.shop.svc.cluster.local. 5 IN A 10.96.10.10",
            ]),
        ),
        ("web.shop.svc.cluster.local.", AAAA, nodata()),
        ("web.shop.svc.cluster.local.", TXT, nodata()),
        ("web.shop.svc.cluster.local.", MX, nodata()),
        ("web.shop.svc.cluster.local.", CNAME, nodata()),
        (
            "web.shop.svc.cluster.local.",
            ANY,
            s(&[
                "NOERROR aa",
                "an: web.shop.svc.cluster.local. 5 IN A 10.96.10.10",
                "an: web.shop.svc.cluster.local. 5 IN SRV 0 100 80 web.shop.svc.cluster.local.",
            ]),
        ),
        (
            "web.shop.svc.cluster.local.",
            SRV,
            s(&[
                "NOERROR aa",
                "an: web.shop.svc.cluster.local. 5 IN SRV 0 100 80 web.shop.svc.cluster.local.",
                "ar: web.shop.svc.cluster.local. 5 IN A 10.96.10.10",
            ]),
        ),
        (
            "_http._tcp.web.shop.svc.cluster.local.",
            SRV,
            s(&[
                "NOERROR aa",
                "an: _http._tcp.web.shop.svc.cluster.local. 5 IN SRV 0 100 80 web.shop.svc.cluster.local.",
                "ar: web.shop.svc.cluster.local. 5 IN A 10.96.10.10",
            ]),
        ),
        ("_http._tcp.web.shop.svc.cluster.local.", A, nodata()),
        ("_tcp.web.shop.svc.cluster.local.", SRV, nodata()),
        ("_udp.web.shop.svc.cluster.local.", SRV, nxdomain()),
        ("_http._udp.web.shop.svc.cluster.local.", SRV, nxdomain()),
        ("_https._tcp.web.shop.svc.cluster.local.", SRV, nxdomain()),
        // Endpoint names of a ClusterIP Service: ready only.
        (
            "10-244-1-11.web.shop.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: 10-244-1-11.web.shop.svc.cluster.local. 5 IN A 10.244.1.11",
            ]),
        ),
        (
            "10-244-1-12.web.shop.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: 10-244-1-12.web.shop.svc.cluster.local. 5 IN A 10.244.1.12",
            ]),
        ),
        ("10-244-1-12.web.shop.svc.cluster.local.", AAAA, nodata()),
        ("10-244-1-13.web.shop.svc.cluster.local.", A, nxdomain()), // terminating
        ("10-244-1-14.web.shop.svc.cluster.local.", A, nxdomain()), // not ready
        // Dual-stack ClusterIP.
        (
            "dual.shop.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: dual.shop.svc.cluster.local. 5 IN A 10.96.10.20",
            ]),
        ),
        (
            "dual.shop.svc.cluster.local.",
            AAAA,
            s(&[
                "NOERROR aa",
                "an: dual.shop.svc.cluster.local. 5 IN AAAA fd00:10:96::20",
            ]),
        ),
        (
            "dual.shop.svc.cluster.local.",
            SRV,
            s(&[
                "NOERROR aa",
                "an: dual.shop.svc.cluster.local. 5 IN SRV 0 50 80 dual.shop.svc.cluster.local.",
                "an: dual.shop.svc.cluster.local. 5 IN SRV 0 50 9090 dual.shop.svc.cluster.local.",
                "ar: dual.shop.svc.cluster.local. 5 IN A 10.96.10.20",
                "ar: dual.shop.svc.cluster.local. 5 IN AAAA fd00:10:96::20",
            ]),
        ),
        (
            "_metrics._udp.dual.shop.svc.cluster.local.",
            SRV,
            s(&[
                "NOERROR aa",
                "an: _metrics._udp.dual.shop.svc.cluster.local. 5 IN SRV 0 100 9090 dual.shop.svc.cluster.local.",
                "ar: dual.shop.svc.cluster.local. 5 IN A 10.96.10.20",
                "ar: dual.shop.svc.cluster.local. 5 IN AAAA fd00:10:96::20",
            ]),
        ),
        (
            "_metrics._tcp.dual.shop.svc.cluster.local.",
            SRV,
            nxdomain(),
        ),
        // An unnamed port: SRV on the Service name only.
        (
            "single.shop.svc.cluster.local.",
            SRV,
            s(&[
                "NOERROR aa",
                "an: single.shop.svc.cluster.local. 5 IN SRV 0 100 8443 single.shop.svc.cluster.local.",
                "ar: single.shop.svc.cluster.local. 5 IN A 10.96.10.30",
            ]),
        ),
        ("_tcp.single.shop.svc.cluster.local.", SRV, nxdomain()),
        // Headless: one record per ready endpoint; hostnames; dashed names.
        (
            "db.data.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: db.data.svc.cluster.local. 5 IN A 10.244.1.41",
                "an: db.data.svc.cluster.local. 5 IN A 10.244.2.42",
                "an: db.data.svc.cluster.local. 5 IN A 10.244.3.44",
            ]),
        ),
        ("db.data.svc.cluster.local.", AAAA, nodata()),
        (
            "db-0.db.data.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: db-0.db.data.svc.cluster.local. 5 IN A 10.244.1.41",
            ]),
        ),
        (
            "db-1.db.data.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: db-1.db.data.svc.cluster.local. 5 IN A 10.244.2.42",
            ]),
        ),
        ("db-2.db.data.svc.cluster.local.", A, nxdomain()), // not ready
        ("db-9.db.data.svc.cluster.local.", A, nxdomain()),
        (
            "10-244-3-44.db.data.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: 10-244-3-44.db.data.svc.cluster.local. 5 IN A 10.244.3.44",
            ]),
        ),
        (
            "db.data.svc.cluster.local.",
            SRV,
            s(&[
                "NOERROR aa",
                "an: db.data.svc.cluster.local. 5 IN SRV 0 33 5432 10-244-3-44.db.data.svc.cluster.local.",
                "an: db.data.svc.cluster.local. 5 IN SRV 0 33 5432 db-0.db.data.svc.cluster.local.",
                "an: db.data.svc.cluster.local. 5 IN SRV 0 33 5432 db-1.db.data.svc.cluster.local.",
                "ar: 10-244-3-44.db.data.svc.cluster.local. 5 IN A 10.244.3.44",
                "ar: db-0.db.data.svc.cluster.local. 5 IN A 10.244.1.41",
                "ar: db-1.db.data.svc.cluster.local. 5 IN A 10.244.2.42",
            ]),
        ),
        (
            "_postgres._tcp.db.data.svc.cluster.local.",
            SRV,
            s(&[
                "NOERROR aa",
                "an: _postgres._tcp.db.data.svc.cluster.local. 5 IN SRV 0 33 5432 10-244-3-44.db.data.svc.cluster.local.",
                "an: _postgres._tcp.db.data.svc.cluster.local. 5 IN SRV 0 33 5432 db-0.db.data.svc.cluster.local.",
                "an: _postgres._tcp.db.data.svc.cluster.local. 5 IN SRV 0 33 5432 db-1.db.data.svc.cluster.local.",
                "ar: 10-244-3-44.db.data.svc.cluster.local. 5 IN A 10.244.3.44",
                "ar: db-0.db.data.svc.cluster.local. 5 IN A 10.244.1.41",
                "ar: db-1.db.data.svc.cluster.local. 5 IN A 10.244.2.42",
            ]),
        ),
        // Dual-stack headless: one hostname, both families.
        (
            "cache.data.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: cache.data.svc.cluster.local. 5 IN A 10.244.1.51",
            ]),
        ),
        (
            "cache.data.svc.cluster.local.",
            AAAA,
            s(&[
                "NOERROR aa",
                "an: cache.data.svc.cluster.local. 5 IN AAAA fd00:244::51",
            ]),
        ),
        (
            "cache-0.cache.data.svc.cluster.local.",
            AAAA,
            s(&[
                "NOERROR aa",
                "an: cache-0.cache.data.svc.cluster.local. 5 IN AAAA fd00:244::51",
            ]),
        ),
        (
            "_redis._tcp.cache.data.svc.cluster.local.",
            SRV,
            s(&[
                "NOERROR aa",
                "an: _redis._tcp.cache.data.svc.cluster.local. 5 IN SRV 0 100 6379 cache-0.cache.data.svc.cluster.local.",
                "ar: cache-0.cache.data.svc.cluster.local. 5 IN A 10.244.1.51",
                "ar: cache-0.cache.data.svc.cluster.local. 5 IN AAAA fd00:244::51",
            ]),
        ),
        // publishNotReadyAddresses: not-ready in, terminating out.
        (
            "pending.data.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: pending.data.svc.cluster.local. 5 IN A 10.244.1.61",
            ]),
        ),
        (
            "pending-0.pending.data.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: pending-0.pending.data.svc.cluster.local. 5 IN A 10.244.1.61",
            ]),
        ),
        ("pending-1.pending.data.svc.cluster.local.", A, nxdomain()),
        // A headless Service without a ready endpoint has no name at all
        // (specification 2.4.1; CoreDNS answers NXDOMAIN for every type).
        ("empty.data.svc.cluster.local.", A, nxdomain()),
        ("empty.data.svc.cluster.local.", AAAA, nxdomain()),
        ("empty.data.svc.cluster.local.", SRV, nxdomain()),
        ("empty.data.svc.cluster.local.", TXT, nxdomain()),
        ("_http._tcp.empty.data.svc.cluster.local.", SRV, nxdomain()),
        ("_tcp.empty.data.svc.cluster.local.", SRV, nxdomain()),
        ("data.svc.cluster.local.", A, nodata()), // its namespace still exists
        // ExternalName: CNAME; nothing exists below it; a cluster target is
        // resolved in the answer; an outside one is forwarded (no upstream
        // here, so SERVFAIL after the CNAME).
        (
            "payments.data.svc.cluster.local.",
            CNAME,
            s(&[
                "NOERROR aa",
                "an: payments.data.svc.cluster.local. 5 IN CNAME payments.example.net.",
            ]),
        ),
        (
            "payments.data.svc.cluster.local.",
            A,
            s(&[
                "SERVFAIL aa",
                "an: payments.data.svc.cluster.local. 5 IN CNAME payments.example.net.",
            ]),
        ),
        ("x.payments.data.svc.cluster.local.", A, nxdomain()),
        (
            "primary.data.svc.cluster.local.",
            A,
            s(&[
                "NOERROR aa",
                "an: db.data.svc.cluster.local. 5 IN A 10.244.1.41",
                "an: db.data.svc.cluster.local. 5 IN A 10.244.2.42",
                "an: db.data.svc.cluster.local. 5 IN A 10.244.3.44",
                "an: primary.data.svc.cluster.local. 5 IN CNAME db.data.svc.cluster.local.",
            ]),
        ),
        (
            "primary.data.svc.cluster.local.",
            TXT,
            format!(
                "NOERROR aa\nan: primary.data.svc.cluster.local. 5 IN CNAME db.data.svc.cluster.local.\n{SOA}"
            ),
        ),
        // Names that do not exist, and names that exist without data.
        ("nosuch.shop.svc.cluster.local.", A, nxdomain()),
        ("web.nosuch.svc.cluster.local.", A, nxdomain()),
        ("nosuch.svc.cluster.local.", A, nxdomain()),
        ("shop.svc.cluster.local.", A, nodata()),
        ("quiet.svc.cluster.local.", A, nodata()), // a Namespace without Services
        ("svc.cluster.local.", A, nodata()),
        ("svc.cluster.local.", TXT, nodata()),
        ("web.shop.cluster.local.", A, nxdomain()),
        ("nosuch.cluster.local.", A, nxdomain()),
        ("pod.cluster.local.", A, nxdomain()), // pods disabled
        ("10-244-1-41.data.pod.cluster.local.", A, nxdomain()),
        ("a.b.c.d.e.f.cluster.local.", A, nxdomain()), // too deep
        ("x._http._tcp.web.shop.svc.cluster.local.", SRV, nxdomain()),
        ("a.db-0.db.data.svc.cluster.local.", A, nxdomain()),
        // Apex, version, name server.
        (
            "cluster.local.",
            Soa,
            format!("NOERROR aa\n{}", SOA.replacen("ns:", "an:", 1)),
        ),
        (
            "cluster.local.",
            NS,
            s(&[
                "NOERROR aa",
                "an: cluster.local. 5 IN NS ns.dns.cluster.local.",
                "ar: ns.dns.cluster.local. 5 IN A 10.96.0.10",
            ]),
        ),
        ("cluster.local.", A, nodata()),
        (
            "dns-version.cluster.local.",
            TXT,
            s(&[
                "NOERROR aa",
                "an: dns-version.cluster.local. 5 IN TXT 1.1.0",
            ]),
        ),
        ("dns-version.cluster.local.", A, nodata()),
        (
            "ns.dns.cluster.local.",
            A,
            s(&["NOERROR aa", "an: ns.dns.cluster.local. 5 IN A 10.96.0.10"]),
        ),
        ("ns.dns.cluster.local.", AAAA, nodata()),
        // Reverse: ClusterIPs (v4 and nibble v6) and served endpoints.
        (
            "10.10.96.10.in-addr.arpa.",
            PTR,
            s(&[
                "NOERROR aa",
                "an: 10.10.96.10.in-addr.arpa. 5 IN PTR web.shop.svc.cluster.local.",
            ]),
        ),
        (
            "41.1.244.10.in-addr.arpa.",
            PTR,
            s(&[
                "NOERROR aa",
                "an: 41.1.244.10.in-addr.arpa. 5 IN PTR db-0.db.data.svc.cluster.local.",
            ]),
        ),
        (
            "11.1.244.10.in-addr.arpa.",
            PTR,
            s(&[
                "NOERROR aa",
                "an: 11.1.244.10.in-addr.arpa. 5 IN PTR 10-244-1-11.web.shop.svc.cluster.local.",
            ]),
        ),
        (
            "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.",
            PTR,
            s(&[
                "NOERROR aa",
                "an: 0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa. 5 IN PTR dual.shop.svc.cluster.local.",
            ]),
        ),
        (
            "1.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.4.2.0.0.0.d.f.ip6.arpa.",
            PTR,
            s(&[
                "NOERROR aa",
                "an: 1.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.4.2.0.0.0.d.f.ip6.arpa. 5 IN PTR cache-0.cache.data.svc.cluster.local.",
            ]),
        ),
        // Unknown addresses are not ours: forwarded (no upstream: SERVFAIL).
        ("13.1.244.10.in-addr.arpa.", PTR, "SERVFAIL".to_owned()),
        ("example.com.", A, "SERVFAIL".to_owned()),
        // Zone transfers are refused.
        ("cluster.local.", RecordType::AXFR, "REFUSED".to_owned()),
    ]
}

fn check_table(answers: &[(&'static str, RecordType, String, String)], serial: u64) {
    let mut failures = Vec::new();
    for (name, qtype, want, got) in answers {
        let want = want.replace("{serial}", &serial.to_string());
        if &want != got {
            failures.push(format!(
                "{name} {qtype}:\n  want: {}\n  got:  {}",
                want.replace('\n', "\n        "),
                got.replace('\n', "\n        ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        answers.len(),
        failures.join("\n")
    );
}

async fn run_table(
    handler: &fairlead_dns::Handler,
) -> Vec<(&'static str, RecordType, String, String)> {
    let mut out = Vec::new();
    for (name, qtype, want) in table() {
        let got = render(&ask(handler, name, qtype).await);
        out.push((name, qtype, want, got));
    }
    out
}

#[tokio::test]
async fn every_rule_of_the_specification() {
    let (_writer, snapshot) = model();
    let handler = handler(Index::build(config(PodsMode::Disabled), &snapshot));
    check_table(&run_table(&handler).await, snapshot.generation);
}

/// The UDP fast path (pre-serialised answers, from its cache on the second
/// ask) answers every question of the table exactly like the general path
/// (taken by TCP), flags and all four sections.
#[tokio::test]
async fn the_fast_path_answers_like_the_general_path() {
    let (_writer, snapshot) = model();
    for pods in [PodsMode::Disabled, PodsMode::Verified] {
        let handler = handler(Index::build(config(pods), &snapshot));
        let mut questions: Vec<(&str, RecordType)> =
            table().into_iter().map(|(n, t, _)| (n, t)).collect();
        questions.extend([
            ("10-244-1-41.data.pod.cluster.local.", RecordType::A),
            ("WeB.Shop.SVC.Cluster.Local.", RecordType::A),
            ("DB.data.svc.cluster.local.", RecordType::SRV),
            ("NoSuch.Shop.Svc.Cluster.Local.", RecordType::AAAA),
        ]);
        for (name, qtype) in questions {
            let general = ask_over(&handler, name, qtype, DNSClass::IN, Protocol::Tcp).await;
            for round in ["miss", "hit"] {
                let fast = ask(&handler, name, qtype).await;
                assert_eq!(
                    render(&fast).to_lowercase(),
                    render(&general).to_lowercase(),
                    "{pods:?} {name} {qtype} ({round})"
                );
                assert_eq!(
                    fast.metadata.recursion_available,
                    general.metadata.recursion_available
                );
                assert_eq!(
                    fast.metadata.recursion_desired,
                    general.metadata.recursion_desired
                );
                assert_eq!(
                    fast.edns.as_ref().map(hickory_proto::op::Edns::max_payload),
                    general
                        .edns
                        .as_ref()
                        .map(hickory_proto::op::Edns::max_payload)
                );
                assert!(fast.queries[0].name().eq_case(general.queries[0].name()));
            }
        }
    }
}

/// Plain UDP questions about cluster names take the fast path: there, every
/// owner name equal to the question is a pointer to it, so it comes back in
/// the asker's case even in the additional section (the general path, taken
/// by TCP, restores the case in the answer section only).
#[tokio::test]
async fn plain_udp_questions_take_the_fast_path() {
    let (_writer, snapshot) = model();
    let handler = handler(Index::build(config(PodsMode::Disabled), &snapshot));
    let asked = hickory_proto::rr::Name::from_ascii("WEB.shop.svc.cluster.local.").unwrap();
    for round in ["miss", "hit"] {
        let fast = ask(&handler, "WEB.shop.svc.cluster.local.", RecordType::SRV).await;
        assert!(
            fast.additionals[0].name.eq_case(&asked),
            "{round}: {fast:?}"
        );
    }
    let general = ask_over(
        &handler,
        "WEB.shop.svc.cluster.local.",
        RecordType::SRV,
        DNSClass::IN,
        Protocol::Tcp,
    )
    .await;
    assert!(!general.additionals[0].name.eq_case(&asked), "{general:?}");
}

/// The fast path's cache follows the index: answers of the Services that
/// changed are rebuilt, the others keep being served with the new SOA
/// serial.
#[tokio::test]
async fn cached_answers_follow_model_changes() {
    let (mut writer, snapshot) = model();
    let cfg = config(PodsMode::Disabled);
    let (handler, swap) = handler_with(
        Index::build(cfg.clone(), &snapshot),
        support::forward_config(Vec::new()),
    );
    let ask_all = async |handler: &fairlead_dns::Handler| {
        let mut out = Vec::new();
        for (name, qtype) in [
            ("web.shop.svc.cluster.local.", RecordType::A),
            ("api.shop.svc.cluster.local.", RecordType::A),
            ("cache.data.svc.cluster.local.", RecordType::A),
            ("_redis._tcp.cache.data.svc.cluster.local.", RecordType::SRV),
            ("db.data.svc.cluster.local.", RecordType::A),
            ("nosuch.shop.svc.cluster.local.", RecordType::A),
            ("shop.svc.cluster.local.", RecordType::A),
            ("fresh.svc.cluster.local.", RecordType::A),
        ] {
            out.push(render(&ask(handler, name, qtype).await));
        }
        out
    };
    let before = ask_all(&handler).await;
    let mut index = Index::build(cfg.clone(), &snapshot);
    for change in [
        // A new Service, where there was NXDOMAIN, in a new namespace.
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {clusterIP: 10.96.20.2, ports: [{name: grpc, port: 9000}]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: fresh}\nspec: {clusterIP: 10.96.20.3, ports: [{name: grpc, port: 9000}]}\n",
        // web moves to another ClusterIP.
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.10.11, ports: [{name: http, port: 80, targetPort: 8080}]}\n",
        // The only endpoint of the headless cache is no longer ready: the
        // name no longer exists.
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: cache-v4, namespace: data, labels: {kubernetes.io/service-name: cache}}\naddressType: IPv4\nports: [{name: redis, port: 6379}]\nendpoints:\n- addresses: [10.244.1.51]\n  hostname: cache-0\n  conditions: {ready: false}\n",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: cache-v6, namespace: data, labels: {kubernetes.io/service-name: cache}}\naddressType: IPv6\nports: [{name: redis, port: 6379}]\nendpoints:\n- addresses: [\"fd00:244::51\"]\n  hostname: cache-0\n  conditions: {ready: false}\n",
    ] {
        upsert(&mut writer, change);
        let (next, kind) = index.update(&writer.snapshot());
        assert!(matches!(kind, UpdateKind::Incremental(_)), "{kind:?}");
        swap.store(std::sync::Arc::new(next.clone()));
        index = next;
    }
    let after = ask_all(&handler).await;
    // The same questions to a handler that never cached anything.
    let fresh = ask_all(&support::handler(index.clone())).await;
    assert_eq!(after, fresh);
    let serial = writer.snapshot().generation;
    let nx = nxdomain().replace("{serial}", &serial.to_string());
    assert_eq!(
        after,
        [
            "NOERROR aa\nan: web.shop.svc.cluster.local. 5 IN A 10.96.10.11".to_owned(),
            "NOERROR aa\nan: api.shop.svc.cluster.local. 5 IN A 10.96.20.2".to_owned(),
            nx.clone(),
            nx.clone(),
            before[4].clone(),
            nx,
            nodata().replace("{serial}", &serial.to_string()),
            nodata().replace("{serial}", &serial.to_string()),
        ]
    );
    assert_ne!(before, after);
}

#[tokio::test]
async fn answers_keep_the_askers_case() {
    let (_writer, snapshot) = model();
    let handler = handler(Index::build(config(PodsMode::Disabled), &snapshot));
    let response = ask(&handler, "WeB.Shop.SVC.Cluster.Local.", RecordType::A).await;
    assert_eq!(
        render(&response),
        "NOERROR aa\nan: WeB.Shop.SVC.Cluster.Local. 5 IN A 10.96.10.10"
    );
    // The question comes back byte for byte, and the owner name too.
    let asked = hickory_proto::rr::Name::from_ascii("WeB.Shop.SVC.Cluster.Local.").unwrap();
    assert!(response.queries[0].name().eq_case(&asked));
    assert!(response.answers[0].name.eq_case(&asked));
    // Negative answers too.
    let response = ask(&handler, "NoSuch.Shop.Svc.Cluster.Local.", RecordType::A).await;
    assert_eq!(
        render(&response),
        nxdomain().replace("{serial}", &snapshot.generation.to_string())
    );
}

#[tokio::test]
async fn address_sets_are_shuffled() {
    let (_writer, snapshot) = model();
    let handler = handler(Index::build(config(PodsMode::Disabled), &snapshot));
    let mut orders = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let response = ask(&handler, "db.data.svc.cluster.local.", RecordType::A).await;
        let order: Vec<String> = response
            .answers
            .iter()
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(order.len(), 3);
        orders.insert(order);
    }
    // 3 records have 6 orders; 60 draws miss one with probability ~ 6*(5/6)^60.
    assert!(
        orders.len() >= 4,
        "only {} orders seen: {orders:?}",
        orders.len()
    );
    // After a CNAME, the CNAME stays first.
    for _ in 0..20 {
        let response = ask(&handler, "primary.data.svc.cluster.local.", RecordType::A).await;
        assert_eq!(response.answers[0].record_type(), RecordType::CNAME);
    }
}

#[tokio::test]
async fn other_classes_are_refused() {
    let (_writer, snapshot) = model();
    let handler = handler(Index::build(config(PodsMode::Disabled), &snapshot));
    let response = ask_class(
        &handler,
        "web.shop.svc.cluster.local.",
        RecordType::A,
        DNSClass::CH,
    )
    .await;
    assert_eq!(render(&response), "REFUSED");
}

#[tokio::test]
async fn before_sync_cluster_names_fail_instead_of_not_existing() {
    let (writer, _rx) = ModelWriter::new();
    let snapshot = writer.snapshot();
    assert!(!snapshot.synced);
    let handler = handler(Index::build(config(PodsMode::Disabled), &snapshot));
    for (name, qtype) in [
        ("web.shop.svc.cluster.local.", RecordType::A),
        ("nosuch.svc.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::SOA),
    ] {
        assert_eq!(
            render(&ask(&handler, name, qtype).await),
            "SERVFAIL",
            "{name}"
        );
    }
}

/// Insecure pod records answer any dashed address, but only in a namespace
/// that exists (as CoreDNS: a namespace that does not exist has no names).
#[tokio::test]
async fn pod_records_insecure() {
    let (_writer, snapshot) = model();
    let handler = handler(Index::build(config(PodsMode::Insecure), &snapshot));
    let serial = snapshot.generation.to_string();
    for (name, qtype, want) in [
        // No namespace `nope`: no pod names in it.
        ("1-2-3-4.nope.pod.cluster.local.", RecordType::A, nxdomain()),
        ("nope.pod.cluster.local.", RecordType::A, nxdomain()),
        // `quiet` exists (a Namespace object) with nothing in it: any address.
        (
            "1-2-3-4.quiet.pod.cluster.local.",
            RecordType::A,
            "NOERROR aa\nan: 1-2-3-4.quiet.pod.cluster.local. 5 IN A 1.2.3.4".to_owned(),
        ),
        ("quiet.pod.cluster.local.", RecordType::A, nodata()),
        (
            "1-2-3-4.data.pod.cluster.local.",
            RecordType::A,
            "NOERROR aa\nan: 1-2-3-4.data.pod.cluster.local. 5 IN A 1.2.3.4".to_owned(),
        ),
        (
            "10-244-1-41.data.pod.cluster.local.",
            RecordType::A,
            "NOERROR aa\nan: 10-244-1-41.data.pod.cluster.local. 5 IN A 10.244.1.41".to_owned(),
        ),
        (
            "fd00--7.data.pod.cluster.local.",
            RecordType::AAAA,
            "NOERROR aa\nan: fd00--7.data.pod.cluster.local. 5 IN AAAA fd00::7".to_owned(),
        ),
        (
            "1-2-3-4.data.pod.cluster.local.",
            RecordType::AAAA,
            nodata(),
        ),
        (
            "not-an-ip.data.pod.cluster.local.",
            RecordType::A,
            nxdomain(),
        ),
        (
            "1-2-3-999.data.pod.cluster.local.",
            RecordType::A,
            nxdomain(),
        ),
        ("data.pod.cluster.local.", RecordType::A, nodata()),
        ("pod.cluster.local.", RecordType::A, nodata()),
    ] {
        let want = want.replace("{serial}", &serial);
        assert_eq!(render(&ask(&handler, name, qtype).await), want, "{name}");
    }
}

#[tokio::test]
async fn pod_records_verified() {
    let (_writer, snapshot) = model();
    let handler = handler(Index::build(config(PodsMode::Verified), &snapshot));
    let serial = snapshot.generation.to_string();
    for (name, want) in [
        // db-0 and db-x are Pods of namespace data.
        (
            "10-244-1-41.data.pod.cluster.local.",
            "NOERROR aa\nan: 10-244-1-41.data.pod.cluster.local. 5 IN A 10.244.1.41".to_owned(),
        ),
        (
            "10-244-3-44.data.pod.cluster.local.",
            "NOERROR aa\nan: 10-244-3-44.data.pod.cluster.local. 5 IN A 10.244.3.44".to_owned(),
        ),
        // Not in that namespace, or not a Pod we know of.
        ("10-244-1-41.shop.pod.cluster.local.", nxdomain()),
        ("10-244-1-11.shop.pod.cluster.local.", nxdomain()),
        ("1-2-3-4.data.pod.cluster.local.", nxdomain()),
        ("nosuch.pod.cluster.local.", nxdomain()),
        ("10-244-1-41.nosuch.pod.cluster.local.", nxdomain()),
        ("data.pod.cluster.local.", nodata()),
        // A namespace that exists without Pods: the namespace name exists,
        // no pod name in it does.
        ("quiet.pod.cluster.local.", nodata()),
        ("10-244-1-41.quiet.pod.cluster.local.", nxdomain()),
    ] {
        let want = want.replace("{serial}", &serial);
        assert_eq!(
            render(&ask(&handler, name, RecordType::A).await),
            want,
            "{name}"
        );
    }
}

fn upsert(writer: &mut ModelWriter, yaml: &str) -> u64 {
    let value: serde_json::Value = serde_norway::from_str(yaml).expect("valid YAML");
    let object = decode(value).expect("valid object");
    writer.apply([Change::Upsert {
        object,
        origin: None,
    }])
}

/// Changes to the model, applied one after the other; after each, the
/// incremental index must answer exactly like a full rebuild.
#[tokio::test]
async fn incremental_updates_answer_like_full_rebuilds() {
    let (mut writer, snapshot) = model();
    let cfg = config(PodsMode::Verified);
    let mut index = Index::build(cfg.clone(), &snapshot);
    let changes = [
        // An endpoint of web becomes ready; another goes away.
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n- addresses: [10.244.1.11]\n- addresses: [10.244.1.14]\n",
        // A new Service in a new namespace.
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: fresh}\nspec: {clusterIP: 10.96.20.1, ports: [{name: grpc, port: 9000}]}\n",
        // The ExternalName Service now points elsewhere.
        "apiVersion: v1\nkind: Service\nmetadata: {name: payments, namespace: data}\nspec: {type: ExternalName, externalName: pay.example.org}\n",
        // web gets the same ClusterIP as dual had (PTR shared then moved).
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.10.20, ports: [{name: http, port: 80, targetPort: 8080}]}\n",
    ];
    let names = [
        ("web.shop.svc.cluster.local.", RecordType::A),
        ("web.shop.svc.cluster.local.", RecordType::SRV),
        ("10-244-1-14.web.shop.svc.cluster.local.", RecordType::A),
        ("10-244-1-12.web.shop.svc.cluster.local.", RecordType::A),
        ("api.fresh.svc.cluster.local.", RecordType::A),
        ("_grpc._tcp.api.fresh.svc.cluster.local.", RecordType::SRV),
        ("fresh.svc.cluster.local.", RecordType::A),
        ("payments.data.svc.cluster.local.", RecordType::CNAME),
        ("20.10.96.10.in-addr.arpa.", RecordType::PTR),
        ("10.10.96.10.in-addr.arpa.", RecordType::PTR),
        ("14.1.244.10.in-addr.arpa.", RecordType::PTR),
        ("db.data.svc.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::SOA),
    ];
    for (step, change) in changes.iter().enumerate() {
        let generation = upsert(&mut writer, change);
        let snapshot = writer.snapshot();
        assert_eq!(snapshot.generation, generation);
        let (next, kind) = index.update(&snapshot);
        assert_eq!(kind, UpdateKind::Incremental(1), "step {step}");
        let full = Index::build(cfg.clone(), &snapshot);
        let (incremental, rebuilt) = (handler(next.clone()), handler(full));
        for (name, qtype) in names {
            let a = render(&ask(&incremental, name, qtype).await);
            let b = render(&ask(&rebuilt, name, qtype).await);
            assert_eq!(a, b, "step {step}: {name} {qtype}");
        }
        index = next;
    }
    // The changes took effect.
    let h = handler(index);
    let serial = writer.snapshot().generation.to_string();
    assert_eq!(
        render(&ask(&h, "10-244-1-14.web.shop.svc.cluster.local.", RecordType::A).await),
        "NOERROR aa\nan: 10-244-1-14.web.shop.svc.cluster.local. 5 IN A 10.244.1.14"
    );
    assert_eq!(
        render(&ask(&h, "10-244-1-12.web.shop.svc.cluster.local.", RecordType::A).await),
        nxdomain().replace("{serial}", &serial)
    );
    assert_eq!(
        render(&ask(&h, "20.10.96.10.in-addr.arpa.", RecordType::PTR).await),
        "NOERROR aa\nan: 20.10.96.10.in-addr.arpa. 5 IN PTR dual.shop.svc.cluster.local.\nan: 20.10.96.10.in-addr.arpa. 5 IN PTR web.shop.svc.cluster.local."
    );
    assert_eq!(
        render(&ask(&h, "cluster.local.", RecordType::SOA).await),
        format!(
            "NOERROR aa\n{}",
            SOA.replacen("ns:", "an:", 1).replace("{serial}", &serial)
        )
    );
}
