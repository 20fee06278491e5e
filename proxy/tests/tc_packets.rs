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
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use fairlead_model::{Change, ModelWriter, Snapshot, decode};
use fairlead_proxy::abi::{Be32, Ct4Key, CtValue, maps, programs};
use fairlead_proxy::testing::{TestNetns, error_chain, privileged};
use fairlead_proxy::{Datapath, LoadOptions, Reconciler};

const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn snapshot(writer: &mut ModelWriter, backends: usize) -> Arc<Snapshot> {
    snapshot_with(writer, backends, "")
}

/// The model `writer` makes of the YAML documents `yaml` (replacing what it held).
fn load(writer: &mut ModelWriter, yaml: &str) -> Arc<Snapshot> {
    let changes: Vec<Change> = serde_norway::Deserializer::from_str(yaml)
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
    load(writer, &yaml)
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

/// `TC_ACT_UNSPEC`: not ours, on to the next program or the stack.
const TC_ACT_UNSPEC: u32 = u32::MAX;
/// `XDP_PASS`.
const XDP_PASS: u32 = 2;

/// A UDP Service `dns` on `LB_IP`:53 → 5353 with one endpoint, 10.244.`subnet`.10, on
/// `node` (node-1 is this node: a local backend; node-2: another node's, reached with
/// source NAT).
fn udp_service(writer: &mut ModelWriter, node: &str, subnet: u8) -> Arc<Snapshot> {
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: t}}\nspec:\n  clusterIP: 10.96.0.53\n  ports: [{{port: 53, protocol: UDP, targetPort: 5353}}]\n  externalIPs: [\"{LB_IP}\"]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dns-1, namespace: t, labels: {{kubernetes.io/service-name: dns}}}}\naddressType: IPv4\nports: [{{port: 5353, protocol: UDP}}]\nendpoints:\n  - {{addresses: [\"10.244.{subnet}.10\"], conditions: {{ready: true}}, nodeName: {node}}}\n"
    );
    load(writer, &yaml)
}

/// A UDP datagram of `payload` from `src` to `dst` with IP identification `id`, as the
/// Ethernet frames of its fragments: IP payloads of `first` bytes (UDP header included),
/// then `middle`-byte pieces, then the rest (every length a multiple of 8 but the last's).
/// Checksums correct: the IPv4 header's of each fragment, the UDP one over the datagram.
fn udp_fragments(
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    id: u16,
    payload: &[u8],
    (first, middle): (usize, usize),
) -> Vec<Vec<u8>> {
    let udp_len = u16::try_from(8 + payload.len()).unwrap();
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let csum = fold(sum16(&udp, sum16(&pseudo, 0)));
    udp[6..8].copy_from_slice(&csum.to_be_bytes());

    let mut frames = Vec::new();
    let mut offset = 0;
    while offset < udp.len() {
        let size = if offset == 0 { first } else { middle };
        let end = (offset + size).min(udp.len());
        let more = end < udp.len();
        let mut p = vec![0_u8; 14 + 20];
        p[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
        let ip = &mut p[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&u16::try_from(20 + end - offset).unwrap().to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        let flags = u16::try_from(offset / 8).unwrap() | if more { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&flags.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let csum = fold(sum16(ip, 0));
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        p.extend_from_slice(&udp[offset..end]);
        frames.push(p);
        offset = end;
    }
    frames
}

/// Loads the classifier `name` of the object (the packet-test datapath loads only the
/// ingress programs).
fn load_classifier(datapath: &mut Datapath, name: &str) {
    let program: &mut SchedClassifier = datapath
        .ebpf_mut()
        .program_mut(name)
        .expect("program")
        .try_into()
        .expect("a classifier");
    program
        .load()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
}

/// Loads the XDP program of `datapath` (attached nowhere: `BPF_PROG_TEST_RUN` runs it).
fn load_xdp(datapath: &mut Datapath) {
    let xdp: &mut Xdp = datapath
        .ebpf_mut()
        .program_mut(programs::XDP)
        .expect("program")
        .try_into()
        .expect("xdp");
    xdp.load().unwrap_or_else(|e| panic!("{}", error_chain(&e)));
}

/// Sets the node's source-NAT address (`IF_ADDR4` key 0), as user space does from the
/// node's InternalIP.
fn set_snat_address(datapath: &mut Datapath, address: Ipv4Addr) {
    let map = datapath.ebpf_mut().map_mut(maps::IF_ADDR4).expect("map");
    let mut addrs = HashMap::<&mut MapData, u32, Be32>::try_from(map).expect("if addrs");
    addrs
        .insert(0, Be32::from_raw(u32::from_ne_bytes(address.octets())), 0)
        .expect("insert");
}

/// A datagram's payload: `len` bytes counting up.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect()
}

/// Every fragment of a UDP datagram to a frontend reaches the backend its first fragment
/// was balanced to, with the first fragment's source NAT; the backend's fragmented reply
/// comes back from the frontend, every fragment of it. Byte for byte: each translated
/// fragment is exactly the fragment of the translated datagram (addresses, ports, IPv4
/// header checksums, the datagram's UDP checksum in its first fragment), payload
/// untouched. A later fragment whose first was never seen goes on untouched.
#[test]
fn udp_fragments_follow_their_first_fragment_both_ways() {
    if !privileged("tc_packets::udp_fragments_follow_their_first_fragment_both_ways") {
        return;
    }
    let (mut datapath, _netns) = datapath();
    let (mut writer, _rx) = ModelWriter::new();
    let report = Reconciler::new(Some("node-1".to_owned()))
        .sync(&udp_service(&mut writer, "node-2", 2), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let node = Ipv4Addr::new(172, 18, 0, 1);
    set_snat_address(&mut datapath, node);
    let backend = Ipv4Addr::new(10, 244, 2, 10);
    let program = ingress(&datapath);

    // Client → frontend, 3 fragments (24 + 24 + 20 bytes of IP payload).
    let client = Ipv4Addr::new(198, 51, 100, 7);
    let data = payload(60);
    let sent = udp_fragments((client, 40_000), (LB_IP, 53), 0x1234, &data, (24, 24));
    assert_eq!(sent.len(), 3);
    // The datagram as the backend must receive it: from the node (same port: free), to
    // the backend.
    let expected = udp_fragments((node, 40_000), (backend, 5353), 0x1234, &data, (24, 24));
    for (i, (fragment, want)) in sent.iter().zip(&expected).enumerate() {
        let (verdict, out) = run(program, fragment);
        assert_eq!(
            verdict, TC_ACT_OK,
            "fragment {i}: to the stack (no route here)"
        );
        assert_eq!(out, *want, "fragment {i}, byte for byte");
    }

    // A later fragment of a datagram whose first fragment was never seen: untouched.
    let orphan = udp_fragments((client, 40_001), (LB_IP, 53), 0x9999, &data, (24, 24));
    let (verdict, out) = run(program, &orphan[1]);
    assert_eq!(verdict, TC_ACT_UNSPEC, "not ours");
    assert_eq!(out, orphan[1], "untouched");

    // The backend answers with a fragmented datagram to the node: back from the frontend
    // to the client, every fragment.
    let answer = payload(44);
    let reply = udp_fragments((backend, 5353), (node, 40_000), 0x4321, &answer, (16, 16));
    assert_eq!(reply.len(), 4);
    let expected = udp_fragments((LB_IP, 53), (client, 40_000), 0x4321, &answer, (16, 16));
    for (i, (fragment, want)) in reply.iter().zip(&expected).enumerate() {
        let (verdict, out) = run(program, fragment);
        assert_eq!(verdict, TC_ACT_OK, "reply fragment {i}");
        assert_eq!(out, *want, "reply fragment {i}, byte for byte");
    }

    // Fragments of another client's datagram with the same IP id keep apart.
    let other = Ipv4Addr::new(198, 51, 100, 8);
    let sent = udp_fragments((other, 40_000), (LB_IP, 53), 0x1234, &data, (24, 24));
    let (_, first) = run(program, &sent[0]);
    let nat_port = u16::from_be_bytes([first[34], first[35]]);
    let expected = udp_fragments((node, nat_port), (backend, 5353), 0x1234, &data, (24, 24));
    assert_eq!(first, expected[0]);
    for (fragment, want) in sent[1..].iter().zip(&expected[1..]) {
        assert_eq!(run(program, fragment), (TC_ACT_OK, want.clone()));
    }
}

/// A local backend's fragmented reply leaves through TC egress with the frontend as
/// source, every fragment of it; the client's fragments reach that backend with their
/// source kept. The same at XDP for the ingress half.
#[test]
fn udp_fragments_of_a_local_backend_at_tc_egress_and_xdp() {
    if !privileged("tc_packets::udp_fragments_of_a_local_backend_at_tc_egress_and_xdp") {
        return;
    }
    let (mut datapath, _netns) = datapath();
    load_classifier(&mut datapath, programs::TC_EGRESS);
    load_xdp(&mut datapath);
    let (mut writer, _rx) = ModelWriter::new();
    let report = Reconciler::new(Some("node-1".to_owned()))
        .sync(&udp_service(&mut writer, "node-1", 1), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let backend = Ipv4Addr::new(10, 244, 1, 10);
    let client = Ipv4Addr::new(198, 51, 100, 9);
    let data = payload(100);

    for (round, sport) in [40_100_u16, 40_101].into_iter().enumerate() {
        let id = 0x0a00 + u16::try_from(round).unwrap();
        let sent = udp_fragments((client, sport), (LB_IP, 53), id, &data, (32, 40));
        assert_eq!(sent.len(), 3);
        let expected = udp_fragments((client, sport), (backend, 5353), id, &data, (32, 40));
        for (i, (fragment, want)) in sent.iter().zip(&expected).enumerate() {
            let out = if round == 0 {
                let (verdict, out) = run(ingress(&datapath), fragment);
                assert_eq!(verdict, TC_ACT_OK, "TC, fragment {i}");
                out
            } else {
                let (verdict, out) = run_xdp(&datapath, fragment);
                assert_eq!(verdict, XDP_PASS, "XDP, fragment {i}");
                out
            };
            assert_eq!(out, *want, "round {round}, fragment {i}, byte for byte");
        }
        // The backend's fragmented answer leaves from the frontend.
        let answer = payload(70);
        let reply = udp_fragments((backend, 5353), (client, sport), id, &answer, (24, 24));
        let expected = udp_fragments((LB_IP, 53), (client, sport), id, &answer, (24, 24));
        for (i, (fragment, want)) in reply.iter().zip(&expected).enumerate() {
            let (verdict, out) = run(program(&datapath, programs::TC_EGRESS), fragment);
            assert_eq!(verdict, TC_ACT_OK, "egress, fragment {i}");
            assert_eq!(
                out, *want,
                "egress, round {round}, fragment {i}, byte for byte"
            );
        }
    }
}

/// Runs the XDP program on `packet`.
fn run_xdp(datapath: &Datapath, packet: &[u8]) -> (u32, Vec<u8>) {
    let program: &Xdp = datapath
        .ebpf()
        .program(programs::XDP)
        .expect("program")
        .try_into()
        .expect("xdp");
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

/// An IPv6 Service `v6` on `2001:db8::80` (TCP 80 → 8080, UDP 53 → 5353) with one
/// endpoint, `backend`, on `node`.
fn ipv6_service(writer: &mut ModelWriter, backend: Ipv6Addr, node: &str) -> Arc<Snapshot> {
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: v6, namespace: t}}\nspec:\n  clusterIP: \"fd96::80\"\n  clusterIPs: [\"fd96::80\"]\n  ipFamilies: [IPv6]\n  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}]\n  externalIPs: [\"2001:db8::80\"]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: v6-1, namespace: t, labels: {{kubernetes.io/service-name: v6}}}}\naddressType: IPv6\nports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n  - {{addresses: [\"{backend}\"], conditions: {{ready: true}}, nodeName: {node}}}\n"
    );
    load(writer, &yaml)
}

/// The IPv6 pseudo-header sum (RFC 8200 8.1).
fn pseudo6_sum(src: Ipv6Addr, dst: Ipv6Addr, length: usize, protocol: u8) -> u32 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::try_from(length).unwrap().to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, protocol]);
    sum16(&pseudo, 0)
}

/// A UDP header and `payload`, checksum over the IPv6 pseudo-header.
fn udp6_datagram(
    (src, sport): (Ipv6Addr, u16),
    (dst, dport): (Ipv6Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let csum = fold(sum16(&udp, pseudo6_sum(src, dst, len, 17)));
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
    udp
}

/// A TCP SYN header, checksum over the IPv6 pseudo-header.
fn tcp6_syn((src, sport): (Ipv6Addr, u16), (dst, dport): (Ipv6Addr, u16)) -> Vec<u8> {
    let mut tcp = vec![0_u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&7_u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&65_535_u16.to_be_bytes());
    let csum = fold(sum16(&tcp, pseudo6_sum(src, dst, 20, 6)));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    tcp
}

/// Hop-by-hop options: one PadN option filling 8 bytes.
const HOP_BY_HOP: (u8, &[u8]) = (0, &[0, 0, 1, 4, 0, 0, 0, 0]);
/// Destination options, 16 bytes: a PadN option of 12.
const DEST_OPTS: (u8, &[u8]) = (60, &[0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
/// A routing header (an experimental type, RFC 4727) with no segment left.
const ROUTING: (u8, &[u8]) = (43, &[0, 0, 253, 0, 0, 0, 0, 0]);

/// An Ethernet + IPv6 frame: `extensions` (type, bytes; their next-header bytes are set
/// here) then `upper` of protocol `protocol`.
fn ipv6_frame(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    extensions: &[(u8, &[u8])],
    protocol: u8,
    upper: &[u8],
) -> Vec<u8> {
    let mut p = vec![0_u8; 14 + 40];
    p[12..14].copy_from_slice(&0x86dd_u16.to_be_bytes());
    p[14] = 0x60;
    p[21] = 64;
    p[22..38].copy_from_slice(&src.octets());
    p[38..54].copy_from_slice(&dst.octets());
    p[20] = extensions.first().map_or(protocol, |(kind, _)| *kind);
    for (i, (_, bytes)) in extensions.iter().enumerate() {
        let mut header = bytes.to_vec();
        header[0] = extensions.get(i + 1).map_or(protocol, |(kind, _)| *kind);
        p.extend_from_slice(&header);
    }
    p.extend_from_slice(upper);
    let payload = u16::try_from(p.len() - 54).unwrap();
    p[18..20].copy_from_slice(&payload.to_be_bytes());
    p
}

/// A fragment header: `offset` bytes into the datagram, more to come or not.
fn fragment_header(offset: usize, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![0_u8; 8];
    let word = u16::try_from(offset).unwrap() | u16::from(more);
    h[2..4].copy_from_slice(&word.to_be_bytes());
    h[4..8].copy_from_slice(&id.to_be_bytes());
    h
}

/// The fragments of an IPv6 UDP datagram (hop-by-hop options, then the fragment header):
/// pieces of `size` bytes (a multiple of 8), the last one what is left.
fn udp6_fragments(
    (src, sport): (Ipv6Addr, u16),
    (dst, dport): (Ipv6Addr, u16),
    id: u32,
    payload: &[u8],
    size: usize,
) -> Vec<Vec<u8>> {
    let datagram = udp6_datagram((src, sport), (dst, dport), payload);
    datagram
        .chunks(size)
        .enumerate()
        .map(|(i, piece)| {
            let more = (i + 1) * size < datagram.len();
            let fragment = fragment_header(i * size, more, id);
            ipv6_frame(src, dst, &[HOP_BY_HOP, (44, &fragment)], 17, piece)
        })
        .collect()
}

/// IPv6 packets with hop-by-hop, destination-options and routing headers before TCP/UDP
/// are balanced at TC and XDP, and the local backend's reply (with destination options)
/// leaves from the frontend. Byte for byte: the extension headers untouched, the addresses,
/// ports and L4 checksum those of the translated packet.
#[test]
fn ipv6_extension_headers_are_walked_and_the_rewrite_is_exact() {
    if !privileged("tc_packets::ipv6_extension_headers_are_walked_and_the_rewrite_is_exact") {
        return;
    }
    let (mut datapath, _netns) = datapath();
    load_classifier(&mut datapath, programs::TC_EGRESS6);
    load_xdp(&mut datapath);
    let backend: Ipv6Addr = "fd44:1::10".parse().unwrap();
    let (mut writer, _rx) = ModelWriter::new();
    let report = Reconciler::new(Some("node-1".to_owned()))
        .sync(&ipv6_service(&mut writer, backend, "node-1"), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let frontend: Ipv6Addr = "2001:db8::80".parse().unwrap();
    let client: Ipv6Addr = "2001:db8:1::7".parse().unwrap();
    let ingress6 = program(&datapath, programs::TC_INGRESS6);

    let chains: [&[(u8, &[u8])]; 4] = [
        &[HOP_BY_HOP],
        &[DEST_OPTS],
        &[HOP_BY_HOP, DEST_OPTS],
        &[HOP_BY_HOP, ROUTING, DEST_OPTS],
    ];
    let mut sport = 41_000_u16;
    for (i, chain) in chains.iter().enumerate() {
        for (protocol, at_xdp) in [(17, false), (6, false), (17, true), (6, true)] {
            sport += 1;
            let (port, target) = if protocol == 17 {
                (53, 5353)
            } else {
                (80, 8080)
            };
            let upper = |dst: Ipv6Addr, dport: u16| {
                if protocol == 17 {
                    udp6_datagram((client, sport), (dst, dport), b"question")
                } else {
                    tcp6_syn((client, sport), (dst, dport))
                }
            };
            let packet = ipv6_frame(client, frontend, chain, protocol, &upper(frontend, port));
            let want = ipv6_frame(client, backend, chain, protocol, &upper(backend, target));
            let (verdict, out) = if at_xdp {
                run_xdp(&datapath, &packet)
            } else {
                run(ingress6, &packet)
            };
            let hook = if at_xdp { "XDP" } else { "TC" };
            assert_eq!(
                verdict,
                if at_xdp { XDP_PASS } else { TC_ACT_OK },
                "chain {i}, protocol {protocol}, {hook}"
            );
            assert_eq!(
                out, want,
                "chain {i}, protocol {protocol}, {hook}: byte for byte"
            );

            // The reply, with destination options, leaves from the frontend.
            let reply_upper = |src: Ipv6Addr, from: u16| {
                if protocol == 17 {
                    udp6_datagram((src, from), (client, sport), b"answer!!")
                } else {
                    tcp6_syn((src, from), (client, sport))
                }
            };
            let reply = ipv6_frame(
                backend,
                client,
                &[DEST_OPTS],
                protocol,
                &reply_upper(backend, target),
            );
            let want = ipv6_frame(
                frontend,
                client,
                &[DEST_OPTS],
                protocol,
                &reply_upper(frontend, port),
            );
            let (verdict, out) = run(program(&datapath, programs::TC_EGRESS6), &reply);
            assert_eq!(verdict, TC_ACT_OK, "reply, chain {i}, protocol {protocol}");
            assert_eq!(
                out, want,
                "reply, chain {i}, protocol {protocol}: byte for byte"
            );
        }
    }

    // More extension headers than the parser walks: untouched.
    let long: [(u8, &[u8]); 5] = [HOP_BY_HOP, DEST_OPTS, ROUTING, DEST_OPTS, DEST_OPTS];
    let packet = ipv6_frame(
        client,
        frontend,
        &long,
        17,
        &udp6_datagram((client, 42_000), (frontend, 53), b"question"),
    );
    let (verdict, out) = run(ingress6, &packet);
    assert_eq!(verdict, TC_ACT_UNSPEC, "not balanced");
    assert_eq!(out, packet, "untouched");
}

/// IPv6 fragments (hop-by-hop options, then the fragment header) of a datagram to a
/// backend on another node: every fragment gets the first's translation, source NAT
/// included, and the backend's fragmented answer comes back from the frontend. A later
/// fragment of an unseen datagram goes on untouched.
#[test]
fn ipv6_udp_fragments_follow_their_first_fragment() {
    if !privileged("tc_packets::ipv6_udp_fragments_follow_their_first_fragment") {
        return;
    }
    let (mut datapath, _netns) = datapath();
    let backend: Ipv6Addr = "fd44:2::10".parse().unwrap();
    let (mut writer, _rx) = ModelWriter::new();
    let report = Reconciler::new(Some("node-1".to_owned()))
        .sync(&ipv6_service(&mut writer, backend, "node-2"), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let node: Ipv6Addr = "fd18::1".parse().unwrap();
    {
        let map = datapath.ebpf_mut().map_mut(maps::IF_ADDR6).expect("map");
        let mut addrs = HashMap::<&mut MapData, u32, [u8; 16]>::try_from(map).expect("map");
        addrs.insert(0, node.octets(), 0).expect("insert");
    }
    let frontend: Ipv6Addr = "2001:db8::80".parse().unwrap();
    let client: Ipv6Addr = "2001:db8:1::7".parse().unwrap();
    let ingress6 = program(&datapath, programs::TC_INGRESS6);
    let data = payload(90);

    let sent = udp6_fragments((client, 43_000), (frontend, 53), 0xdead_beef, &data, 32);
    assert_eq!(sent.len(), 4);
    let want = udp6_fragments((node, 43_000), (backend, 5353), 0xdead_beef, &data, 32);
    for (i, (fragment, want)) in sent.iter().zip(&want).enumerate() {
        let (verdict, out) = run(ingress6, fragment);
        assert_eq!(verdict, TC_ACT_OK, "fragment {i}");
        assert_eq!(out, *want, "fragment {i}, byte for byte");
    }

    let answer = payload(50);
    let reply = udp6_fragments((backend, 5353), (node, 43_000), 7, &answer, 24);
    let want = udp6_fragments((frontend, 53), (client, 43_000), 7, &answer, 24);
    for (i, (fragment, want)) in reply.iter().zip(&want).enumerate() {
        let (verdict, out) = run(ingress6, fragment);
        assert_eq!(verdict, TC_ACT_OK, "reply fragment {i}");
        assert_eq!(out, *want, "reply fragment {i}, byte for byte");
    }

    let orphan = udp6_fragments((client, 43_001), (frontend, 53), 99, &data, 32);
    let (verdict, out) = run(ingress6, &orphan[2]);
    assert_eq!(verdict, TC_ACT_UNSPEC, "not ours");
    assert_eq!(out, orphan[2], "untouched");
}

/// A TCP flow to a backend on another node, at TC and at XDP: the SYN leaves from the
/// node's address to the backend, its reply comes back from the frontend to the client,
/// byte for byte (both addresses and ports rewritten at once, every checksum with them).
#[test]
fn source_nat_rewrites_both_directions_byte_for_byte() {
    if !privileged("tc_packets::source_nat_rewrites_both_directions_byte_for_byte") {
        return;
    }
    let (mut datapath, _netns) = datapath();
    load_xdp(&mut datapath);
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: t}}\nspec:\n  clusterIP: 10.96.0.80\n  ports: [{{port: 80, targetPort: 8080}}]\n  externalIPs: [\"{LB_IP}\"]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: t, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n  - {{addresses: [\"10.244.2.10\"], conditions: {{ready: true}}, nodeName: node-2}}\n"
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
    let (mut writer, _rx) = ModelWriter::new();
    writer.replace_all(changes, Vec::new(), true);
    let report = Reconciler::new(Some("node-1".to_owned())).sync(&writer.snapshot(), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let node = Ipv4Addr::new(172, 18, 0, 1);
    set_snat_address(&mut datapath, node);
    let backend = Ipv4Addr::new(10, 244, 2, 10);
    let client = Ipv4Addr::new(198, 51, 100, 7);
    for (sport, at_xdp) in [(40_000, false), (40_001, true)] {
        let (verdict, out) = if at_xdp {
            run_xdp(&datapath, &syn(client, sport, LB_IP, 80))
        } else {
            run(ingress(&datapath), &syn(client, sport, LB_IP, 80))
        };
        assert_eq!(verdict, if at_xdp { XDP_PASS } else { TC_ACT_OK });
        assert_eq!(out, syn(node, sport, backend, 8080), "SYN, XDP: {at_xdp}");
        let (verdict, out) = if at_xdp {
            run_xdp(&datapath, &syn(backend, 8080, node, sport))
        } else {
            run(ingress(&datapath), &syn(backend, 8080, node, sport))
        };
        assert_eq!(verdict, if at_xdp { XDP_PASS } else { TC_ACT_OK });
        assert_eq!(out, syn(LB_IP, 80, client, sport), "reply, XDP: {at_xdp}");
    }
}

/// The model of the `web` Service with one local endpoint per address of `backends`.
fn with_backends(writer: &mut ModelWriter, backends: &[Ipv4Addr]) -> Arc<Snapshot> {
    let mut eps = String::new();
    for address in backends {
        let _ = writeln!(
            eps,
            "  - {{addresses: [\"{address}\"], conditions: {{ready: true}}, nodeName: node-1}}"
        );
    }
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: t}}\nspec:\n  clusterIP: 10.96.0.80\n  ports: [{{port: 80, targetPort: 8080}}]\n  externalIPs: [\"{LB_IP}\"]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: t, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{eps}"
    );
    load(writer, &yaml)
}

/// A known flow is translated from its conntrack entry alone (no backend lookup per
/// packet), so a removed backend's flows keep their entries until user space deletes them
/// (`Datapath::forget_backends`, after each sync): then their next packet is balanced anew
/// over the remaining backends, and the other flows keep theirs.
#[test]
fn a_removed_backends_flows_are_balanced_anew_once_forgotten() {
    if !privileged("tc_packets::a_removed_backends_flows_are_balanced_anew_once_forgotten") {
        return;
    }
    let (mut datapath, _netns) = datapath();
    let (mut writer, _rx) = ModelWriter::new();
    let mut reconciler = Reconciler::new(Some("node-1".to_owned()));
    let (kept, removed) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 1, 11));
    let report = reconciler.sync(&with_backends(&mut writer, &[kept, removed]), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.removed_external_backends.is_empty());

    let flows: Vec<(Ipv4Addr, u16)> = (0..40_u16)
        .map(|i| (Ipv4Addr::new(198, 51, 100, 9), 41_000 + i))
        .collect();
    let before = backends_of(&mut datapath, &flows);
    let on_removed: usize = before.iter().map(|b| usize::from(*b == 11)).sum();
    assert!(
        on_removed > 0 && on_removed < flows.len(),
        "both backends take flows: {before:?}"
    );

    let report = reconciler.sync(&with_backends(&mut writer, &[kept]), &mut datapath);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        report.removed_external_backends.len(),
        1,
        "{:?}",
        report.removed_external_backends
    );
    // Until the entries are deleted, the flows stay where conntrack says.
    assert_eq!(backends_of(&mut datapath, &flows), before);

    let deleted = datapath
        .forget_backends(&report.removed_external_backends)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    assert_eq!(
        deleted,
        2 * on_removed,
        "both directions of each of its flows"
    );
    let after = backends_of(&mut datapath, &flows);
    assert!(after.iter().all(|b| *b == 10), "{after:?}");
}

/// An ICMPv6 error about a flow conntrack does not know (the node's own traffic: here a
/// "packet too big" about a TCP connection of the node) goes on to the stack untouched.
#[test]
fn an_icmpv6_error_about_an_unknown_flow_goes_on_untouched() {
    if !privileged("tc_packets::an_icmpv6_error_about_an_unknown_flow_goes_on_untouched") {
        return;
    }
    let (datapath, _netns) = datapath();
    let router: Ipv6Addr = "2001:db8:ff::1".parse().unwrap();
    let node: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let peer: Ipv6Addr = "2001:db8:2::9".parse().unwrap();
    let mut p = vec![0_u8; 14 + 40 + 8 + 48];
    p[12..14].copy_from_slice(&0x86dd_u16.to_be_bytes());
    p[14] = 0x60;
    p[18..20].copy_from_slice(&56_u16.to_be_bytes());
    p[20] = 58;
    p[21] = 64;
    p[22..38].copy_from_slice(&router.octets());
    p[38..54].copy_from_slice(&node.octets());
    // Packet too big, MTU 1280, quoting the node's packet: node:40000 -> peer:443, TCP.
    p[54] = 2;
    p[58..62].copy_from_slice(&1280_u32.to_be_bytes());
    let quoted = &mut p[62..];
    quoted[0] = 0x60;
    quoted[4..6].copy_from_slice(&1400_u16.to_be_bytes());
    quoted[6] = 6;
    quoted[7] = 64;
    quoted[8..24].copy_from_slice(&node.octets());
    quoted[24..40].copy_from_slice(&peer.octets());
    quoted[40..42].copy_from_slice(&40_000_u16.to_be_bytes());
    quoted[42..44].copy_from_slice(&443_u16.to_be_bytes());
    let (verdict, out) = run(program(&datapath, programs::TC_INGRESS6), &p);
    assert_eq!(
        verdict, TC_ACT_UNSPEC,
        "not about a balanced flow: not ours"
    );
    assert_eq!(out, p, "untouched");
}

/// A source-NATed flow recorded by a fairlead whose conntrack keys named the direction (a
/// reply key with 1 after the protocol) keeps its translation after an upgrade: the agent
/// rewrites adopted entries to the direction-free keys (`Datapath::migrate_conntrack`), and
/// the flow's reply is translated as before, byte for byte.
#[test]
fn conntrack_entries_of_the_old_key_layout_are_migrated() {
    if !privileged("tc_packets::conntrack_entries_of_the_old_key_layout_are_migrated") {
        return;
    }
    let (mut datapath, _netns) = datapath();
    let node = Ipv4Addr::new(172, 18, 0, 1);
    let backend = Ipv4Addr::new(10, 244, 2, 10);
    let client = Ipv4Addr::new(198, 51, 100, 7);
    // The old layout: key {saddr, daddr, sport, dport, protocol, direction, pad}, value
    // {address, nat_address, port, nat_port, last_seen, backend_id, rev_nat_id, flags, pad}.
    let mut key = [0_u8; 16];
    key[0..4].copy_from_slice(&backend.octets());
    key[4..8].copy_from_slice(&node.octets());
    key[8..10].copy_from_slice(&8080_u16.to_be_bytes());
    key[10..12].copy_from_slice(&40_000_u16.to_be_bytes());
    key[12] = 6;
    key[13] = 1;
    let mut value = [0_u8; 24];
    value[0..4].copy_from_slice(&LB_IP.octets());
    value[4..8].copy_from_slice(&client.octets());
    value[8..10].copy_from_slice(&80_u16.to_be_bytes());
    value[10..12].copy_from_slice(&40_000_u16.to_be_bytes());
    value[16..20].copy_from_slice(&7_u32.to_ne_bytes());
    value[20..22].copy_from_slice(&3_u16.to_ne_bytes());
    value[22] = CtValue::FLAG_SNAT;
    {
        let map = datapath.ebpf_mut().map_mut(maps::CT4_TCP).expect("ct map");
        let mut ct = HashMap::<&mut MapData, [u8; 16], [u8; 24]>::try_from(map).expect("ct");
        ct.insert(key, value, 0).expect("insert");
    }
    let reply = syn(backend, 8080, node, 40_000);
    let (verdict, out) = run(ingress(&datapath), &reply);
    assert_eq!(verdict, TC_ACT_UNSPEC, "the old entry does not match");
    assert_eq!(out, reply);

    let rewritten = datapath
        .migrate_conntrack()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    assert_eq!(rewritten, 1);
    let (verdict, out) = run(ingress(&datapath), &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        out,
        syn(LB_IP, 80, client, 40_000),
        "translated back, byte for byte"
    );
    assert_eq!(datapath.migrate_conntrack().ok(), Some(0), "once");
}
