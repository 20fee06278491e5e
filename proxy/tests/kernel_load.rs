//! Privileged: loads the embedded eBPF object into the running kernel, so the verifier
//! checks every program on every run, and drives `connect4` with real sockets in a
//! throw-away cgroup. Needs root; see `fairlead_proxy::testing` for the skip policy.

use std::{
    io::{self, Read as _},
    net::{Ipv4Addr, TcpListener, UdpSocket},
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use fairlead_proxy::{
    Datapath, Error, Installed, LoadOptions, PinnedLinks,
    abi::{
        Backend4, BackendState, Be16, Be32, Protocol, Reason, RevNat4, Scope, Service4Key,
        ServiceValue, maps, programs,
    },
    links,
    tables::{BackendEntry, Contents, Family, Frontend, LbMaps as _, Op, Table, WriteError},
    testing::{TestCgroup, TestPinDir, error_chain, privileged},
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn load() -> Datapath {
    Datapath::load(&LoadOptions::new()).unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

fn check<T>(result: Result<T, Error>) -> T {
    result.unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

#[test]
fn loads_every_program_and_map() {
    if !privileged("kernel_load::loads_every_program_and_map") {
        return;
    }
    let mut datapath = load();
    let names = check(datapath.load_all_programs());
    assert_eq!(names, programs::ALL, "programs in the object");

    for name in programs::ALL {
        let program = datapath
            .ebpf()
            .program(name)
            .expect("program in the object");
        assert!(program.fd().is_ok(), "{name} is not loaded");
        let info = program.info().expect("program info");
        assert_eq!(info.name_as_str(), Some(name), "kernel name of {name}");
    }
    // Loading again is a no-op, not an error.
    assert_eq!(check(datapath.load_all_programs()), programs::ALL);

    let mut map_names: Vec<&str> = datapath.ebpf().maps().map(|(name, _)| name).collect();
    map_names.sort_unstable();
    let mut expected: Vec<&str> = maps::ALL.iter().map(|spec| spec.name).collect();
    expected.sort_unstable();
    assert_eq!(map_names, expected, "maps in the object");
    for spec in &maps::ALL {
        let info = check(datapath.map_info(spec.name));
        let actual = (
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        );
        let declared = (spec.key_size, spec.value_size, spec.max_entries, spec.flags);
        assert_eq!(
            actual, declared,
            "map {} differs from fairlead_abi",
            spec.name
        );
        assert_eq!(info.name_as_str(), Some(spec.name));
    }
}

/// The sizing flags size every map of their kind, IPv6 as well as IPv4: `--map-ct N`
/// gives all four conntrack maps N entries, `--map-source-ranges` both tries.
#[test]
fn sizing_flags_size_the_ipv4_and_ipv6_maps_alike() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: fairlead_proxy::Args,
    }
    if !privileged("kernel_load::sizing_flags_size_the_ipv4_and_ipv6_maps_alike") {
        return;
    }
    let pins = TestPinDir::new("sizing").expect("create a pin directory on bpffs");
    let bpffs = pins.path().join("maps");
    let cli = <Cli as clap::Parser>::try_parse_from([
        "proxy",
        "--bpffs",
        bpffs.to_str().unwrap(),
        "--map-ct",
        "4096",
        "--map-source-ranges",
        "128",
    ])
    .unwrap();
    let datapath = check(Datapath::load(&cli.args.load_options()));
    for (name, entries) in [
        (maps::CT4_TCP, 4096),
        (maps::CT4_ANY, 4096),
        (maps::CT6_TCP, 4096),
        (maps::CT6_ANY, 4096),
        (maps::SOURCE_RANGES4, 128),
        (maps::SOURCE_RANGES6, 128),
        (maps::SERVICES6, maps::SERVICE_MAX_ENTRIES),
    ] {
        let info = check(datapath.map_info(name));
        assert_eq!(info.max_entries(), entries, "max_entries of {name}");
    }
}

#[test]
fn pinned_maps_are_adopted_and_checked() {
    if !privileged("kernel_load::pinned_maps_are_adopted_and_checked") {
        return;
    }
    let pins = TestPinDir::new("pins").expect("create a pin directory on bpffs");
    let options = LoadOptions::new().pin_maps_under(pins.path().join("maps"));
    let backend = Backend4::new(
        Be32::from_ipv4(Ipv4Addr::new(10, 0, 0, 9)),
        Be16::from_host(8080),
        Protocol::Tcp.raw(),
        BackendState::Active,
        1,
    );
    {
        let mut first = check(Datapath::load(&options));
        check(first.backends4())
            .insert(7, backend, 0)
            .expect("insert");
    }
    for spec in &maps::ALL {
        assert!(
            pins.path().join("maps").join(spec.name).exists(),
            "{} not pinned",
            spec.name
        );
    }
    // A restart adopts the maps, entries included.
    let mut second = check(Datapath::load(&options));
    assert_eq!(
        check(second.backends4()).get(&7, 0).expect("adopted entry"),
        backend
    );
    drop(second);

    // A pinned map of another layout is refused, not adopted.
    let bad = pins.path().join("bad");
    std::fs::create_dir(&bad).expect("mkdir");
    let datapath = load();
    let counters = datapath.ebpf().map(maps::COUNTERS).expect("counters map");
    counters.pin(bad.join(maps::SERVICES4)).expect("pin");
    let error = Datapath::load(&LoadOptions::new().pin_maps_under(&bad)).expect_err("adopted");
    assert!(
        matches!(
            &error,
            Error::IncompatiblePin {
                field: "map type",
                ..
            }
        ),
        "{}",
        error_chain(&error)
    );
}

#[test]
fn connect4_balances_refuses_and_passes() {
    if !privileged("kernel_load::connect4_balances_refuses_and_passes") {
        return;
    }
    assert!(
        Path::new("/bin/bash").is_file(),
        "this test drives sockets with bash's /dev/tcp and /dev/udp"
    );
    let tcp_backend = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind tcp");
    let udp_backend = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
    let tcp_port = tcp_backend.local_addr().expect("addr").port();
    let udp_port = udp_backend.local_addr().expect("addr").port();

    let cgroup = TestCgroup::new("connect4").expect("create a test cgroup");
    let mut datapath = load();
    check(datapath.attach(cgroup.path()));

    let vip = Ipv4Addr::new(10, 96, 0, 1);
    let empty_vip = Ipv4Addr::new(10, 96, 0, 2);
    add_service(&mut datapath, vip, 80, Protocol::Tcp, 1, &[(1, tcp_port)]);
    add_service(&mut datapath, vip, 53, Protocol::Udp, 2, &[(2, udp_port)]);
    add_service(&mut datapath, empty_vip, 80, Protocol::Tcp, 3, &[]);

    // A VIP with a backend: the connection lands on our listener.
    let out = probe(&cgroup, "tcp", vip, 80, "via-vip");
    assert!(
        out.status.success(),
        "connect to the VIP failed: {}",
        text(&out)
    );
    assert_eq!(accept_payload(&tcp_backend), "via-vip");

    // The same for a connected UDP socket.
    let out = probe(&cgroup, "udp", vip, 53, "udp-via-vip");
    assert!(
        out.status.success(),
        "UDP send to the VIP failed: {}",
        text(&out)
    );
    assert_eq!(recv_payload(&udp_backend), "udp-via-vip");

    // A service without backends: refused at once with ECONNREFUSED.
    let started = Instant::now();
    let out = probe(&cgroup, "tcp", empty_vip, 80, "refused");
    assert!(
        !out.status.success(),
        "connect to a service without backends succeeded"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "expected ECONNREFUSED, got: {}",
        text(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refusal was not immediate"
    );

    // Not a service: untouched.
    let out = probe(&cgroup, "tcp", Ipv4Addr::LOCALHOST, tcp_port, "direct");
    assert!(
        out.status.success(),
        "direct connect failed: {}",
        text(&out)
    );
    assert_eq!(accept_payload(&tcp_backend), "direct");

    let counters = check(datapath.counters());
    assert_eq!(counters.get(Reason::ServiceHit), 2, "{counters:?}");
    assert_eq!(counters.get(Reason::NoBackendReject), 1, "{counters:?}");
    assert_eq!(counters.get(Reason::NotService), 1, "{counters:?}");
    assert_eq!(counters.get(Reason::BackendMissing), 0, "{counters:?}");
    assert_eq!(counters.get(Reason::BackendSlotMissing), 0, "{counters:?}");
}

/// Programs a service at `vip:port` whose backends are `127.0.0.1:<port>` with the given
/// ids, in the documented order: backends, rev-NAT, slots, and slot 0 (the count) last.
fn add_service(
    datapath: &mut Datapath,
    vip: Ipv4Addr,
    port: u16,
    protocol: Protocol,
    rev_nat_id: u16,
    backends: &[(u32, u16)],
) {
    for &(id, backend_port) in backends {
        let backend = Backend4::new(
            Be32::from_ipv4(Ipv4Addr::LOCALHOST),
            Be16::from_host(backend_port),
            protocol.raw(),
            BackendState::Active,
            rev_nat_id,
        );
        check(datapath.backends4())
            .insert(id, backend, 0)
            .expect("insert backend");
    }
    let rev_nat = RevNat4::new(Be32::from_ipv4(vip), Be16::from_host(port));
    check(datapath.rev_nat4())
        .insert(rev_nat_id, rev_nat, 0)
        .expect("insert rev-NAT");

    let key = Service4Key::new(
        Be32::from_ipv4(vip),
        Be16::from_host(port),
        protocol.raw(),
        Scope::External,
        0,
    );
    let mut services = check(datapath.services4());
    let mut slot = 0_u16;
    for &(id, _) in backends {
        slot += 1;
        let value = ServiceValue::backend(id, rev_nat_id);
        services
            .insert(key.with_slot(slot), value, 0)
            .expect("insert slot");
    }
    let head = ServiceValue::service(slot, rev_nat_id, 0, 0);
    services.insert(key, head, 0).expect("insert service");
}

/// Runs bash in the test cgroup: it moves itself there, then opens `/dev/<proto>/ip/port`
/// and writes `payload` to it.
fn probe(cgroup: &TestCgroup, proto: &str, ip: Ipv4Addr, port: u16, payload: &str) -> Output {
    let script = r#"echo $$ > "$1" && printf %s "$2" 1<>"/dev/$3/$4/$5""#;
    let child = Command::new("/bin/bash")
        .args(["-c", script, "fairlead-probe"])
        .arg(cgroup.procs_file())
        .args([payload, proto, &ip.to_string(), &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bash");
    let deadline = Instant::now() + TIMEOUT;
    let mut child = child;
    loop {
        if child.try_wait().expect("wait for bash").is_some() {
            return child.wait_with_output().expect("collect bash output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect bash output");
            panic!("probe to {ip}:{port}/{proto} hung: {}", text(&out));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn accept_payload(listener: &TcpListener) -> String {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + TIMEOUT;
    let (mut stream, _) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("no connection reached the backend: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut payload = String::new();
    stream.read_to_string(&mut payload).expect("read payload");
    payload
}

fn recv_payload(socket: &UdpSocket) -> String {
    socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = [0; 256];
    let (len, _) = socket
        .recv_from(&mut buf)
        .expect("no datagram reached the backend");
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "status {}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Batched writes on the kernel maps: every entry lands; deleting keys already gone is not
/// an error; a map that fills mid-batch reports `Full` with the entries before it written
/// (and no later one).
#[test]
fn batched_writes_apply_in_order_and_stop_at_a_full_map() {
    if !privileged("kernel_load::batched_writes_apply_in_order_and_stop_at_a_full_map") {
        return;
    }
    let mut datapath = check(Datapath::load(
        &LoadOptions::new().map_size(maps::BACKENDS4, 8),
    ));
    let frontend = Frontend {
        address: Ipv4Addr::new(10, 96, 0, 1).into(),
        port: 80,
        protocol: Protocol::Tcp.raw(),
    };
    let backend = |i: u8| BackendEntry {
        address: Ipv4Addr::new(10, 0, 0, i).into(),
        port: 8080,
        protocol: Protocol::Tcp.raw(),
        state: BackendState::Active as u8,
        rev_nat_id: 1,
        flags: 0,
    };
    let mut ops = vec![Op::PutRevNat { id: 1, frontend }];
    for i in 1..=3_u8 {
        ops.push(Op::PutBackend {
            id: u32::from(i),
            backend: backend(i),
        });
    }
    for slot in 1..=3_u16 {
        ops.push(Op::PutService {
            frontend,
            slot,
            value: ServiceValue::backend(u32::from(slot), 1),
        });
    }
    ops.push(Op::PutService {
        frontend,
        slot: 0,
        value: ServiceValue::service(3, 1, 0, 0),
    });
    let (done, result) = datapath.apply_all(&ops);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(done, ops.len());
    let contents = check(datapath.contents());
    assert_eq!(contents.services.len(), 4);
    assert_eq!(contents.backends.len(), 3);
    assert_eq!(contents.rev_nats.len(), 1);

    // Deletes, with keys already gone in the middle of the run.
    let deletes = [
        Op::DeleteBackend {
            family: Family::V4,
            id: 3,
        },
        Op::DeleteBackend {
            family: Family::V4,
            id: 99,
        },
        Op::DeleteBackend {
            family: Family::V4,
            id: 2,
        },
    ];
    let (done, result) = datapath.apply_all(&deletes);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(done, 3);
    assert_eq!(check(datapath.contents()).backends.len(), 1);

    // 1 backend in a map of 8: of 10 more, 7 fit and the 8th fails.
    let more: Vec<Op> = (10..20_u8)
        .map(|i| Op::PutBackend {
            id: u32::from(i),
            backend: backend(i),
        })
        .collect();
    let (done, result) = datapath.apply_all(&more);
    assert_eq!(done, 7);
    assert!(
        matches!(
            result,
            Err(WriteError::Full {
                table: Table::Backends4,
                capacity: 8
            })
        ),
        "{result:?}"
    );
    let Contents { backends, .. } = check(datapath.contents());
    let ids: Vec<u32> = backends.keys().map(|(_, id)| *id).collect();
    assert_eq!(ids, [1, 10, 11, 12, 13, 14, 15, 16]);
}

/// The programs attached directly to `cgroup`, by name, sorted (`bpftool cgroup show`).
fn attached(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", text(&out));
    let json = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<String> = if json.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str::<serde_json::Value>(json.trim())
            .expect("bpftool JSON")
            .as_array()
            .expect("a list")
            .iter()
            .map(|p| p["name"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    names.sort();
    names
}

/// Pinned links: a second load takes them over in place (same link ids); pointed at
/// another cgroup, it attaches new links there and the old cgroup loses its programs;
/// `cleanup` leaves nothing attached or pinned.
#[test]
fn pinned_links_are_updated_in_place_or_moved() {
    if !privileged("kernel_load::pinned_links_are_updated_in_place_or_moved") {
        return;
    }
    let pins = TestPinDir::new("links").expect("pin dir");
    let a = TestCgroup::new("links-a").expect("cgroup a");
    let b = TestCgroup::new("links-b").expect("cgroup b");
    let dir = links::links_dir(pins.path());

    let mut first = load();
    let mut pinned = check(PinnedLinks::open(&dir));
    let installed = check(first.install_pinned(a.path(), &mut pinned));
    assert!(
        installed.iter().all(|(_, i)| matches!(
            i,
            Installed::Attached {
                replaced: false,
                ..
            }
        )),
        "{installed:?}"
    );
    drop(first);
    // The process's handles are gone; the pinned links keep the programs attached.
    assert_eq!(attached(a.path()), programs::CGROUP);

    let mut second = load();
    let mut pinned = check(PinnedLinks::open(&dir));
    let updated = check(second.install_pinned(a.path(), &mut pinned));
    for ((name, before), (_, after)) in installed.iter().zip(&updated) {
        assert_eq!(
            *after,
            Installed::Updated {
                link_id: before.link_id()
            },
            "{name}"
        );
    }
    assert_eq!(attached(a.path()), programs::CGROUP);
    drop(second);

    let mut third = load();
    let mut pinned = check(PinnedLinks::open(&dir));
    let moved = check(third.install_pinned(b.path(), &mut pinned));
    assert!(
        moved
            .iter()
            .all(|(_, i)| matches!(i, Installed::Attached { replaced: true, .. })),
        "{moved:?}"
    );
    drop(third);
    assert_eq!(attached(a.path()), Vec::<String>::new());
    assert_eq!(attached(b.path()), programs::CGROUP);
    assert_eq!(check(pinned.pinned()).len(), programs::CGROUP.len());

    let done = check(links::cleanup(pins.path()));
    assert_eq!(done.links.len(), programs::CGROUP.len());
    assert_eq!(attached(b.path()), Vec::<String>::new());
    assert!(!dir.exists());
}

/// The kernel maps through single `BPF_MAP_UPDATE_ELEM`/`DELETE_ELEM` calls only: the
/// default [`LbMaps::apply_all`] applies one operation at a time.
struct OneByOne<'a>(&'a mut Datapath);

impl fairlead_proxy::tables::LbMaps for OneByOne<'_> {
    fn apply(&mut self, op: &Op) -> Result<(), WriteError> {
        self.0.apply(op)
    }
    fn contents(&self) -> Result<Contents, Error> {
        self.0.contents()
    }
    fn capacity(&self, table: Table) -> u32 {
        self.0.capacity(table)
    }
}

/// The batched path (`BPF_MAP_UPDATE_BATCH`/`DELETE_BATCH`, what a sync uses) leaves the
/// kernel maps exactly as single updates do: the repository's examples (both families,
/// NodePorts, LoadBalancer IPs with source ranges, Maglev tables), then the semantics
/// scenario replacing them (updates, and deletes of everything the examples had).
#[test]
fn batched_sync_writes_what_single_updates_write() {
    use fairlead_model::{ModelWriter, source::ManifestDir};
    use fairlead_proxy::Reconciler;
    if !privileged("kernel_load::batched_sync_writes_what_single_updates_write") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut batched = load();
    let mut single = load();
    let mut memory = fairlead_proxy::tables::MemoryMaps::new();
    let node = Some("node-a".to_owned());
    let mut by_batch = Reconciler::new(node.clone());
    let mut by_one = Reconciler::new(node.clone());
    let mut in_memory = Reconciler::new(node);
    let (mut writer, _rx) = ModelWriter::new();
    for dir in [
        root.join("../examples"),
        root.join("tests/golden/semantics"),
    ] {
        ManifestDir::new(&dir).sync(&mut writer).expect("manifests");
        let snapshot = writer.snapshot();
        let a = by_batch.sync(&snapshot, &mut batched);
        let b = by_one.sync(&snapshot, &mut OneByOne(&mut single));
        let c = in_memory.sync(&snapshot, &mut memory);
        for report in [&a, &b, &c] {
            assert!(report.errors.is_empty(), "{:?}", report.errors);
        }
        assert_eq!((a.writes, b.writes), (c.writes, c.writes));
        assert!(a.writes > 20, "{} writes", a.writes);
        let expected = check(memory.contents());
        let batched_contents = check(batched.contents());
        assert_eq!(
            batched_contents,
            check(single.contents()),
            "{}",
            dir.display()
        );
        assert_eq!(batched_contents, expected, "{}", dir.display());
    }
}

/// A first sync's long runs are written by several threads: every entry lands, the same as
/// one update at a time writes.
#[test]
fn parallel_batched_puts_write_what_single_updates_write() {
    if !privileged("kernel_load::parallel_batched_puts_write_what_single_updates_write") {
        return;
    }
    let options = LoadOptions::new()
        .map_size(maps::BACKENDS4, 40_000)
        .map_size(maps::SERVICES4, 40_000);
    let mut batched = check(Datapath::load(&options));
    let mut single = check(Datapath::load(&options));
    let frontend = Frontend {
        address: Ipv4Addr::new(10, 96, 0, 1).into(),
        port: 80,
        protocol: Protocol::Tcp.raw(),
    };
    let count: u16 = 30_000;
    let mut ops: Vec<Op> = (1..=u32::from(count))
        .map(|id| Op::PutBackend {
            id,
            backend: BackendEntry {
                address: Ipv4Addr::from(0x0a80_0000 + id).into(),
                port: 8080,
                protocol: Protocol::Tcp.raw(),
                state: BackendState::Active as u8,
                rev_nat_id: 1,
                flags: 0,
            },
        })
        .collect();
    ops.extend((1..=count).map(|slot| Op::PutService {
        frontend,
        slot,
        value: ServiceValue::backend(u32::from(slot), 1),
    }));
    let (done, result) = batched.apply_all(&ops);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(done, ops.len());
    let (done, result) = OneByOne(&mut single).apply_all(&ops);
    assert!(result.is_ok() && done == ops.len(), "{result:?}");
    let contents = check(batched.contents());
    assert_eq!(contents.backends.len(), usize::from(count));
    assert_eq!(contents.services.len(), usize::from(count));
    assert_eq!(contents, check(single.contents()));
}
