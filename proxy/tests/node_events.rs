//! Privileged: with `--interfaces auto`, the proxy follows rtnetlink's link and address
//! events. A proxy runs in-process in a throw-away network namespace; a veth added after
//! it started carries the NodePort programs (and serves a NodePort) within a second, an
//! address change moves the SNAT address, and a veth that goes away loses its pins.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use fairlead_model::{Change, ModelWriter, Ready, decode};
use fairlead_proxy::testing::{TestCgroup, TestNetns, TestPinDir, privileged};
use fairlead_proxy::{Args, Context, Interfaces, Proxy};
use tokio_util::sync::CancellationToken;

/// How long an event may take to show.
const WITHIN: Duration = Duration::from_secs(1);

fn objects() -> Vec<Change> {
    let docs = [
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
                     "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}
        }),
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.78.0.10"], "nodeName": "node-a",
                           "conditions": {"ready": true}}]
        }),
    ];
    docs.into_iter()
        .map(|doc| Change::Upsert {
            object: decode(doc).expect("object"),
            origin: None,
        })
        .collect()
}

/// Waits until `check` holds, up to [`WITHIN`] (plus a margin for a loaded machine: the
/// time it took is returned, for the assertion message).
fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < WITHIN * 3,
            "{what}: not within {:?}",
            WITHIN * 3
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// The SNAT address (`fl_if_addr4`, key 0), read with bpftool.
fn snat_address(pins: &Path) -> Option<Ipv4Addr> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(pins.join(fairlead_proxy::abi::maps::IF_ADDR4))
        .args(["key", "0", "0", "0", "0"])
        .output()
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let bytes: Vec<u8> = value["value"]
        .as_array()?
        .iter()
        .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect();
    Some(Ipv4Addr::new(
        *bytes.first()?,
        *bytes.get(1)?,
        *bytes.get(2)?,
        *bytes.get(3)?,
    ))
}

fn pinned(pins: &Path, name: &str) -> bool {
    pins.join("links").join(name).exists()
}

#[test]
fn interfaces_and_addresses_follow_rtnetlink_events() {
    if !privileged("node_events::interfaces_and_addresses_follow_rtnetlink_events") {
        return;
    }
    let node = TestNetns::new("ev").expect("netns");
    let peer = TestNetns::new("evp").expect("netns");
    let cgroup = TestCgroup::new("ev").expect("cgroup");
    let pins = TestPinDir::new("ev").expect("pin dir");
    // The backend: a host-scoped address of the node (not an interface `auto` picks), an
    // endpoint on this node (so external flows reach it without source NAT).
    node.ip(&["addr", "add", "10.78.0.10/32", "dev", "lo", "scope", "host"])
        .expect("backend address");

    let (mut writer, model) = ModelWriter::new();
    writer.replace_all(objects(), Vec::new(), true);
    let cancel = CancellationToken::new();
    let ready = Ready::new();
    let args = Args {
        interfaces: Interfaces::Auto,
        ..Args::new(Some(cgroup.path().to_owned()), pins.path().to_owned())
    };
    let proxy = {
        let (cancel, ready, ns) = (cancel.clone(), ready.clone(), node.path());
        std::thread::spawn(move || {
            let file = std::fs::File::open(ns).expect("netns");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            let listener = TcpListener::bind(("10.78.0.10", 8080)).expect("backend");
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let mut stream = stream;
                    let _ = stream.write_all(b"hello from the backend\n");
                }
            });
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut registry = prometheus_client::registry::Registry::default();
                let proxy = Proxy::start(
                    &args,
                    Context {
                        model,
                        registry: &mut registry,
                        ready,
                        cancel,
                        node_name: Some("node-a".to_owned()),
                    },
                )
                .expect("proxy start");
                proxy.run().await.expect("proxy run");
            });
        })
    };
    eventually("the first sync", || ready.get());
    // No interface yet carries a global address: nothing attached.
    assert_eq!(snat_address(pins.path()), None);

    // A veth appears after the start, then gets its address.
    let (dev, _) = node
        .link(&["10.77.0.1/24"], &peer, &["10.77.0.2/24"])
        .expect("veth");
    let took = eventually("the new interface's pins", || {
        pinned(pins.path(), &format!("tc-{dev}-ingress"))
            && pinned(pins.path(), &format!("tc-{dev}-egress"))
    });
    // The event path answers within WITHIN on a quiet machine; the bound
    // leaves room for a loaded CI runner (2 s was missed by 12 ms at load 20)
    // and stays under the 5 s address poll that is the fallback.
    assert!(took < WITHIN * 4, "attached after {took:?}");
    eventually("the SNAT address", || {
        snat_address(pins.path()) == Some(Ipv4Addr::new(10, 77, 0, 1))
    });
    // It serves the NodePort: the peer reaches the backend through 10.77.0.1:30080.
    let greeting = std::thread::scope(|s| {
        s.spawn(|| {
            peer.enter().expect("enter the peer");
            let mut stream = TcpStream::connect_timeout(
                &SocketAddr::from(([10, 77, 0, 1], 30080)),
                Duration::from_secs(3),
            )
            .expect("connect to the NodePort");
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        })
        .join()
        .expect("client thread")
    });
    assert_eq!(greeting, "hello from the backend\n");

    // The address changes (a new one, then the old one goes; another prefix, as deleting
    // a primary address deletes its secondaries): the SNAT address follows.
    node.ip(&["addr", "add", "10.77.1.9/24", "dev", &dev])
        .expect("new address");
    node.ip(&["addr", "del", "10.77.0.1/24", "dev", &dev])
        .expect("old address gone");
    eventually("the SNAT address moves", || {
        snat_address(pins.path()) == Some(Ipv4Addr::new(10, 77, 1, 9))
    });

    // The veth goes away: its pins are removed.
    node.ip(&["link", "del", &dev]).expect("veth deleted");
    eventually("the pins of the deleted interface", || {
        !pinned(pins.path(), &format!("tc-{dev}-ingress"))
            && !pinned(pins.path(), &format!("tc-{dev}-egress"))
    });
    cancel.cancel();
    proxy.join().expect("proxy thread");
}
