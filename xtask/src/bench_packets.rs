//! `cargo xtask bench proxy --packet-runs N`: the TC ingress program's own time per packet
//! (`BPF_PROG_TEST_RUN`, the kernel's measure of one run), for the packets of a NodePort-
//! style flow to a backend on another node (DNAT + SNAT): a SYN of a new flow, a packet of
//! a known flow, a reply of one, and a packet of no flow at all. Each packet is run once per
//! call (a repeated run would see its own rewrite), N flows, best of 5 rounds of their mean:
//! a figure of the program and its map lookups, far less tied to the machine's load than
//! the NodePort benchmark's CPU per connection.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use fairlead_model::{Change, ModelWriter, decode};
use fairlead_proxy::abi::{Be32, maps, programs};
use fairlead_proxy::{Datapath, LoadOptions, Reconciler};

use crate::bench_proxy::{Netns, enter};

const FRONTEND: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);

/// An Ethernet + IPv4 + TCP packet with the given flags (checksums left zero: the program
/// does not check them).
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0_u8; 14 + 20 + 20];
    p[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
    p[14] = 0x45;
    p[16..18].copy_from_slice(&40_u16.to_be_bytes());
    p[22] = 64;
    p[23] = 6;
    p[26..30].copy_from_slice(&src.octets());
    p[30..34].copy_from_slice(&dst.octets());
    p[34..36].copy_from_slice(&sport.to_be_bytes());
    p[36..38].copy_from_slice(&dport.to_be_bytes());
    p[46] = 5 << 4;
    p[47] = flags;
    p
}

/// The kernel's time of one run of `program` on `packet`, in ns.
fn once(program: &SchedClassifier, packet: &[u8]) -> Result<u64> {
    let mut out = vec![0_u8; 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok(u64::from(
        result.duration.as_nanos().try_into().unwrap_or(u32::MAX),
    ))
}

/// Runs the benchmark with `flows` flows per round and prints the figures.
pub(crate) fn run(flows: usize) -> Result<()> {
    let ns = Netns::new(&format!("fl-bench-pkt-{}", std::process::id()))?;
    // This thread only: BPF_PROG_TEST_RUN's FIB lookups read the caller's namespace.
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<String> {
                enter(&ns.0)?;
                measure(flows)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the packet benchmark thread panicked"))?
    })?;
    print!("{result}");
    Ok(())
}

fn measure(flows: usize) -> Result<String> {
    let mut datapath = Datapath::load(&LoadOptions::new()).context("loading the eBPF object")?;
    let program: &mut SchedClassifier = datapath
        .ebpf_mut()
        .program_mut(programs::TC_INGRESS)
        .context("no TC ingress program")?
        .try_into()?;
    program.load()?;
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: t}}\nspec:\n  clusterIP: 10.96.0.80\n  ports: [{{port: 80, targetPort: 8080}}]\n  externalIPs: [\"{FRONTEND}\"]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: t, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n  - {{addresses: [\"{BACKEND}\"], conditions: {{ready: true}}, nodeName: node-2}}\n"
    );
    let mut changes = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&yaml) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        changes.push(Change::Upsert {
            object: decode(value).map_err(|e| anyhow::anyhow!("{e:?}"))?,
            origin: None,
        });
    }
    let (mut writer, _rx) = ModelWriter::new();
    writer.replace_all(changes, Vec::new(), true);
    let report = Reconciler::new(Some("node-1".to_owned())).sync(&writer.snapshot(), &mut datapath);
    anyhow::ensure!(report.errors.is_empty(), "{:?}", report.errors);
    {
        let map = datapath.ebpf_mut().map_mut(maps::IF_ADDR4).context("map")?;
        let mut addrs = HashMap::<&mut MapData, u32, Be32>::try_from(map)?;
        addrs.insert(0, Be32::from_raw(u32::from_ne_bytes(NODE.octets())), 0)?;
    }
    let program: &SchedClassifier = datapath
        .ebpf()
        .program(programs::TC_INGRESS)
        .context("no TC ingress program")?
        .try_into()?;
    let client = |i: usize| {
        let i = u32::try_from(i).unwrap_or(0);
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i / 20_000)
    };
    let port = |i: usize| u16::try_from(10_000 + i % 20_000).unwrap_or(10_000);
    let labels = [
        "SYN of a new flow",
        "a known flow's packet",
        "a reply (source NAT undone)",
        "no flow, no frontend",
    ];
    let mut best = [u64::MAX; 4];
    for round in 0..5 {
        let mut sums = [0_u64; 4];
        for i in 0..flows {
            let k = round * flows + i;
            let (src, sport) = (client(k), port(k));
            sums[0] += once(program, &tcp(src, sport, FRONTEND, 80, 0x02))?;
            sums[1] += once(program, &tcp(src, sport, FRONTEND, 80, 0x10))?;
            // Source NAT keeps the client's port when it is free (it is: one client port per
            // flow here).
            sums[2] += once(program, &tcp(BACKEND, 8080, NODE, sport, 0x12))?;
            sums[3] += once(
                program,
                &tcp(src, sport, Ipv4Addr::new(203, 0, 113, 9), 80, 0x10),
            )?;
        }
        for (b, s) in best.iter_mut().zip(sums) {
            *b = (*b).min(s / u64::try_from(flows.max(1)).unwrap_or(1));
        }
    }
    let mut out = format!(
        "TC ingress, ns per packet (BPF_PROG_TEST_RUN, one run per call, {flows} flows, best of 5 means):\n"
    );
    for (label, ns) in labels.iter().zip(best) {
        let _ = writeln!(out, "    {label:<30} {ns:>6} ns");
    }
    Ok(out)
}
