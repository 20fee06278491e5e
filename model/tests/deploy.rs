//! The manifests in `deploy/`: every object parses with the k8s-openapi types
//! and nothing is lost in a round trip (a misspelled field fails), the RBAC
//! rules are exactly what the code uses (`API_ACCESS`), and the workloads,
//! Services, probes and settings line up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fairlead_model::source::kube::{
    API_ACCESS, ApiAccess, GATEWAY_API_STATUS_ACCESS, KubeOptions, STATUS_ACCESS,
    events::EVENTS_ACCESS, leader::LEASE_ACCESS, watch_access,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[derive(Default)]
struct Manifests {
    namespaces: BTreeSet<String>,
    /// (kind, namespace) of every namespaced object.
    namespaced: Vec<(String, String, String)>,
    service_accounts: BTreeSet<(String, String)>,
    roles: BTreeMap<String, ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemonsets: Vec<DaemonSet>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    classes: Vec<IngressClass>,
    budgets: Vec<PodDisruptionBudget>,
}

/// The first path where two values differ.
fn first_difference(written: &Value, parsed: &Value, path: &str) -> Option<String> {
    match (written, parsed) {
        (Value::Object(left), Value::Object(right)) => {
            let keys: BTreeSet<&String> = left.keys().chain(right.keys()).collect();
            keys.into_iter()
                .find_map(|k| match (left.get(k), right.get(k)) {
                    (Some(l), Some(r)) => first_difference(l, r, &format!("{path}.{k}")),
                    _ => Some(format!("{path}.{k}")),
                })
        }
        (Value::Array(left), Value::Array(right)) if left.len() == right.len() => left
            .iter()
            .zip(right)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]"))),
        _ if written == parsed => None,
        _ => Some(path.to_owned()),
    }
}

/// Parses with the k8s-openapi type, and checks that serializing it again
/// gives the same document: k8s-openapi ignores unknown fields, so a typo
/// would otherwise pass silently.
fn typed<T: DeserializeOwned + Serialize>(origin: &str, value: &Value) -> T {
    let object: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{origin}: does not parse: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    if let Some(path) = first_difference(value, &back, "") {
        panic!(
            "{origin}: field {path} is not part of the Kubernetes type (misspelled or misplaced?)"
        );
    }
    object
}

fn load() -> Manifests {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "deploy/ holds the manifests: {files:?}");
    let mut m = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let yaml = <serde_norway::Value as serde::Deserialize>::deserialize(doc).unwrap();
            if yaml.is_null() {
                continue;
            }
            let value: Value = serde_json::to_value(&yaml).unwrap();
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let name = value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let origin = format!("{} document {} ({kind} {name})", file.display(), i + 1);
            if let Some(ns) = value["metadata"]["namespace"].as_str() {
                m.namespaced
                    .push((kind.clone(), name.clone(), ns.to_owned()));
            }
            match kind.as_str() {
                "Namespace" => {
                    typed::<Namespace>(&origin, &value);
                    m.namespaces.insert(name);
                }
                "ServiceAccount" => {
                    let sa: ServiceAccount = typed(&origin, &value);
                    m.service_accounts
                        .insert((sa.metadata.namespace.unwrap_or_default(), name));
                }
                "ClusterRole" => {
                    m.roles.insert(name, typed(&origin, &value));
                }
                "ClusterRoleBinding" => m.bindings.push(typed(&origin, &value)),
                "DaemonSet" => m.daemonsets.push(typed(&origin, &value)),
                "Deployment" => m.deployments.push(typed(&origin, &value)),
                "Service" => m.services.push(typed(&origin, &value)),
                "ConfigMap" => m.config_maps.push(typed(&origin, &value)),
                "IngressClass" => m.classes.push(typed(&origin, &value)),
                "PodDisruptionBudget" => m.budgets.push(typed(&origin, &value)),
                other => panic!("{origin}: unexpected kind {other:?}; teach this test about it"),
            }
        }
    }
    m
}

type Grant = (String, String, String);

fn grants(accesses: impl IntoIterator<Item = ApiAccess>) -> BTreeSet<Grant> {
    accesses
        .into_iter()
        .flat_map(|a| {
            a.verbs
                .iter()
                .map(move |v| (a.group.to_owned(), a.resource.to_owned(), (*v).to_owned()))
        })
        .collect()
}

fn role_grants(role: &ClusterRole) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{:?}: no resourceNames or nonResourceURLs",
            role.metadata.name
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        ![group, resource, verb].iter().any(|s| s.contains('*')),
                        "{:?}: no wildcards",
                        role.metadata.name
                    );
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// The ClusterRole bound to the service account of `pod`.
fn role_of<'a>(m: &'a Manifests, namespace: &str, pod: &PodSpec) -> &'a ClusterRole {
    let sa = pod
        .service_account_name
        .as_deref()
        .expect("every workload names its service account");
    assert!(
        m.service_accounts
            .contains(&(namespace.to_owned(), sa.to_owned())),
        "service account {namespace}/{sa} is defined"
    );
    let bound: Vec<&ClusterRoleBinding> = m
        .bindings
        .iter()
        .filter(|b| {
            b.subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == sa
                    && s.namespace.as_deref() == Some(namespace)
            })
        })
        .collect();
    assert_eq!(bound.len(), 1, "{sa}: bound to exactly one ClusterRole");
    assert_eq!(bound[0].role_ref.kind, "ClusterRole");
    m.roles
        .get(&bound[0].role_ref.name)
        .unwrap_or_else(|| panic!("ClusterRole {} is defined", bound[0].role_ref.name))
}

fn mode(container: &Container) -> &str {
    container
        .args
        .as_ref()
        .and_then(|a| a.first())
        .map_or("", String::as_str)
}

fn flag<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    container
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
}

fn template_of(workload: &str, m: &Manifests) -> (String, PodTemplateSpec) {
    let found = m
        .daemonsets
        .iter()
        .map(|d| (&d.metadata, d.spec.as_ref().map(|s| &s.template)))
        .chain(
            m.deployments
                .iter()
                .map(|d| (&d.metadata, d.spec.as_ref().map(|s| &s.template))),
        )
        .find(|(_, t)| {
            t.and_then(|t| t.spec.as_ref())
                .is_some_and(|s| s.containers.first().is_some_and(|c| mode(c) == workload))
        })
        .unwrap_or_else(|| panic!("a workload runs `fairlead {workload}`"));
    (
        found.0.namespace.clone().unwrap_or_default(),
        found.1.unwrap().clone(),
    )
}

#[test]
fn rbac_grants_exactly_what_the_watchers_and_the_status_writer_use() {
    let m = load();
    let (ns, node) = template_of("node", &m);
    let node_role = role_grants(role_of(&m, &ns, node.spec.as_ref().unwrap()));
    // `fairlead node` runs with NODE_NAME: every watcher, the Node's too.
    let with_node = KubeOptions {
        node_name: Some("any".to_owned()),
        namespace: None,
    };
    // ... and publishes its kernel problems (a full map) as Events on its
    // Node (--node-events).
    let mut expected: Vec<ApiAccess> = with_node.kinds().into_iter().map(watch_access).collect();
    expected.push(EVENTS_ACCESS);
    assert_eq!(node_role, grants(expected), "the node role");
    assert!(
        container(&node)
            .args
            .iter()
            .flatten()
            .any(|a| a == "--node-events"),
        "the DaemonSet reports its full maps as Events"
    );
    let (ns, ingress) = template_of("ingress", &m);
    let ingress_role = role_grants(role_of(&m, &ns, ingress.spec.as_ref().unwrap()));
    // `fairlead ingress` has no node name, and writes Ingress status.
    let mut expected: Vec<ApiAccess> = KubeOptions::default()
        .kinds()
        .into_iter()
        .map(watch_access)
        .collect();
    expected.push(STATUS_ACCESS);
    expected.extend(GATEWAY_API_STATUS_ACCESS);
    // ... and publishes the model's problems as Events (--events).
    expected.push(EVENTS_ACCESS);
    // ... and elects one status writer among its replicas.
    expected.push(LEASE_ACCESS);
    assert_eq!(ingress_role, grants(expected), "the ingress role");
    let granted: BTreeSet<Grant> = m.roles.values().flat_map(role_grants).collect();
    assert_eq!(
        granted,
        grants(API_ACCESS.iter().copied()),
        "together the roles grant exactly API_ACCESS"
    );
    assert!(
        granted
            .iter()
            .filter(|(_, _, verb)| !matches!(verb.as_str(), "list" | "watch"))
            .all(
                |(group, resource, verb)| match (group.as_str(), resource.as_str()) {
                    (_, status) if status.ends_with("/status") => verb == "patch",
                    ("events.k8s.io", "events") => matches!(verb.as_str(), "create" | "patch"),
                    // `get` is a read, but only of the status Lease.
                    ("coordination.k8s.io", "leases") => {
                        matches!(verb.as_str(), "create" | "get" | "update")
                    }
                    _ => false,
                }
            ),
        "the only writes: patches of status subresources, create/patch of events, the status Lease"
    );
}

fn container(template: &PodTemplateSpec) -> &Container {
    let spec = template.spec.as_ref().unwrap();
    assert_eq!(spec.containers.len(), 1);
    &spec.containers[0]
}

/// The telemetry port serves /health and /ready to the kubelet's probes.
fn check_probes(c: &Container) {
    let addr = flag(c, "telemetry-addr").expect("--telemetry-addr");
    let port: i32 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let named = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("telemetry"))
        .expect("a port named telemetry");
    assert_eq!(
        named.container_port, port,
        "the telemetry port is the one served"
    );
    for (probe, path) in [
        (&c.liveness_probe, "/health"),
        (&c.readiness_probe, "/ready"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("telemetry".to_owned()));
    }
    let requests = c
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .expect("resource requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
}

/// Every `$(VAR)` in args is defined in env, and every ConfigMap key read
/// exists (unless optional).
fn check_env(c: &Container, m: &Manifests) {
    let env: BTreeSet<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    for arg in c.args.iter().flatten() {
        let mut rest = arg.as_str();
        while let Some(start) = rest.find("$(") {
            let end = rest[start..].find(')').expect("closed $(") + start;
            let var = &rest[start + 2..end];
            assert!(
                env.contains(var),
                "{arg}: ${var} is not in the container's env"
            );
            rest = &rest[end..];
        }
    }
    for e in c.env.iter().flatten() {
        let Some(key) = e
            .value_from
            .as_ref()
            .and_then(|v| v.config_map_key_ref.as_ref())
        else {
            continue;
        };
        let exists = m.config_maps.iter().any(|cm| {
            cm.metadata.name.as_deref() == Some(key.name.as_str())
                && cm.data.as_ref().is_some_and(|d| d.contains_key(&key.key))
        });
        assert!(
            exists || key.optional == Some(true),
            "{}: ConfigMap {} has no key {}",
            e.name,
            key.name,
            key.key
        );
    }
}

#[test]
fn the_node_daemonset_runs_with_host_network_and_minimum_capabilities() {
    let m = load();
    let (_, template) = template_of("node", &m);
    let spec = template.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.dns_policy.as_deref(),
        Some("Default"),
        "DNS forwards to the node's resolvers, not to itself"
    );
    assert!(spec.termination_grace_period_seconds.unwrap() > 35);
    let c = container(&template);
    let security = c.security_context.as_ref().unwrap();
    assert_ne!(security.privileged, Some(true));
    let caps = security.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON", "NET_BIND_SERVICE"]),
        "no capability beyond these (SYS_ADMIN is not needed: see the comment in 30-node.yaml)"
    );
    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from the downward API");
    assert_eq!(node_name.field_path, "spec.nodeName");
    check_probes(c);
    check_env(c, &m);

    // bpffs and the host's cgroup tree are mounted where the flags point.
    let mounts: BTreeMap<&str, &str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v.mount_path.as_str()))
        .collect();
    let host_paths: BTreeMap<&str, &str> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let mount_of = |host: &str| {
        let (name, _) = host_paths
            .iter()
            .find(|(_, p)| **p == host)
            .unwrap_or_else(|| panic!("a hostPath volume of {host}"));
        mounts[name]
    };
    assert!(
        flag(c, "bpffs")
            .unwrap()
            .starts_with(mount_of("/sys/fs/bpf"))
    );
    assert_eq!(flag(c, "cgroup"), Some(mount_of("/sys/fs/cgroup")));
}

#[test]
fn the_ingress_gateway_runs_unprivileged_and_publishes_its_service_address() {
    let m = load();
    let (ns, template) = template_of("ingress", &m);
    let spec = template.spec.as_ref().unwrap();
    assert_ne!(spec.host_network, Some(true));
    let pod_security = spec.security_context.as_ref().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    let c = container(&template);
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .unwrap();
    assert!(caps.add.is_none(), "no capability");
    check_probes(c);
    check_env(c, &m);
    let status_service = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "FAIRLEAD_INGRESS_STATUS_SERVICE")
        .and_then(|e| e.value.as_deref())
        .expect("the gateway publishes its Service's address");
    let (_, name) = status_service.split_once('/').unwrap();
    let service = m
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .expect("the published Service is defined");
    assert_eq!(service.metadata.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(
        service.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );
    assert!(
        m.classes
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some("fairlead"))
    );
    assert_eq!(m.budgets.len(), 1);
}

#[test]
fn services_select_their_workloads_and_ports() {
    let m = load();
    for service in &m.services {
        let name = service.metadata.name.clone().unwrap();
        let spec = service.spec.as_ref().unwrap();
        let selector = spec.selector.as_ref().expect("a selector");
        let targets: Vec<PodTemplateSpec> = ["node", "ingress"]
            .into_iter()
            .map(|w| template_of(w, &m).1)
            .filter(|t| {
                let labels = t.metadata.as_ref().and_then(|m| m.labels.as_ref());
                selector
                    .iter()
                    .all(|(k, v)| labels.is_some_and(|l| l.get(k) == Some(v)))
            })
            .collect();
        assert_eq!(targets.len(), 1, "{name} selects one workload");
        let c = container(&targets[0]);
        for port in spec.ports.iter().flatten() {
            let IntOrString::String(target) = port.target_port.clone().unwrap() else {
                panic!("{name}: target ports by name");
            };
            let found = c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(&target));
            let found = found.unwrap_or_else(|| panic!("{name}: container port {target}"));
            assert_eq!(found.protocol, port.protocol, "{name}: {target} protocol");
        }
    }
    let dns = m
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("fairlead-dns"))
        .expect("the DNS Service");
    let spec = dns.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    let ports: BTreeSet<(i32, &str)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| (p.port, p.protocol.as_deref().unwrap()))
        .collect();
    assert_eq!(ports, BTreeSet::from([(53, "UDP"), (53, "TCP")]));
}

#[test]
fn every_namespaced_object_is_in_a_namespace_defined_here() {
    let m = load();
    assert!(!m.namespaced.is_empty());
    for (kind, name, ns) in &m.namespaced {
        assert!(
            m.namespaces.contains(ns),
            "{kind} {name}: namespace {ns} is not defined in deploy/"
        );
    }
}

/// Every container of deploy/ (the cleanup DaemonSet in uninstall/ too) states its
/// seccomp profile, in its own or its pod's security context, and it is the runtime's
/// default: what a platform's admission policy checks, and what tests/image.rs runs
/// the image with (containerd since 1.6.9, Docker since 23 and recent containers-common
/// releases allow bpf(2) with CAP_BPF under it).
#[test]
fn every_container_runs_with_the_runtime_default_seccomp_profile() {
    let m = load();
    let cleanup = std::fs::read_to_string(deploy_dir().join("uninstall/cleanup.yaml")).unwrap();
    let yaml: serde_norway::Value = serde_norway::from_str(&cleanup).unwrap();
    let cleanup: DaemonSet = typed(
        "uninstall/cleanup.yaml",
        &serde_json::to_value(&yaml).unwrap(),
    );
    let templates = m
        .daemonsets
        .iter()
        .chain([&cleanup])
        .map(|d| {
            (
                d.metadata.name.clone(),
                d.spec.as_ref().unwrap().template.clone(),
            )
        })
        .chain(m.deployments.iter().map(|d| {
            (
                d.metadata.name.clone(),
                d.spec.as_ref().unwrap().template.clone(),
            )
        }));
    let mut containers = 0;
    for (workload, template) in templates {
        let spec = template.spec.unwrap();
        let pod = spec
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref());
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            let profile = c
                .security_context
                .as_ref()
                .and_then(|s| s.seccomp_profile.as_ref())
                .or(pod)
                .unwrap_or_else(|| panic!("{workload:?}/{}: no seccomp profile stated", c.name));
            assert_eq!(profile.type_, "RuntimeDefault", "{workload:?}/{}", c.name);
            containers += 1;
        }
    }
    assert_eq!(
        containers, 4,
        "node, gateway, cleanup and its pause container"
    );
}
