//! The apiserver source against a fake apiserver (tests/fake_apiserver):
//! the published snapshots through the initial list, events, a dropped
//! connection, a 410 relist with changed contents; the same model as the
//! manifest source for the same objects; and the Ingress status writes.

mod fake_apiserver;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fairlead_model::gateway_status::Serving;
use fairlead_model::source::ManifestDir;
use fairlead_model::source::kube::gateway_status::GatewayStatusWriter;
use fairlead_model::source::kube::status::{
    IngressStatusConfig, IngressStatusWriter, StatusAddresses,
};
use fairlead_model::source::kube::{KubeOptions, KubeSource};
use fairlead_model::{Change, KubeObject, ModelWriter, Snapshot, dump};
use fake_apiserver::FakeApiserver;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(20);

fn service(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": port}]},
    })
}

fn node(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "zone-1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    })
}

fn cluster() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}),
        service("a", 80),
        service("b", 81),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "a-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "a"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true}}],
            "ports": [{"port": 8080}],
        }),
        node("node-a", "192.168.50.10"),
        node("node-b", "192.168.50.11"),
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "password", "namespace": "demo"},
            "data": {"password": "aHVudGVyMg=="},
        }),
    ]
}

/// The source running against a fake, with every published snapshot.
struct Running {
    rx: watch::Receiver<Arc<Snapshot>>,
    published: Arc<Mutex<Vec<Arc<Snapshot>>>>,
    registry: Registry,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(node_name: Option<&str>) -> (Running, KubeSource) {
    start_with(KubeOptions {
        node_name: node_name.map(str::to_owned),
        namespace: None,
    })
}

fn start_with(options: KubeOptions) -> (Running, KubeSource) {
    let mut registry = Registry::with_prefix("fairlead");
    let published = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&published);
    let source = KubeSource::new(options, registry.sub_registry_with_prefix("kube"))
        .unwrap()
        .on_publish(move |s| record.lock().unwrap().push(Arc::clone(s)));
    let (_, rx) = ModelWriter::new();
    (
        Running {
            rx,
            published,
            registry,
            task: tokio::spawn(async {}),
        },
        source,
    )
}

fn run(server: &FakeApiserver, node_name: Option<&str>) -> Running {
    run_with(
        server,
        KubeOptions {
            node_name: node_name.map(str::to_owned),
            namespace: None,
        },
    )
}

fn run_with(server: &FakeApiserver, options: KubeOptions) -> Running {
    let (mut running, source) = start_with(options);
    let (writer, rx) = ModelWriter::new();
    running.rx = rx;
    let client = server.client();
    running.task = tokio::spawn(async move {
        source.run(client, writer).await.unwrap();
    });
    running
}

impl Running {
    async fn until(&mut self, what: &str, done: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        tokio::time::timeout(LIMIT, async {
            loop {
                let snapshot = self.rx.borrow_and_update().clone();
                if done(&snapshot) {
                    return snapshot;
                }
                self.rx.changed().await.expect("source alive");
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no snapshot with {what} within {LIMIT:?}; last:\n{}",
                dump::render(&self.rx.borrow())
            )
        })
    }

    /// Every snapshot published so far (the observer runs right after the
    /// watch channel is updated, so wait for it to catch up).
    async fn published(&self) -> Vec<Arc<Snapshot>> {
        let generation = self.rx.borrow().generation;
        tokio::time::timeout(LIMIT, async {
            loop {
                let published = self.published.lock().unwrap().clone();
                if published.last().map_or(0, |s| s.generation) >= generation {
                    return published;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the observer sees every published snapshot")
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }
}

fn names(s: &Snapshot) -> BTreeSet<String> {
    s.services.keys().map(|k| k.name.clone()).collect()
}

fn port(s: &Snapshot, name: &str) -> Option<u16> {
    s.service("demo", name).map(|svc| svc.ports[0].port)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[allow(
    clippy::too_many_lines,
    reason = "one scenario step by step: the order of the steps is what is tested"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_follows_events_survives_a_dropped_connection_and_relists_after_410() {
    let server = FakeApiserver::start(cluster()).await;
    let mut running = run(&server, Some("node-a"));

    // Initial list: one synced snapshot with everything, nothing before it.
    let first = running.until("synced", |s| s.synced).await;
    let published = running.published().await;
    assert_eq!(
        published.len(),
        1,
        "nothing is published before every list is complete"
    );
    assert_eq!(published[0].generation, first.generation);
    assert_eq!(names(&first), set(&["a", "b"]));
    assert_eq!(first.service("demo", "a").unwrap().endpoints.len(), 1);
    assert_eq!(
        first.nodes.keys().collect::<Vec<_>>(),
        ["node-a"],
        "only this node's Node is watched"
    );
    assert!(first.namespaces.contains("demo"));
    let requests = server.requests();
    let selector = |plural: &str| {
        requests
            .iter()
            .find(|r| r.is_list_of(plural))
            .and_then(|r| r.query.get("fieldSelector").cloned())
    };
    assert_eq!(
        selector("secrets").as_deref(),
        Some("type=kubernetes.io/tls")
    );
    assert_eq!(selector("nodes").as_deref(), Some("metadata.name=node-a"));
    assert!(
        requests
            .iter()
            .filter(|r| r.is_watch_of("services"))
            .all(|r| r.query.get("allowWatchBookmarks").map(String::as_str) == Some("true")),
        "watches ask for bookmarks"
    );

    // Add, modify, delete.
    server.apply(service("c", 82));
    server.apply(service("a", 8080));
    server.delete("Service", "demo", "b");
    let after = running
        .until("c added, a modified, b deleted", |s| {
            names(s) == set(&["a", "c"]) && port(s, "a") == Some(8080)
        })
        .await;
    assert!(after.synced);

    // A burst of 40 Services arrives as a handful of snapshots, not 40.
    let before = running.published().await.len();
    let burst: Vec<Value> = (0..40).map(|i| service(&format!("s{i:02}"), 80)).collect();
    server.apply_all(burst);
    running.until("the burst", |s| s.services.len() == 42).await;
    let snapshots = running.published().await.len() - before;
    assert!(
        snapshots <= 5,
        "40 events became {snapshots} snapshots; a burst should be batched"
    );

    // A dropped connection: the watch resumes from its resourceVersion, no
    // relist, and what happened meanwhile arrives.
    let lists = |plural: &str| {
        server
            .requests()
            .iter()
            .filter(|r| r.is_list_of(plural))
            .count()
    };
    assert_eq!(lists("services"), 1);
    let bookmark = server.bookmark();
    // Let the client read the bookmark before the connection goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let watches_before = server.requests().len();
    server.drop_watches();
    server.apply(service("d", 83));
    running
        .until("d after the reconnect", |s| port(s, "d") == Some(83))
        .await;
    assert_eq!(lists("services"), 1, "a dropped connection is not a relist");
    let resumed: Vec<u64> = server.requests()[watches_before..]
        .iter()
        .filter(|r| r.is_watch_of("services"))
        .map(|r| r.query["resourceVersion"].parse().unwrap())
        .collect();
    assert!(
        resumed.first().is_some_and(|rv| *rv >= bookmark),
        "the watch resumes from the bookmark ({bookmark}) or later: {resumed:?}"
    );

    // Events lost behind the client's back, then 410 Gone: the relist swaps
    // in the new contents, and no snapshot in between lacks what existed
    // before and after.
    let old = names(&running.rx.borrow());
    let mark = running.published().await.len();
    server.delete_unseen("Service", "demo", "c");
    server.apply_unseen(service("a", 9090));
    server.apply_unseen(service("e", 84));
    server.expire("Service");
    let relisted = running
        .until("the relisted state", |s| {
            port(s, "a") == Some(9090)
                && port(s, "e") == Some(84)
                && s.service("demo", "c").is_none()
        })
        .await;
    let mut new = old.clone();
    new.remove("c");
    new.insert("e".to_owned());
    assert_eq!(names(&relisted), new);
    assert_eq!(
        lists("services"),
        2,
        "the 410 forced one relist of Services"
    );
    assert_eq!(lists("namespaces"), 1, "other kinds are not relisted");
    for snapshot in &running.published().await[mark..] {
        let names = names(snapshot);
        assert!(
            names == old || names == new,
            "generation {} is neither the old nor the new state: {names:?}",
            snapshot.generation
        );
        assert!(snapshot.synced);
    }

    let metrics = running.metrics();
    for line in [
        "fairlead_kube_watch_relists_total{kind=\"Service\"} 1",
        "fairlead_kube_watch_relists_total{kind=\"Namespace\"} 0",
        "fairlead_kube_watch_state{kind=\"Service\",state=\"watching\"} 1",
        "fairlead_kube_watch_state{kind=\"Service\",state=\"relisting\"} 0",
        "fairlead_kube_objects{kind=\"Service\"} 43",
        "fairlead_kube_objects{kind=\"Node\"} 1",
        "fairlead_kube_watch_events_total{kind=\"Service\",type=\"delete\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing in:\n{metrics}");
    }
    assert!(metrics.contains("fairlead_kube_watch_last_event_age_seconds{kind=\"Service\"}"));
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fairlead_kube_watch_errors_total{kind=\"Service\"} "))
        .unwrap()
        .parse()
        .unwrap();
    // A dropped connection ends the watch like a timeout (kube-rs reconnects
    // without an error); the 410 is an error.
    assert!(errors >= 1, "the 410 counts as an error: {errors}");
}

fn json_of(object: &KubeObject) -> Value {
    match object {
        KubeObject::Service(o) => serde_json::to_value(o),
        KubeObject::EndpointSlice(o) => serde_json::to_value(o),
        KubeObject::Ingress(o) => serde_json::to_value(o),
        KubeObject::IngressClass(o) => serde_json::to_value(o),
        KubeObject::Secret(o) => serde_json::to_value(o),
        KubeObject::Node(o) => serde_json::to_value(o),
        KubeObject::Namespace(o) => serde_json::to_value(o),
        KubeObject::GatewayClass(o) => serde_json::to_value(o),
        KubeObject::Gateway(o) => serde_json::to_value(o),
        KubeObject::HttpRoute(o) => serde_json::to_value(o),
        KubeObject::GrpcRoute(o) => serde_json::to_value(o),
        KubeObject::ReferenceGrant(o) => serde_json::to_value(o),
    }
    .unwrap()
}

/// What the watchers of node `node` are allowed to see.
fn watched(object: &KubeObject, node: &str) -> bool {
    match object {
        KubeObject::Node(n) => n.metadata.name.as_deref() == Some(node),
        KubeObject::Secret(s) => s.type_.as_deref() == Some("kubernetes.io/tls"),
        _ => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_and_the_manifest_source_make_the_same_model() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let loaded = ManifestDir::new(&examples).load().unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let objects: Vec<KubeObject> = loaded
        .changes
        .iter()
        .map(|c| match c {
            Change::Upsert { object, .. } => object.clone(),
            other => panic!("the examples hold only valid objects: {other:?}"),
        })
        .collect();

    // The manifest source, over what a watcher on node-a sees.
    let (mut writer, _rx) = ModelWriter::new();
    let seen: Vec<Change> = loaded
        .changes
        .iter()
        .filter(|c| matches!(c, Change::Upsert { object, .. } if watched(object, "node-a")))
        .cloned()
        .collect();
    writer.replace_all(seen, loaded.problems.clone(), true);
    let from_files = dump::render(&writer.snapshot());

    // The apiserver source, over all of the objects.
    let server = FakeApiserver::start(objects.iter().map(json_of).collect()).await;
    let mut running = run(&server, Some("node-a"));
    let snapshot = running.until("synced", |s| s.synced).await;
    let from_apiserver = dump::render(&snapshot);

    assert!(from_files.contains("service shop/web"), "{from_files}");
    assert!(from_files.contains("node node-a"), "{from_files}");
    assert!(from_files.contains("ingress shop/shop"), "{from_files}");
    assert_eq!(
        from_apiserver, from_files,
        "the apiserver source and the manifest source disagree"
    );
}

fn ingress(name: &str, class: Option<&str>, status: Option<Value>) -> Value {
    let mut value = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
    });
    if let Some(class) = class {
        value["spec"]["ingressClassName"] = json!(class);
    }
    if let Some(status) = status {
        value["status"] = json!({"loadBalancer": {"ingress": status}});
    }
    value
}

#[allow(
    clippy::too_many_lines,
    reason = "one scenario step by step: the order of the steps is what is tested"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_status_is_written_only_on_served_ingresses_and_only_when_it_differs() {
    let ours = json!([{"ip": "192.0.2.10"}, {"hostname": "lb.example.com"}]);
    let theirs = json!([{"ip": "198.51.100.7"}]);
    let server = FakeApiserver::start(vec![
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "fairlead", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "fairlead.dev/ingress"},
        }),
        ingress("served", Some("fairlead"), None),
        ingress("unnamed", None, None),
        ingress("already", Some("fairlead"), Some(ours.clone())),
        ingress("other", Some("nginx"), Some(theirs.clone())),
    ])
    .await;
    let (mut running, source) = start(None);
    let ingresses = source.ingresses();
    let (writer, rx) = ModelWriter::new();
    running.rx = rx.clone();
    let client = server.client();
    let status_client = server.client();
    let status = IngressStatusWriter::new(
        ingresses,
        IngressStatusConfig {
            class: "fairlead".to_owned(),
            addresses: StatusAddresses::Fixed(vec![
                "lb.example.com".parse().unwrap(),
                "192.0.2.10".parse().unwrap(),
            ]),
            resync: Duration::from_millis(100),
        },
        &mut running.registry,
    );
    running.task = tokio::spawn(async move {
        tokio::join!(async { source.run(client, writer).await.unwrap() }, async {
            status.run(status_client, rx).await.unwrap();
        },);
    });

    let patches = || {
        server
            .requests()
            .into_iter()
            .filter(|r| r.method == hyper::Method::PATCH)
            .collect::<Vec<_>>()
    };
    let wait_patches = |n: usize| async move {
        tokio::time::timeout(LIMIT, async {
            while patches().len() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("expected {n} patches, got {:#?}", patches()));
    };
    wait_patches(2).await;
    let set_body = json!({"status": {"loadBalancer": {"ingress": ours}}});
    let mut written: Vec<String> = patches().iter().map(|p| p.path.clone()).collect();
    written.sort();
    assert_eq!(
        written,
        [
            "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/served/status",
            "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/unnamed/status",
        ]
    );
    for patch in patches() {
        assert_eq!(patch.body, set_body);
        assert_eq!(
            patch.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(
            patch.query.get("fieldManager").map(String::as_str),
            Some("fairlead")
        );
    }
    assert_eq!(
        server.get("Ingress", "shop", "served").unwrap()["status"]["loadBalancer"]["ingress"],
        ours
    );
    // Several resyncs later: nothing more to write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(patches().len(), 2, "{:#?}", patches());

    // Served no more (another class): its status is cleared, once.
    server.apply(ingress("served", Some("nginx"), Some(ours.clone())));
    wait_patches(3).await;
    let clear = &patches()[2];
    assert_eq!(
        clear.path,
        "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/served/status"
    );
    assert_eq!(
        clear.body,
        json!({"status": {"loadBalancer": {"ingress": null}}})
    );
    assert_eq!(
        server.get("Ingress", "shop", "served").unwrap()["status"],
        json!({"loadBalancer": {}})
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(patches().len(), 3, "{:#?}", patches());
    assert_eq!(
        server.get("Ingress", "shop", "other").unwrap()["status"]["loadBalancer"]["ingress"],
        theirs,
        "another controller's Ingress is never touched"
    );
    let metrics = running.metrics();
    assert!(
        metrics.contains("fairlead_ingress_status_patches_total{op=\"set\",result=\"ok\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_limits_the_namespaced_watches() {
    let mut objects = cluster();
    objects.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}));
    let mut elsewhere = service("x", 80);
    elsewhere["metadata"]["namespace"] = json!("other");
    objects.push(elsewhere);
    let server = FakeApiserver::start(objects).await;
    let mut running = run_with(
        &server,
        KubeOptions {
            node_name: None,
            namespace: Some("demo".to_owned()),
        },
    );
    let snapshot = running.until("synced", |s| s.synced).await;
    assert_eq!(names(&snapshot), set(&["a", "b"]));
    assert!(snapshot.service("other", "x").is_none());
    assert_eq!(
        snapshot.namespaces.iter().collect::<Vec<_>>(),
        ["demo"],
        "only the namespace's own Namespace object"
    );
    assert!(snapshot.nodes.is_empty(), "no node name, no Node");
    let requests = server.requests();
    for plural in ["services", "endpointslices", "ingresses", "secrets"] {
        assert!(
            requests
                .iter()
                .filter(|r| r.is_list_of(plural))
                .all(|r| r.path.contains("/namespaces/demo/")),
            "{plural} are listed in demo only"
        );
    }
    assert!(
        !requests.iter().any(|r| r.is_list_of("nodes")),
        "no Node watch without a node name"
    );
}

fn gateway_api_objects() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "fairlead"},
            "spec": {"controllerName": "fairlead.dev/gateway-controller"},
        }),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"gatewayClassName": "fairlead",
                     "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
        }),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "shop", "namespace": "demo"},
            "spec": {"parentRefs": [{"name": "web"}],
                     "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]},
        }),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "rpc", "namespace": "demo"},
            "spec": {"parentRefs": [{"name": "web"}],
                     "rules": [{"matches": [{"method": {"service": "shop.Cart", "method": "Get"}}],
                                "backendRefs": [{"name": "b", "port": 81}]}]},
        }),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "from-shop", "namespace": "demo"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
                     "to": [{"group": "", "kind": "Service"}]},
        }),
    ]
}

fn gateway_api_counts(s: &Snapshot) -> [usize; 5] {
    [
        s.gateway_classes.len(),
        s.gateways.len(),
        s.http_routes.len(),
        s.grpc_routes.len(),
        s.reference_grants.len(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_kinds_are_watched_like_the_others() {
    let mut objects = cluster();
    objects.extend(gateway_api_objects());
    let server = FakeApiserver::start(objects).await;
    let mut running = run(&server, None);
    let snapshot = running.until("synced", |s| s.synced).await;
    assert_eq!(gateway_api_counts(&snapshot), [1, 1, 1, 1, 1]);
    let dump = dump::render(&snapshot);
    assert!(
        dump.contains("grpcroute demo/rpc") && dump.contains("method /shop.Cart/Get"),
        "{dump}"
    );
    assert!(dump.contains("referencegrant demo/from-shop"), "{dump}");
    // Events: a changed route, a deleted grant.
    let mut route = gateway_api_objects()[2].clone();
    route["spec"]["hostnames"] = json!(["shop.example.com"]);
    server.apply(route);
    server.delete("ReferenceGrant", "demo", "from-shop");
    let snapshot = running
        .until("the route change and the grant deletion", |s| {
            s.reference_grants.is_empty() && s.http_routes.values().any(|r| !r.hostnames.is_empty())
        })
        .await;
    assert_eq!(gateway_api_counts(&snapshot), [1, 1, 1, 1, 0]);
    for plural in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "referencegrants",
    ] {
        assert!(
            server.requests().iter().any(|r| r.is_list_of(plural)),
            "{plural} are listed"
        );
    }

    // A status written by a controller publishes nothing.
    let generation = snapshot.generation;
    let mut with_status = server.get("Gateway", "demo", "web").unwrap();
    with_status["status"] = json!({"conditions": [{"type": "Accepted", "status": "True",
        "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    server.apply(with_status);
    server.apply(service("c", 82));
    let snapshot = running.until("service c", |s| names(s).contains("c")).await;
    assert_eq!(
        snapshot.generation,
        generation + 1,
        "only the Service published"
    );

    // A relist of a Gateway API kind swaps it in whole.
    server.delete_unseen("GRPCRoute", "demo", "rpc");
    server.expire("GRPCRoute");
    running
        .until("the relisted GRPCRoutes", |s| s.grpc_routes.is_empty())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gateway_api_crds_the_other_kinds_are_served_and_the_crds_are_picked_up_later()
{
    let server = FakeApiserver::start(cluster()).await;
    server.uninstall_group(fake_apiserver::GATEWAY_API);
    let mut running = run(&server, None);
    let snapshot = running.until("synced", |s| s.synced).await;
    assert_eq!(names(&snapshot), set(&["a", "b"]));
    assert_eq!(gateway_api_counts(&snapshot), [0; 5]);
    let metrics = running.metrics();
    assert!(
        metrics.contains("fairlead_kube_watch_state{kind=\"HTTPRoute\",state=\"absent\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fairlead_kube_watch_state{kind=\"Service\",state=\"watching\"} 1"),
        "{metrics}"
    );
    // Other kinds keep flowing while the CRDs are missing.
    server.apply(service("c", 82));
    running.until("service c", |s| names(s).contains("c")).await;

    // The operator installs the CRDs and creates objects: picked up on the
    // watchers' next retry (backoff: under 4 s this early).
    server.install_group(fake_apiserver::GATEWAY_API);
    server.apply_all(gateway_api_objects()[..1].to_vec());
    for object in &gateway_api_objects()[1..] {
        server.apply(object.clone());
    }
    let snapshot = running
        .until("every Gateway API kind", |s| {
            gateway_api_counts(s) == [1, 1, 1, 1, 1]
        })
        .await;
    assert!(names(&snapshot).contains("c"));
    let metrics = running.metrics();
    assert!(
        metrics.contains("fairlead_kube_watch_state{kind=\"HTTPRoute\",state=\"watching\"} 1"),
        "{metrics}"
    );
    // And events after that.
    server.delete("HTTPRoute", "demo", "shop");
    running
        .until("the route deleted", |s| s.http_routes.is_empty())
        .await;
}

/// The Gateway API status writer against the fake apiserver: one merge
/// patch per object whose status differs, with observedGeneration, the
/// spec's reasons, a route's entry of another controller kept; nothing
/// written again once the status is in place; a change (the backend grant
/// deleted) rewrites only the route.
#[allow(
    clippy::too_many_lines,
    reason = "one scenario step by step: the order of the steps is what is tested"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_status_is_patched_on_the_status_subresource() {
    let mut objects = cluster();
    let mut gateway_objects = gateway_api_objects();
    // The Gateway allows routes from every namespace.
    gateway_objects[1]["spec"]["listeners"][0]["allowedRoutes"] =
        json!({"namespaces": {"from": "All"}});
    objects.extend(gateway_objects);
    // A cross-namespace backend allowed by the grant (from namespace shop).
    objects.push(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"},
    }));
    objects.push(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "cross", "namespace": "shop", "generation": 3},
        "spec": {"parentRefs": [{"name": "web", "namespace": "demo"}],
                 "rules": [{"backendRefs": [{"name": "a", "namespace": "demo", "port": 80}]}]},
        "status": {"parents": [{"parentRef": {"name": "elsewhere"}, "controllerName": "example.com/other",
                                "conditions": []}]},
    }));
    let server = FakeApiserver::start(objects).await;
    let (mut running, source) = start(None);
    let stores = source.gateway_api();
    let (writer, rx) = ModelWriter::new();
    running.rx = rx.clone();
    let client = server.client();
    running.task = tokio::spawn(async move { source.run(client, writer).await.unwrap() });
    let snapshot = running.until("synced", |s| s.synced).await;
    let mut status = GatewayStatusWriter::new(
        stores,
        Serving {
            controller: "fairlead.dev/gateway-controller".to_owned(),
            http_port: 80,
            https_port: 443,
            listen_failures: fairlead_model::gateway_status::ListenFailures::default(),
        },
        Duration::from_secs(60),
        &mut running.registry,
    );
    let status_client = server.client();
    assert_eq!(status.reconcile(&status_client, &snapshot).await, 0);
    let patched = |server: &FakeApiserver| -> BTreeSet<String> {
        server
            .requests()
            .into_iter()
            .filter(|r| r.method == hyper::Method::PATCH)
            .map(|r| r.path)
            .collect()
    };
    assert_eq!(
        patched(&server),
        set(&[
            "/apis/gateway.networking.k8s.io/v1/gatewayclasses/fairlead/status",
            "/apis/gateway.networking.k8s.io/v1/namespaces/demo/gateways/web/status",
            "/apis/gateway.networking.k8s.io/v1/namespaces/demo/grpcroutes/rpc/status",
            "/apis/gateway.networking.k8s.io/v1/namespaces/demo/httproutes/shop/status",
            "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/cross/status",
        ])
    );
    for r in server
        .requests()
        .iter()
        .filter(|r| r.method == hyper::Method::PATCH)
    {
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
    }
    let gateway = server.get("Gateway", "demo", "web").unwrap();
    let conditions = |v: &Value| -> Vec<(String, String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap().to_owned(),
                    c["status"].as_str().unwrap().to_owned(),
                    c["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let t = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        conditions(&gateway["status"]["conditions"]),
        [
            t("Accepted", "True", "Accepted"),
            t("Programmed", "True", "Programmed")
        ]
    );
    let listener = &gateway["status"]["listeners"][0];
    assert_eq!(listener["name"], "http");
    assert_eq!(listener["attachedRoutes"], 3, "{listener}");
    let cross = server.get("HTTPRoute", "shop", "cross").unwrap();
    let parents = cross["status"]["parents"].as_array().unwrap();
    assert_eq!(
        parents.len(),
        2,
        "the other controller's entry is kept: {parents:?}"
    );
    assert_eq!(parents[0]["controllerName"], "example.com/other");
    assert_eq!(
        parents[1]["controllerName"],
        "fairlead.dev/gateway-controller"
    );
    assert_eq!(parents[1]["parentRef"]["name"], "web");
    assert_eq!(
        conditions(&parents[1]["conditions"]),
        [
            t("Accepted", "True", "Accepted"),
            t("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    assert_eq!(parents[1]["conditions"][0]["observedGeneration"], 3);

    // Once the stores hold the writes, nothing is written again.
    let requests = server.requests().len();
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let before = patched_count(&server);
        let snapshot = running.rx.borrow().clone();
        assert_eq!(status.reconcile(&status_client, &snapshot).await, 0);
        if patched_count(&server) == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status keeps changing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.requests().len() >= requests);
    let settled = patched_count(&server);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let snapshot = running.rx.borrow().clone();
    status.reconcile(&status_client, &snapshot).await;
    assert_eq!(
        patched_count(&server),
        settled,
        "no write when nothing changed"
    );

    // The grant goes: the cross-namespace route's ResolvedRefs turns False.
    server.delete("ReferenceGrant", "demo", "from-shop");
    let snapshot = running
        .until("the grant deleted", |s| s.reference_grants.is_empty())
        .await;
    status.reconcile(&status_client, &snapshot).await;
    assert_eq!(patched_count(&server), settled + 1, "only the route");
    let cross = server.get("HTTPRoute", "shop", "cross").unwrap();
    assert_eq!(
        conditions(&cross["status"]["parents"][1]["conditions"])[1],
        t("ResolvedRefs", "False", "RefNotPermitted")
    );
}

fn patched_count(server: &FakeApiserver) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == hyper::Method::PATCH)
        .count()
}

/// An Ingress whose TLS section names a Secret that does not exist; its
/// default backend on `port` (changing it changes the Ingress).
fn ingress_with_missing_secret(port: u16, tls: bool) -> Value {
    let mut value = ingress("secure", Some("fairlead"), None);
    value["metadata"]["uid"] = json!("0f4e-secure");
    value["spec"]["defaultBackend"]["service"]["port"]["number"] = json!(port);
    if tls {
        value["spec"]["tls"] = json!([{"hosts": ["secure.example.com"], "secretName": "missing"}]);
    }
    value
}

/// Waits until `count()` reaches `n`.
async fn until_count(what: &str, n: usize, count: impl Fn() -> usize) {
    tokio::time::timeout(LIMIT, async {
        while count() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: {} within {LIMIT:?}, wanted {n}", count()));
}

#[allow(
    clippy::too_many_lines,
    reason = "one scenario step by step: the order of the steps is what is tested"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_gets_one_warning_event_updated_on_rereads_until_fixed() {
    use fairlead_model::source::kube::events::ProblemEvents;
    // Another controller's Ingress with the same problems: not ours to report.
    let mut theirs = ingress_with_missing_secret(80, true);
    theirs["metadata"]["name"] = json!("theirs");
    theirs["spec"]["ingressClassName"] = json!("nginx");
    let server = FakeApiserver::start(vec![
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "fairlead"},
            "spec": {"controller": "fairlead.dev/ingress"},
        }),
        // Every port the Ingress's backend names below exists.
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.9", "ports": (80..=86).map(|p| json!({"name": format!("p{p}"), "port": p})).collect::<Vec<_>>()},
        }),
        ingress_with_missing_secret(80, true),
        theirs,
    ])
    .await;
    let (mut running, source) = start(None);
    let ingresses = source.ingresses();
    let (writer, rx) = ModelWriter::new();
    running.rx = rx.clone();
    let client = server.client();
    let events_client = server.client();
    running.task = tokio::spawn(async move {
        tokio::join!(async { source.run(client, writer).await.unwrap() }, async {
            ProblemEvents::new()
                .with_ingresses(ingresses)
                .for_ingress_class("fairlead")
                .run(
                    events_client,
                    Some("test-pod".to_owned()),
                    rx,
                    fairlead_model::source::kube::leader::StatusLeader::always(),
                )
                .await
                .unwrap();
        });
    });
    let events_path = "/apis/events.k8s.io/v1/namespaces/shop/events";
    let event_writes = |method: hyper::Method| {
        server
            .requests()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(events_path))
            .count()
    };
    let stored = || -> Vec<Value> {
        server
            .requests()
            .iter()
            .filter(|r| r.method == hyper::Method::POST && r.path == events_path)
            .filter_map(|r| r.body["metadata"]["name"].as_str().map(str::to_owned))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|name| server.get("Event", "shop", &name))
            .collect()
    };

    until_count("Event created", 1, || event_writes(hyper::Method::POST)).await;
    let events = stored();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "TLSSecretNotFound");
    assert_eq!(event["regarding"]["kind"], "Ingress");
    assert_eq!(event["regarding"]["name"], "secure");
    assert_eq!(
        event["regarding"]["uid"], "0f4e-secure",
        "kubectl describe selects by uid"
    );
    assert_eq!(event["reportingController"], "fairlead.dev/fairlead");
    assert_eq!(event["reportingInstance"], "test-pod");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("spec.tls[0].secretName")
            && note.contains("Secret shop/missing does not exist"),
        "{note}"
    );

    // Re-read three times with the problem still there: the same Event,
    // its series count going up, never a second Event.
    // (One at a time: the publisher, a reconciler, sees only the newest of
    // several quick snapshots.)
    for (n, port) in [81, 82, 83].into_iter().enumerate() {
        server.apply(ingress_with_missing_secret(port, true));
        until_count("Event updated", n + 1, || {
            event_writes(hyper::Method::PATCH)
        })
        .await;
    }
    assert_eq!(
        event_writes(hyper::Method::POST),
        1,
        "one Event, however often re-read"
    );
    let events = stored();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["series"]["count"], 4, "{:?}", events[0]);

    // Fixed: no more Events, however often re-read.
    server.apply(ingress_with_missing_secret(84, false));
    running
        .until("the problem gone", |s| {
            s.problems
                .iter()
                .all(|p| p.object.as_ref().is_some_and(|o| o.name == "theirs"))
        })
        .await;
    for port in [85, 86] {
        server.apply(ingress_with_missing_secret(port, false));
    }
    running
        .until("the last re-read", |s| {
            s.ingresses.values().any(|i| {
                i.default_backend
                    .as_ref()
                    .is_some_and(|b| b.to_string().contains("86"))
            })
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(event_writes(hyper::Method::POST), 1);
    assert_eq!(event_writes(hyper::Method::PATCH), 3);
}

/// One replica of the ingress gateway's status side: a candidate for the
/// Lease, and a status writer publishing `address` while it leads.
fn status_replica(
    server: &FakeApiserver,
    ingresses: ::kube::runtime::reflector::Store<k8s_openapi::api::networking::v1::Ingress>,
    rx: watch::Receiver<Arc<Snapshot>>,
    identity: &str,
    address: &str,
) -> (
    fairlead_model::source::kube::leader::StatusLeader,
    JoinHandle<()>,
) {
    use fairlead_model::source::kube::leader::{LeaderElector, LeaseConfig};
    let mut config = LeaseConfig::new("fairlead-system", "fairlead-ingress-status", identity);
    config.lease_duration = LEASE;
    config.renew_deadline = LEASE * 2 / 3;
    config.retry_period = Duration::from_millis(100);
    let (elector, leader) = LeaderElector::new(config);
    let writer = IngressStatusWriter::new(
        ingresses,
        IngressStatusConfig {
            class: "fairlead".to_owned(),
            addresses: StatusAddresses::Fixed(vec![address.parse().unwrap()]),
            resync: Duration::from_millis(100),
        },
        &mut Registry::default(),
    )
    .with_leader(leader.clone());
    let (elector_client, writer_client) = (server.client(), server.client());
    let task = tokio::spawn(async move {
        tokio::join!(
            async { elector.run(elector_client).await.unwrap() },
            async { writer.run(writer_client, rx).await.unwrap() },
        );
    });
    (leader, task)
}

const LEASE: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_replicas_writes_status_and_the_other_takes_over_when_it_dies() {
    let server = FakeApiserver::start(vec![
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "fairlead"},
            "spec": {"controller": "fairlead.dev/ingress"},
        }),
        ingress("served", Some("fairlead"), None),
    ])
    .await;
    let (mut running, source) = start(None);
    let ingresses = source.ingresses();
    let (writer, rx) = ModelWriter::new();
    running.rx = rx.clone();
    let client = server.client();
    running.task = tokio::spawn(async move { source.run(client, writer).await.unwrap() });
    running.until("synced", |s| s.synced).await;

    // Both candidates at once: exactly one leads.
    let (a, a_task) = status_replica(&server, ingresses.clone(), rx.clone(), "a", "192.0.2.1");
    let (b, b_task) = status_replica(&server, ingresses.clone(), rx.clone(), "b", "192.0.2.2");
    let both = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (a, b, both) = (a.clone(), b.clone(), Arc::clone(&both));
        tokio::spawn(async move {
            loop {
                if a.is_leader() && b.is_leader() {
                    both.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let status_of = || {
        server.get("Ingress", "shop", "served").unwrap()["status"]["loadBalancer"]["ingress"]
            .clone()
    };
    let until_status = |ip: &'static str| async move {
        tokio::time::timeout(LIMIT, async {
            while status_of() != json!([{"ip": ip}]) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("status never became {ip}: {}", status_of()));
    };
    tokio::time::timeout(LIMIT, async {
        while !a.is_leader() && !b.is_leader() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a leader within the limit");
    let (leader, leader_task, follower, follower_ip, leader_ip) = if a.is_leader() {
        (a, a_task, b, "192.0.2.2", "192.0.2.1")
    } else {
        (b, b_task, a, "192.0.2.1", "192.0.2.2")
    };
    until_status(leader_ip).await;
    // Several renewals later: still the same leader, the follower never wrote.
    tokio::time::sleep(LEASE * 2).await;
    assert!(leader.is_leader() && !follower.is_leader());
    let writes_of = |ip: &str| {
        server
            .requests()
            .iter()
            .filter(|r| r.method == hyper::Method::PATCH && r.body.to_string().contains(ip))
            .count()
    };
    assert_eq!(
        writes_of(follower_ip),
        0,
        "the follower never writes status"
    );
    assert_eq!(writes_of(leader_ip), 1);

    // The leader dies (no release): the follower takes over within the lease
    // duration (plus a retry period) and writes its address.
    leader_task.abort();
    let died = tokio::time::Instant::now();
    until_status(follower_ip).await;
    let took = died.elapsed();
    assert!(
        took < LEASE + Duration::from_millis(500),
        "took over after {took:?} (lease {LEASE:?})"
    );
    assert!(took >= LEASE / 2, "not before the lease ran out: {took:?}");
    assert!(follower.is_leader());
    let lease = server
        .get("Lease", "fairlead-system", "fairlead-ingress-status")
        .expect("the Lease");
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    monitor.abort();
    assert!(
        !both.load(std::sync::atomic::Ordering::SeqCst),
        "never two leaders"
    );
}

/// A full kernel map, reported by the proxy of one node: one Warning Event on
/// that Node, not repeated while the problem stays, and a new one for a
/// second map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_map_is_one_warning_event_on_the_node() {
    use fairlead_model::source::kube::events::ProblemEvents;
    use fairlead_model::{FieldError, Kind, ObjectId, Problem, Severity};
    let server = FakeApiserver::start(Vec::new()).await;
    let full = |map: &str| Problem {
        severity: Severity::Error,
        origin: None,
        object: Some(ObjectId {
            kind: Kind::Node,
            namespace: String::new(),
            name: "node-a".to_owned(),
        }),
        error: FieldError::new(
            "",
            format!("map {map} is full (4 entries): Services are left unprogrammed on this node"),
        ),
    };
    let (tx, rx) = tokio::sync::watch::channel::<Arc<[Problem]>>(Arc::from([]));
    let client = server.client();
    let task = tokio::spawn(async move {
        ProblemEvents::new()
            .run_node(client, Some("node-a".to_owned()), rx)
            .await
            .unwrap();
    });
    let events_path = "/apis/events.k8s.io/v1/namespaces/default/events";
    let posts = || {
        server
            .requests()
            .iter()
            .filter(|r| r.method == hyper::Method::POST && r.path == events_path)
            .map(|r| r.body.clone())
            .collect::<Vec<Value>>()
    };
    tx.send_replace(Arc::from([full("fl_lb4_backends")]));
    until_count("Event created", 1, || posts().len()).await;
    let event = &posts()[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "MapFull");
    assert_eq!(event["regarding"]["kind"], "Node");
    assert_eq!(event["regarding"]["name"], "node-a");
    assert_eq!(event["reportingInstance"], "node-a");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("fl_lb4_backends is full"),
        "{event}"
    );
    // The same problem again (the next sync still finds the map full): no
    // new Event.
    tx.send_replace(Arc::from([full("fl_lb4_backends")]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(posts().len(), 1);
    // A second map fills: its own Event.
    tx.send_replace(Arc::from([
        full("fl_lb4_backends"),
        full("fl_lb4_services"),
    ]));
    until_count("second Event", 2, || posts().len()).await;
    assert!(
        posts()[1]["note"]
            .as_str()
            .unwrap()
            .contains("fl_lb4_services"),
        "{:?}",
        posts()[1]
    );
    drop(tx);
    task.await.unwrap();
}

/// An Ingress whose backend names a Service that does not exist (then a port
/// the Service lacks): a ServiceNotFound (then ServicePortNotFound) Warning
/// Event; the Service fixed, the problem is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_naming_a_missing_service_gets_a_warning_event() {
    use fairlead_model::source::kube::events::ProblemEvents;
    let web = |port: u16| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": port}]},
        })
    };
    let server = FakeApiserver::start(vec![
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "fairlead"},
            "spec": {"controller": "fairlead.dev/ingress"},
        }),
        ingress("shop", Some("fairlead"), None),
    ])
    .await;
    let (mut running, source) = start(None);
    let (writer, rx) = ModelWriter::new();
    running.rx = rx.clone();
    let client = server.client();
    let events_client = server.client();
    running.task = tokio::spawn(async move {
        tokio::join!(async { source.run(client, writer).await.unwrap() }, async {
            ProblemEvents::new()
                .for_ingress_class("fairlead")
                .run(
                    events_client,
                    None,
                    rx,
                    fairlead_model::source::kube::leader::StatusLeader::always(),
                )
                .await
                .unwrap();
        });
    });
    let events_path = "/apis/events.k8s.io/v1/namespaces/shop/events";
    let reasons = || -> Vec<String> {
        server
            .requests()
            .iter()
            .filter(|r| r.method == hyper::Method::POST && r.path == events_path)
            .map(|r| r.body["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    until_count("ServiceNotFound", 1, || reasons().len()).await;
    assert_eq!(reasons(), ["ServiceNotFound"]);
    let snapshot = running.rx.borrow().clone();
    let problem = snapshot
        .problems
        .iter()
        .find(|p| p.object.is_some())
        .unwrap();
    assert_eq!(
        problem.error.to_string(),
        "spec.defaultBackend.service.name: Service shop/web does not exist; its requests are \
         answered 503"
    );

    // The Service appears, but without port 80.
    server.apply(web(8080));
    until_count("ServicePortNotFound", 2, || reasons().len()).await;
    assert_eq!(reasons(), ["ServiceNotFound", "ServicePortNotFound"]);

    // Fixed.
    server.apply(web(80));
    running
        .until("the problem gone", |s| s.problems.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reasons().len(), 2);
}

/// The fake paginates as the apiserver does (the benchmark relies on it):
/// pages of `limit` objects with a continue token, from one rendering, and
/// a prerendered list serves the same objects until the kind changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_paginates_lists_and_serves_prerendered_ones_until_they_change() {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, ListParams};

    let server =
        FakeApiserver::start((0..5).map(|i| service(&format!("s{i}"), 80)).collect()).await;
    let api: Api<Service> = Api::all(server.client());
    let list_all = |api: Api<Service>| async move {
        let mut names = Vec::new();
        let mut pages = 0;
        let mut params = ListParams::default().limit(2);
        loop {
            let page = api.list(&params).await.unwrap();
            pages += 1;
            names.extend(page.items.iter().filter_map(|s| s.metadata.name.clone()));
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return (names, pages),
            }
        }
    };
    assert_eq!(
        list_all(api.clone()).await,
        (
            vec![
                "s0".into(),
                "s1".into(),
                "s2".into(),
                "s3".into(),
                "s4".into()
            ],
            3
        )
    );
    server.prerender("Service", None, "");
    assert_eq!(list_all(api.clone()).await.0.len(), 5);
    // A change makes the prerendered list stale: the new object is listed.
    server.apply(service("s5", 80));
    assert_eq!(list_all(api).await.0.len(), 6);
}
