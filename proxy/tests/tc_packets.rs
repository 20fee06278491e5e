//! Privileged, packet level: the TC ingress program run on crafted packets with
//! `BPF_PROG_TEST_RUN`, over maps the reconciler programmed from a model. What the packet
//! tests prove better than the namespace tests: Maglev's behaviour over thousands of flows
//! (which backend each 5-tuple gets, before and after a backend goes), and that every
//! translated packet carries valid IPv4 and TCP checksums; the routing of translated packets
//! (`bpf_fib_lookup` + redirect: MAC addresses, TTL) and the ICMP rejects of frontends
//! without endpoints, byte by byte.
//!
//! Each test runs in a network namespace of its own (`BPF_PROG_TEST_RUN` runs in the
//! caller's, and the FIB lookup reads its routes): without routes or forwarding there, the
//! program hands translated packets to the stack (`TC_ACT_OK`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use aya::maps::{HashMap, MapData};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use fairlead_model::{Change, ModelWriter, Snapshot, decode};
use fairlead_proxy::abi::{Ct4Key, CtValue, maps, programs};
use fairlead_proxy::testing::{TestNetns, error_chain, privileged};
use fairlead_proxy::{Datapath, LoadOptions, Reconciler};

const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn snapshot(writer: &mut ModelWriter, backends: usize) -> Arc<Snapshot> {
    snapshot_with(writer, backends, "")
}

fn snapshot_with(writer: &mut ModelWriter, backends: usize, extra: &str) -> Arc<Snapshot> {
    let mut eps = String::new();
    for i in 0..backends {
        let _ = writeln!(
            eps,
            "  - {{addresses: [\"10.244.1.{}\"], conditions: {{ready: true}}, nodeName: node-1}}",
            i + 10
        );
    }
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: t}}\nspec:\n  clusterIP: 10.96.0.80\n  ports: [{{port: 80, targetPort: 8080}}]\n  externalIPs: [\"{LB_IP}\"]\n{extra}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: t, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{eps}"
    );
    let changes: Vec<Change> = serde_norway::Deserializer::from_str(&yaml)
        .map(|doc| {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("yaml");
            Change::Upsert {
                object: decode(value).expect("object"),
                origin: None,
            }
        })
        .collect();
    writer.replace_all(changes, Vec::new(), true);
    writer.snapshot()
}

/// One's-complement sum of 16-bit words.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(u16::try_from(acc).unwrap())
}

/// An Ethernet + IPv4 + TCP SYN packet with correct checksums.
fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut p = vec![0_u8; 14 + 20 + 20];
    p[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40_u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let csum = fold(sum16(ip, 0));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let tcp = &mut p[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1_u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&65_535_u16.to_be_bytes());
    let csum = tcp_checksum(&p);
    p[34 + 16..34 + 18].copy_from_slice(&csum.to_be_bytes());
    p
}

/// The TCP checksum of a packet (its checksum field taken as zero).
fn tcp_checksum(p: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[26..34]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&20_u16.to_be_bytes());
    let mut tcp = p[34..54].to_vec();
    tcp[16] = 0;
    tcp[17] = 0;
    fold(sum16(&tcp, sum16(&pseudo, 0)))
}

/// Runs the ingress program on `packet`; returns the verdict and the packet after it.
fn run(program: &SchedClassifier, packet: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0_u8; 2048];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn clear_conntrack(datapath: &mut Datapath) {
    for name in [maps::CT4_TCP, maps::CT4_ANY] {
        let map = datapath.ebpf_mut().map_mut(name).expect("ct map");
        let mut ct = HashMap::<&mut MapData, Ct4Key, CtValue>::try_from(map).expect("ct");
        let keys: Vec<Ct4Key> = ct.keys().filter_map(Result::ok).collect();
        for key in keys {
            ct.remove(&key).expect("delete");
        }
    }
}

/// Sends `flows` SYNs to the external IP; returns each flow's backend (last octet).
fn backends_of(datapath: &mut Datapath, flows: &[(Ipv4Addr, u16)]) -> Vec<u8> {
    let program = ingress(datapath);
    flows
        .iter()
        .map(|(src, sport)| {
            let (verdict, out) = run(program, &syn(*src, *sport, LB_IP, 80));
            assert_eq!(verdict, TC_ACT_OK, "no route here: to the stack");
            assert_eq!(&out[26..30], &src.octets(), "source kept (local backend)");
            assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8080, "backend port");
            // Valid checksums after the translation.
            assert_eq!(fold(sum16(&out[14..34], 0)), 0, "IPv4 header checksum");
            assert_eq!(
                u16::from_be_bytes([out[50], out[51]]),
                tcp_checksum(&out),
                "TCP checksum"
            );
            assert_eq!(&out[30..33], &[10, 244, 1], "DNAT to a backend");
            out[33]
        })
        .collect()
}

/// `TC_ACT_OK`: handed to the stack.
const TC_ACT_OK: u32 = 0;
/// `TC_ACT_REDIRECT`: sent to another interface (`bpf_redirect`).
const TC_ACT_REDIRECT: u32 = 7;

/// An Ethernet + IPv6 + UDP packet (8 bytes of payload) with a correct checksum.
fn udp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let mut p = vec![0_u8; 14 + 40 + 8 + 8];
    p[12..14].copy_from_slice(&0x86dd_u16.to_be_bytes());
    p[14] = 0x60;
    p[18..20].copy_from_slice(&16_u16.to_be_bytes());
    p[20] = 17;
    p[21] = 64;
    p[22..38].copy_from_slice(&src.octets());
    p[38..54].copy_from_slice(&dst.octets());
    p[54..56].copy_from_slice(&sport.to_be_bytes());
    p[56..58].copy_from_slice(&dport.to_be_bytes());
    p[58..60].copy_from_slice(&16_u16.to_be_bytes());
    p[62..70].copy_from_slice(b"question");
    let csum = fold(sum16(&p[54..], pseudo6(&p, 16, 17)));
    p[60..62].copy_from_slice(&csum.to_be_bytes());
    p
}

/// The IPv6 pseudo-header sum of a packet's addresses, an upper-layer length and protocol.
fn pseudo6(p: &[u8], length: u32, protocol: u8) -> u32 {
    sum16(&p[22..54], 0) + length + u32::from(protocol)
}

/// The object loaded with its TC ingress program, in a network namespace of the test's own
/// (returned: it must outlive the test).
fn datapath() -> (Datapath, TestNetns) {
    let netns = TestNetns::new("pkt").expect("test netns");
    netns.enter().expect("enter the test netns");
    let mut datapath =
        Datapath::load(&LoadOptions::new()).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let program: &mut SchedClassifier = datapath
        .ebpf_mut()
        .program_mut(programs::TC_INGRESS)
        .expect("program")
        .try_into()
        .expect("a classifier");
    program
        .load()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let program: &mut SchedClassifier = datapath
        .ebpf_mut()
        .program_mut(programs::TC_INGRESS6)
        .expect("program")
        .try_into()
        .expect("a classifier");
    program
        .load()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    (datapath, netns)
}

/// [`datapath`] with the maps programmed for the `web` Service with `backends` local
/// endpoints ([`snapshot`]).
fn programmed(backends: usize) -> (Datapath, TestNetns) {
    let (mut datapath, netns) = datapath();
    let (mut writer, _rx) = ModelWriter::new();
    let report = Reconciler::new(Some("node-1".to_owned()))
        .sync(&snapshot(&mut writer, backends), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    (datapath, netns)
}

fn ingress(datapath: &Datapath) -> &SchedClassifier {
    program(datapath, programs::TC_INGRESS)
}

fn program<'a>(datapath: &'a Datapath, name: &str) -> &'a SchedClassifier {
    datapath
        .ebpf()
        .program(name)
        .expect("program")
        .try_into()
        .expect("a classifier")
}

#[test]
fn session_affinity_sticks_external_clients_by_address() {
    if !privileged("tc_packets::session_affinity_sticks_external_clients_by_address") {
        return;
    }
    let (mut datapath, _netns) = datapath();
    let (mut writer, _rx) = ModelWriter::new();
    let mut reconciler = Reconciler::new(Some("node-1".to_owned()));
    let affine =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n";
    let report = reconciler.sync(&snapshot_with(&mut writer, 10, affine), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // 20 clients, 50 connections each from different ports: one backend per client...
    let mut homes = BTreeMap::new();
    for client in 1..=20_u8 {
        let src = Ipv4Addr::new(198, 51, 100, client);
        let flows: Vec<(Ipv4Addr, u16)> = (0..50).map(|p| (src, 40_000 + p)).collect();
        let backends = backends_of(&mut datapath, &flows);
        assert!(
            backends.iter().all(|b| *b == backends[0]),
            "client {src} was spread: {backends:?}"
        );
        homes.insert(client, backends[0]);
    }
    // ... while the clients themselves spread over the backends.
    let distinct: std::collections::BTreeSet<_> = homes.values().collect();
    assert!(distinct.len() >= 4, "{homes:?}");
}

#[test]
fn maglev_moves_only_the_removed_backends_flows() {
    if !privileged("tc_packets::maglev_moves_only_the_removed_backends_flows") {
        return;
    }
    let (mut datapath, _netns) = datapath();
    let (mut writer, _rx) = ModelWriter::new();
    let mut reconciler = Reconciler::new(Some("node-1".to_owned()));
    let report = reconciler.sync(&snapshot(&mut writer, 10), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let flows: Vec<(Ipv4Addr, u16)> = (0..4000_u32)
        .map(|i| {
            let src = Ipv4Addr::new(203, 0, 113, u8::try_from(i % 200).unwrap() + 1);
            (src, 20_000 + u16::try_from(i).unwrap())
        })
        .collect();
    let before = backends_of(&mut datapath, &flows);
    let mut shares: BTreeMap<u8, usize> = BTreeMap::new();
    for b in &before {
        *shares.entry(*b).or_default() += 1;
    }
    assert_eq!(shares.len(), 10, "{shares:?}");
    for (backend, n) in &shares {
        // 400 expected each; Maglev's table is balanced to one slot.
        assert!(
            (300..=500).contains(n),
            "backend .{backend} got {n} of 4000: {shares:?}"
        );
    }
    // A known flow keeps its backend while conntrack has it, whatever the tables say.
    let again = backends_of(&mut datapath, &flows[..50]);
    assert_eq!(again, before[..50]);

    // Remove the last backend (10.244.1.19); forget the flows; balance them anew.
    let report = reconciler.sync(&snapshot(&mut writer, 9), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    clear_conntrack(&mut datapath);
    let after = backends_of(&mut datapath, &flows);
    let removed = 19;
    let mut moved_others = 0;
    let mut others = 0;
    let mut new_homes: BTreeMap<u8, usize> = BTreeMap::new();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(*a, removed, "a flow still goes to the removed backend");
        if *b == removed {
            *new_homes.entry(*a).or_default() += 1;
        } else {
            others += 1;
            if a != b {
                moved_others += 1;
            }
        }
    }
    // The removed backend's flows spread over the survivors...
    assert!(new_homes.len() >= 8, "{new_homes:?}");
    // ...and hardly any other flow moves (with `hash % n`, ~90 % would).
    assert!(
        moved_others * 100 <= others * 3,
        "{moved_others} of {others} flows of the remaining backends moved"
    );
    eprintln!("maglev: {moved_others} of {others} other flows moved after removing 1 of 10");
}

#[test]
fn translated_packets_are_routed_by_the_fib() {
    if !privileged("tc_packets::translated_packets_are_routed_by_the_fib") {
        return;
    }
    let (mut datapath, netns) = programmed(1);
    // The backends' subnet on an interface (a veth, both ends here) with a known
    // neighbour, and forwarding on.
    let backend_mac = [0x02, 0, 0, 0, 0, 0x0a];
    for args in [
        &[
            "link", "add", "fl-pods", "type", "veth", "peer", "name", "fl-peer",
        ][..],
        &["link", "set", "fl-peer", "up"],
        &[
            "link",
            "set",
            "fl-pods",
            "address",
            "02:00:00:00:00:01",
            "up",
        ],
        &["addr", "add", "10.244.1.1/24", "dev", "fl-pods"],
        &[
            "neigh",
            "add",
            "10.244.1.10",
            "lladdr",
            "02:00:00:00:00:0a",
            "dev",
            "fl-pods",
            "nud",
            "permanent",
        ],
    ] {
        netns.ip(args).expect("ip");
    }
    netns.sysctl("net.ipv4.ip_forward=1").expect("forwarding");

    let client = Ipv4Addr::new(198, 51, 100, 7);
    let (verdict, out) = run(ingress(&datapath), &syn(client, 40_000, LB_IP, 80));
    assert_eq!(verdict, TC_ACT_REDIRECT, "routed by the FIB: {out:02x?}");
    assert_eq!(&out[0..6], &backend_mac, "destination MAC: the neighbour's");
    assert_eq!(
        &out[6..12],
        &[2, 0, 0, 0, 0, 1],
        "source MAC: the output interface's"
    );
    assert_eq!(&out[30..34], &[10, 244, 1, 10], "DNAT to the backend");
    assert_eq!(out[14 + 8], 63, "TTL decremented, as a router does");
    assert_eq!(fold(sum16(&out[14..34], 0)), 0, "IPv4 header checksum");
    assert_eq!(
        u16::from_be_bytes([out[50], out[51]]),
        tcp_checksum(&out),
        "TCP checksum"
    );

    // A TTL about to expire is answered "time exceeded" from the frontend, quoting the
    // packet as the client sent it (so the client's traceroute sees the service).
    clear_conntrack(&mut datapath);
    let mut last_hop = syn(client, 40_001, LB_IP, 80);
    set_ip(&mut last_hop, |ip| ip[8] = 1);
    let (verdict, out) = run(ingress(&datapath), &last_hop);
    assert_eq!(verdict, TC_ACT_REDIRECT, "answered: {out:02x?}");
    assert_icmp4(&out, &last_hop, (11, 0), [0; 4]);

    // Larger than the output interface's MTU: with DF, "fragmentation needed" with the MTU,
    // quoting the untranslated packet (the client must learn, not the node); without DF,
    // to the stack, which fragments.
    netns
        .ip(&["link", "set", "fl-pods", "mtu", "1000"])
        .expect("mtu");
    clear_conntrack(&mut datapath);
    let mut big = syn(client, 40_002, LB_IP, 80);
    big.resize(1100, 0);
    set_ip(&mut big, |ip| {
        ip[2..4].copy_from_slice(&1086_u16.to_be_bytes());
        ip[6] = 0x40; // DF
    });
    let (verdict, out) = run(ingress(&datapath), &big);
    assert_eq!(verdict, TC_ACT_REDIRECT, "answered: {out:02x?}");
    assert_icmp4(&out, &big, (3, 4), [0, 0, 0x03, 0xe8]);
    clear_conntrack(&mut datapath);
    set_ip(&mut big, |ip| ip[6] = 0);
    let (verdict, out) = run(ingress(&datapath), &big);
    assert_eq!(verdict, TC_ACT_OK, "to the stack");
    assert_eq!(&out[30..34], &[10, 244, 1, 10], "translated all the same");
}

/// Edits a packet's IPv4 header and fixes its checksum.
fn set_ip(packet: &mut [u8], edit: impl FnOnce(&mut [u8])) {
    edit(&mut packet[14..34]);
    packet[24] = 0;
    packet[25] = 0;
    let csum = fold(sum16(&packet[14..34], 0));
    packet[24..26].copy_from_slice(&csum.to_be_bytes());
}

/// Checks that `out` is the ICMP error (type, code, second header word) answering `packet`
/// from its destination to its source, with valid checksums.
fn assert_icmp4(out: &[u8], packet: &[u8], (icmp_type, code): (u8, u8), rest: [u8; 4]) {
    assert_eq!(out.len(), 14 + 20 + 8 + 28, "{out:02x?}");
    assert_eq!(&out[0..6], &packet[6..12], "to the sender's MAC");
    assert_eq!(&out[6..12], &packet[0..6], "from the receiver's MAC");
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 56, "total length");
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(
        &ip[12..16],
        &packet[30..34],
        "from the packet's destination"
    );
    assert_eq!(&ip[16..20], &packet[26..30], "to the packet's source");
    assert_eq!(fold(sum16(ip, 0)), 0, "IPv4 header checksum");
    let icmp = &out[34..];
    assert_eq!((icmp[0], icmp[1]), (icmp_type, code), "type and code");
    assert_eq!(&icmp[4..8], &rest, "second header word");
    assert_eq!(fold(sum16(icmp, 0)), 0, "ICMP checksum");
    assert_eq!(
        &icmp[8..],
        &packet[14..14 + 28],
        "quotes the IP header and 8 bytes"
    );
}

#[test]
fn a_frontend_without_endpoints_answers_icmp_port_unreachable() {
    if !privileged("tc_packets::a_frontend_without_endpoints_answers_icmp_port_unreachable") {
        return;
    }
    let (datapath, _netns) = programmed(0);

    let client = Ipv4Addr::new(198, 51, 100, 7);
    let mut packet = syn(client, 40_000, LB_IP, 80);
    packet[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xaa]);
    packet[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xbb]);
    let (verdict, out) = run(ingress(&datapath), &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back out: {out:02x?}");
    assert_icmp4(&out, &packet, (3, 3), [0; 4]);
}

#[test]
fn an_ipv6_frontend_without_endpoints_answers_icmpv6_port_unreachable() {
    if !privileged("tc_packets::an_ipv6_frontend_without_endpoints_answers_icmpv6_port_unreachable")
    {
        return;
    }
    let (mut datapath, _netns) = datapath();
    let (mut writer, _rx) = ModelWriter::new();
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web6, namespace: t}\nspec:\n  clusterIP: \"fd96::80\"\n  clusterIPs: [\"fd96::80\"]\n  ipFamilies: [IPv6]\n  ports: [{port: 53, protocol: UDP, targetPort: 5353}]\n  externalIPs: [\"2001:db8::80\"]\n";
    let value: serde_json::Value = serde_norway::from_str(yaml).expect("yaml");
    let object = decode(value).expect("object");
    writer.replace_all(
        vec![Change::Upsert {
            object,
            origin: None,
        }],
        Vec::new(),
        true,
    );
    let mut reconciler = Reconciler::new(Some("node-1".to_owned()));
    let report = reconciler.sync(&writer.snapshot(), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let client: Ipv6Addr = "2001:db8:1::7".parse().unwrap();
    let frontend: Ipv6Addr = "2001:db8::80".parse().unwrap();
    let packet = udp6(client, 40_000, frontend, 53);
    let (verdict, out) = run(program(&datapath, programs::TC_INGRESS6), &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back out: {out:02x?}");
    assert_eq!(out.len(), 14 + 40 + 8 + 48, "{out:02x?}");
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    assert_eq!(out[14] >> 4, 6);
    assert_eq!(u16::from_be_bytes([out[18], out[19]]), 56, "payload length");
    assert_eq!(out[20], 58, "ICMPv6");
    assert_eq!(&out[22..38], &frontend.octets(), "from the frontend");
    assert_eq!(&out[38..54], &client.octets(), "to the client");
    let icmp = &out[54..];
    assert_eq!((icmp[0], icmp[1]), (1, 4), "destination unreachable, port");
    assert_eq!(
        fold(sum16(icmp, pseudo6(&out, 56, 58))),
        0,
        "ICMPv6 checksum"
    );
    assert_eq!(
        &icmp[8..],
        &packet[14..14 + 48],
        "quotes the IPv6 header and 8 bytes"
    );
}

#[test]
fn an_icmp_error_about_a_reply_goes_to_the_backend() {
    if !privileged("tc_packets::an_icmp_error_about_a_reply_goes_to_the_backend") {
        return;
    }
    let (datapath, _netns) = programmed(1);
    // A flow: client → frontend, balanced to the (local) backend 10.244.1.10:8080.
    let client = Ipv4Addr::new(198, 51, 100, 7);
    let (verdict, _) = run(ingress(&datapath), &syn(client, 40_000, LB_IP, 80));
    assert_eq!(verdict, TC_ACT_OK);

    // A router on the client's side says the flow's reply (frontend → client) was too big.
    let router = Ipv4Addr::new(203, 0, 113, 1);
    let reply = syn(LB_IP, 80, client, 40_000);
    let mut error = vec![0_u8; 14 + 20 + 8 + 28];
    error[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
    error[14] = 0x45;
    error[16..18].copy_from_slice(&56_u16.to_be_bytes());
    error[22] = 64;
    error[23] = 1;
    error[26..30].copy_from_slice(&router.octets());
    error[30..34].copy_from_slice(&LB_IP.octets());
    let csum = fold(sum16(&error[14..34], 0));
    error[24..26].copy_from_slice(&csum.to_be_bytes());
    error[34] = 3;
    error[35] = 4;
    error[40..42].copy_from_slice(&1400_u16.to_be_bytes());
    error[42..70].copy_from_slice(&reply[14..42]);
    let csum = fold(sum16(&error[34..], 0));
    error[36..38].copy_from_slice(&csum.to_be_bytes());

    let (verdict, out) = run(ingress(&datapath), &error);
    assert_eq!(verdict, TC_ACT_OK, "to the stack: {out:02x?}");
    // To the backend, quoting the reply as the backend sent it.
    assert_eq!(&out[26..30], &router.octets(), "outer source kept");
    assert_eq!(
        &out[30..34],
        &[10, 244, 1, 10],
        "outer destination: the backend"
    );
    assert_eq!(fold(sum16(&out[14..34], 0)), 0, "outer IPv4 checksum");
    let inner = &out[42..70];
    assert_eq!(
        &inner[12..16],
        &[10, 244, 1, 10],
        "quoted source: the backend"
    );
    assert_eq!(
        &inner[16..20],
        &client.octets(),
        "quoted destination: the client"
    );
    assert_eq!(
        u16::from_be_bytes([inner[20], inner[21]]),
        8080,
        "backend port"
    );
    assert_eq!(
        u16::from_be_bytes([inner[22], inner[23]]),
        40_000,
        "client port"
    );
    assert_eq!(fold(sum16(&inner[..20], 0)), 0, "quoted IPv4 checksum");
    assert_eq!(fold(sum16(&out[34..], 0)), 0, "ICMP checksum");
    assert_eq!(&out[40..42], &1400_u16.to_be_bytes(), "the MTU kept");
}
