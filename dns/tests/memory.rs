//! What the record index costs in memory, per Service and per endpoint, on
//! a generated cluster shaped like the benchmark's (`cargo xtask bench dns`):
//! six in ten Services with a ClusterIP and two endpoints, three headless
//! with three, one with two ports; every endpoint names its Pod (so the
//! autopath/verified-pods map is full). Heap bytes are counted by a global
//! allocator as glibc's malloc would hand them out (16-byte granules, a
//! word of header, 32 bytes at least), on this thread only.
//!
//! `cargo nextest run -p fairlead-dns --test memory --no-capture` prints
//! the figures; the test fails when the index grows past the budget.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use fairlead_dns::{Index, PodsMode, ZoneConfig};
use fairlead_model::{Change, ModelWriter, decode};
use serde_json::{Value, json};

/// Services of the generated cluster (a fifth of the benchmark's: seconds
/// in a debug build).
const SERVICES: usize = 2_000;
/// Budget of the index, in bytes per endpoint, Services included (the
/// benchmark's cluster has 2.3 endpoints per Service).
const BUDGET_PER_ENDPOINT: usize = 800;

struct Counting;

thread_local! {
    static NET: Cell<isize> = const { Cell::new(0) };
}

/// What glibc's malloc takes for a request of `size` bytes.
fn footprint(size: usize) -> isize {
    isize::try_from(((size + 8 + 15) & !15).max(32)).unwrap_or(isize::MAX)
}

#[allow(
    unsafe_code,
    reason = "a global allocator that counts what it forwards"
)]
// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = NET.try_with(|n| n.set(n.get() + footprint(layout.size())));
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = NET.try_with(|n| n.set(n.get() - footprint(layout.size())));
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = NET.try_with(|n| {
            n.set(n.get() - footprint(layout.size()) + footprint(new_size));
        });
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocated() -> isize {
    NET.with(Cell::get)
}

/// The objects of the generated cluster and its endpoint count.
fn cluster(services: usize) -> (Vec<Value>, usize) {
    let mut objects = Vec::new();
    let mut next_ep = 0u32;
    let ip = |n: usize| format!("10.{}.{}.{}", 96 + n / 65536, (n / 256) % 256, n % 256);
    for i in 0..services {
        let ns = format!("ns{}", i % 100);
        let name = format!("svc{i}");
        let (spec, endpoints, ports) = match i % 10 {
            0..=5 => (
                json!({"clusterIP": ip(i + 1), "ports": [{"name": "http", "port": 80}]}),
                2,
                vec!["http"],
            ),
            6..=8 => (
                json!({"clusterIP": "None", "ports": [{"name": "http", "port": 8080}]}),
                3,
                vec!["http"],
            ),
            _ => (
                json!({"clusterIP": ip(i + 1), "ports": [{"name": "http", "port": 80}, {"name": "grpc", "port": 9090}]}),
                2,
                vec!["http", "grpc"],
            ),
        };
        objects.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}));
        let eps: Vec<Value> = (0..endpoints)
            .map(|k| {
                next_ep += 1;
                let [_, a, b, c] = next_ep.to_be_bytes();
                json!({
                    "addresses": [format!("10.{}.{b}.{c}", 128 + a)],
                    "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{name}-{k}")},
                })
            })
            .collect();
        let slice_ports: Vec<Value> = ports
            .iter()
            .map(|p| json!({"name": p, "port": if *p == "grpc" { 9090 } else { 8080 }}))
            .collect();
        objects.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": slice_ports, "endpoints": eps,
        }));
    }
    (objects, usize::try_from(next_ep).unwrap())
}

#[test]
fn the_index_costs_a_few_hundred_bytes_per_endpoint() {
    let before = allocated();
    let (objects, endpoints) = cluster(SERVICES);
    let (mut writer, _rx) = ModelWriter::new();
    let changes = objects
        .into_iter()
        .map(|o| Change::Upsert {
            object: decode(o).expect("generated objects decode"),
            origin: None,
        })
        .collect::<Vec<_>>();
    writer.replace_all(changes, Vec::new(), true);
    let snapshot = writer.snapshot();
    let model = usize::try_from(allocated() - before).unwrap_or(0);
    assert_eq!(snapshot.services.len(), SERVICES);
    println!(
        "model (writer and snapshot) of {SERVICES} Services, {endpoints} endpoints: \
         {model} bytes, {} per endpoint",
        model / endpoints
    );

    for autopath in [false, true] {
        let config = Arc::new(
            ZoneConfig::new("cluster.local", 5, PodsMode::Disabled)
                .expect("valid zone")
                .with_autopath(autopath),
        );
        let before = allocated();
        let index = Index::build(config, &snapshot);
        let bytes = usize::try_from(allocated() - before).unwrap();
        assert_eq!(index.service_count(), SERVICES);
        let per_endpoint = bytes / endpoints;
        println!(
            "index (autopath {autopath}) of {SERVICES} Services, {endpoints} endpoints: \
             {bytes} bytes, {} per Service, {per_endpoint} per endpoint",
            bytes / SERVICES,
        );
        assert!(
            per_endpoint <= BUDGET_PER_ENDPOINT,
            "{per_endpoint} bytes per endpoint (budget {BUDGET_PER_ENDPOINT})"
        );
        drop(index);
    }
}
