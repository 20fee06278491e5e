//! Privileged, packet level: the TC ingress program run on crafted packets with
//! `BPF_PROG_TEST_RUN`, over maps the reconciler programmed from a model. What the packet
//! tests prove better than the namespace tests: Maglev's behaviour over thousands of flows
//! (which backend each 5-tuple gets, before and after a backend goes), and that every
//! translated packet carries valid IPv4 and TCP checksums.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use aya::maps::{HashMap, MapData};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use fairlead_model::{Change, ModelWriter, Snapshot, decode};
use fairlead_proxy::abi::{Ct4Key, CtValue, maps, programs};
use fairlead_proxy::testing::{error_chain, privileged};
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
    let changes: Vec<Change> = serde_yaml::Deserializer::from_str(&yaml)
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
    let mut out = vec![0_u8; 256];
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
    let program: &SchedClassifier = datapath
        .ebpf()
        .program(programs::TC_INGRESS)
        .expect("program")
        .try_into()
        .expect("a classifier");
    flows
        .iter()
        .map(|(src, sport)| {
            let (verdict, out) = run(program, &syn(*src, *sport, LB_IP, 80));
            assert_eq!(verdict, 0, "TC_ACT_OK expected");
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

/// The object loaded with its TC ingress program.
fn datapath() -> Datapath {
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
    datapath
}

#[test]
fn session_affinity_sticks_external_clients_by_address() {
    if !privileged("tc_packets::session_affinity_sticks_external_clients_by_address") {
        return;
    }
    let mut datapath = datapath();
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
    let mut datapath = datapath();
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
