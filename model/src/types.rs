//! The model types every data plane reads. They carry no Kubernetes wire types:
//! everything here is validated, defaulted and typed by [`crate::translate`].

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

/// Namespace and name of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The namespace (`default` when the manifest leaves it out).
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectKey {
    /// A key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Service's key is its namespace and name.
pub type ServiceKey = ObjectKey;

/// The kinds of object fairlead reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1/Service`
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice`
    EndpointSlice,
    /// `networking.k8s.io/v1/Ingress`
    Ingress,
    /// `networking.k8s.io/v1/IngressClass` (cluster-scoped)
    IngressClass,
    /// `v1/Secret` (only `kubernetes.io/tls` ones are used)
    Secret,
    /// `v1/Node` (cluster-scoped)
    Node,
    /// `v1/Namespace` (cluster-scoped)
    Namespace,
    /// `gateway.networking.k8s.io/v1/GatewayClass` (cluster-scoped)
    GatewayClass,
    /// `gateway.networking.k8s.io/v1/Gateway`
    Gateway,
    /// `gateway.networking.k8s.io/v1/HTTPRoute`
    HttpRoute,
    /// `gateway.networking.k8s.io/v1/GRPCRoute`
    GrpcRoute,
    /// `gateway.networking.k8s.io/v1beta1/ReferenceGrant`
    ReferenceGrant,
}

impl Kind {
    /// Every kind, in dump order.
    pub const ALL: [Kind; 12] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::IngressClass,
        Kind::Ingress,
        Kind::Secret,
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::ReferenceGrant,
    ];

    /// Whether this is a Gateway API kind (a CRD: the apiserver may not
    /// serve it until the Gateway API is installed).
    #[must_use]
    pub fn gateway_api(self) -> bool {
        matches!(
            self,
            Kind::GatewayClass
                | Kind::Gateway
                | Kind::HttpRoute
                | Kind::GrpcRoute
                | Kind::ReferenceGrant
        )
    }

    /// The `kind` field as written in manifests.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Secret => "Secret",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
        }
    }

    /// The `apiVersion` this kind is read in.
    #[must_use]
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Secret | Kind::Node | Kind::Namespace => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Ingress | Kind::IngressClass => "networking.k8s.io/v1",
            Kind::GatewayClass | Kind::Gateway | Kind::HttpRoute | Kind::GrpcRoute => {
                "gateway.networking.k8s.io/v1"
            }
            Kind::ReferenceGrant => "gateway.networking.k8s.io/v1beta1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    #[must_use]
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::IngressClass | Kind::Node | Kind::Namespace | Kind::GatewayClass
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kind, namespace and name: which object something is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    /// The object's kind.
    pub kind: Kind,
    /// Namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectId {
    /// The key (namespace, name) of this object.
    #[must_use]
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.clone(), self.name.clone())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// IP family of an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4
    V4,
    /// IPv6
    V6,
}

impl IpFamily {
    /// The family of an address.
    #[must_use]
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// L4 protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP
    Udp,
    /// SCTP
    Sctp,
}

impl Protocol {
    /// The IANA protocol number (what the kernel sees).
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The name as written in manifests.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.type` of a Service, with headless split out (it changes everything
/// about how the Service is served).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    /// A virtual IP inside the cluster.
    ClusterIp,
    /// `clusterIP: None`: no virtual IP, DNS returns the endpoints.
    Headless,
    /// ClusterIP plus a port on every node.
    NodePort,
    /// NodePort plus external load-balancer addresses.
    LoadBalancer,
    /// A DNS alias (CNAME) to `externalName`; nothing is load-balanced.
    ExternalName,
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::Headless => "Headless",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        })
    }
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster (the default).
    #[default]
    Cluster,
    /// Only endpoints on the node that received the traffic.
    Local,
}

impl fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        })
    }
}

/// A Service port's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// A port number on the endpoint.
    Number(u16),
    /// A named container port, resolved per endpoint through the EndpointSlice.
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(n) => f.write_str(n),
        }
    }
}

/// One entry of a Service's `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name; empty only when the Service has a single port.
    pub name: String,
    /// L4 protocol.
    pub protocol: Protocol,
    /// The port on the virtual IP.
    pub port: u16,
    /// Where traffic goes on the endpoint.
    pub target_port: TargetPort,
    /// The port on every node, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// `appProtocol` (e.g. `kubernetes.io/h2c`), as given.
    pub app_protocol: Option<String>,
}

/// Session affinity of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAffinity {
    /// Every connection is balanced on its own.
    None,
    /// Connections from one client IP stick to one endpoint for a while.
    ClientIp {
        /// How long the stickiness lasts without traffic, in seconds.
        timeout_seconds: u32,
    },
}

/// A Service as the data planes see it: spec and status, validated, with the
/// endpoints of all its EndpointSlices merged.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Namespace and name.
    pub key: ServiceKey,
    /// The Service type (headless split out).
    pub service_type: ServiceType,
    /// Virtual IPs, primary family first (ordered by `ipFamilies`). Empty for
    /// headless and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`; empty means every source.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `spec.sessionAffinity` with its timeout.
    pub session_affinity: SessionAffinity,
    /// `spec.externalTrafficPolicy` (NodePort, LoadBalancer, externalIPs).
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy` (ClusterIP).
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort` (LoadBalancer with eTP Local).
    pub health_check_node_port: Option<u16>,
    /// `spec.publishNotReadyAddresses`.
    pub publish_not_ready_addresses: bool,
    /// `spec.externalName` for ExternalName Services.
    pub external_name: Option<String>,
    /// `spec.trafficDistribution` (e.g. `PreferClose`), as given.
    pub traffic_distribution: Option<String>,
    /// Endpoints merged from every EndpointSlice labelled with this Service's
    /// name, deduplicated by address, sorted by address. Shared with the
    /// model writer's copy of the EndpointSlice when there is one slice.
    pub endpoints: Arc<[Endpoint]>,
}

impl Service {
    /// True for Services that get a virtual IP (ClusterIP, NodePort, LoadBalancer).
    #[must_use]
    pub fn has_cluster_ip(&self) -> bool {
        !self.cluster_ips.is_empty()
    }

    /// The endpoints a consumer should use for `port`, with the port resolved
    /// per endpoint: for each endpoint, the EndpointSlice port with the same name
    /// and protocol as the Service port. When a slice lists no ports at all, a
    /// numeric `targetPort` is used as is.
    pub fn backends<'a>(&'a self, port: &'a ServicePort) -> impl Iterator<Item = Backend<'a>> + 'a {
        self.endpoints.iter().filter_map(move |endpoint| {
            endpoint.resolve_port(port).map(|p| Backend {
                address: endpoint.address,
                port: p,
                endpoint,
            })
        })
    }

    /// Whether `other` differs from this Service in its endpoints at most: the
    /// same spec and status, and the same resolved `appProtocol` on every port
    /// (see [`crate::snapshot::ServiceChange`]).
    #[must_use]
    pub fn same_spec(&self, other: &Service) -> bool {
        // Destructured, so that a new field cannot be forgotten here.
        let Service {
            key,
            service_type,
            cluster_ips,
            ports,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            session_affinity,
            external_traffic_policy,
            internal_traffic_policy,
            health_check_node_port,
            publish_not_ready_addresses,
            external_name,
            traffic_distribution,
            endpoints: _,
        } = self;
        *key == other.key
            && *service_type == other.service_type
            && *cluster_ips == other.cluster_ips
            && *ports == other.ports
            && *external_ips == other.external_ips
            && *load_balancer_ips == other.load_balancer_ips
            && *load_balancer_source_ranges == other.load_balancer_source_ranges
            && *session_affinity == other.session_affinity
            && *external_traffic_policy == other.external_traffic_policy
            && *internal_traffic_policy == other.internal_traffic_policy
            && *health_check_node_port == other.health_check_node_port
            && *publish_not_ready_addresses == other.publish_not_ready_addresses
            && *external_name == other.external_name
            && *traffic_distribution == other.traffic_distribution
            && ports
                .iter()
                .all(|p| self.app_protocol(p) == other.app_protocol(p))
    }

    /// Counts of endpoints: (ready, total).
    #[must_use]
    pub fn ready_counts(&self) -> (usize, usize) {
        let ready = self.endpoints.iter().filter(|e| e.conditions.ready).count();
        (ready, self.endpoints.len())
    }
}

/// An endpoint address with its resolved port, for one Service port.
#[derive(Clone, Copy, Debug)]
pub struct Backend<'a> {
    /// The endpoint address.
    pub address: IpAddr,
    /// The port resolved for this endpoint.
    pub port: u16,
    /// The endpoint (conditions, node, zone, …).
    pub endpoint: &'a Endpoint,
}

/// Conditions of an endpoint, defaults applied (`ready` unset means ready;
/// `serving` unset means the value of `ready`; `terminating` unset means false).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "mirrors the three Kubernetes endpoint conditions"
)]
pub struct EndpointConditions {
    /// Ready to receive new traffic.
    pub ready: bool,
    /// Serving traffic (may be true while terminating).
    pub serving: bool,
    /// Shutting down.
    pub terminating: bool,
}

/// A port of an EndpointSlice: what a Service port name maps to on the
/// endpoints of that slice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointPort {
    /// The Service port name this entry is for ("" for an unnamed port).
    pub name: String,
    /// Port number; absent means "all ports" in the API and resolves nothing.
    pub port: Option<u16>,
    /// L4 protocol.
    pub protocol: Protocol,
    /// `appProtocol`, as given.
    pub app_protocol: Option<String>,
}

/// What a endpoint points at (usually a Pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRef {
    /// Kind of the target (`Pod`).
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// One endpoint of a Service, from one EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's address: the first of its `addresses`, as kube-proxy and
    /// CoreDNS use it (the API declares the others fungible).
    pub address: IpAddr,
    /// Conditions, defaults applied.
    pub conditions: EndpointConditions,
    /// Node hosting the endpoint.
    pub node_name: Option<String>,
    /// Zone of that node.
    pub zone: Option<String>,
    /// DNS hostname (headless Services publish `<hostname>.<svc>…`).
    pub hostname: Option<String>,
    /// The object behind the endpoint.
    pub target_ref: Option<TargetRef>,
    /// Topology hints: zones this endpoint should serve.
    pub hint_zones: Box<[String]>,
    /// Topology hints: nodes this endpoint should serve.
    pub hint_nodes: Box<[String]>,
    /// The ports of the slice this endpoint came from.
    pub ports: Arc<[EndpointPort]>,
    /// The EndpointSlice this endpoint came from (one string per slice,
    /// shared by its endpoints).
    pub slice: Arc<str>,
}

impl Endpoint {
    /// The port of this endpoint for a Service port (see [`Service::backends`]).
    #[must_use]
    pub fn resolve_port(&self, port: &ServicePort) -> Option<u16> {
        if self.ports.is_empty() {
            return match port.target_port {
                TargetPort::Number(n) => Some(n),
                TargetPort::Name(_) => None,
            };
        }
        self.ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
            .and_then(|p| p.port)
    }
}

/// A host in an Ingress rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// Matches exactly this name (lower-cased).
    Exact(String),
    /// `*.suffix`: matches exactly one label in front of `suffix` (lower-cased,
    /// without the leading `*.`).
    Wildcard(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Exact(h) => f.write_str(h),
            Host::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// `pathType` of an Ingress path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathType {
    /// The whole path, case-sensitive.
    Exact,
    /// Element-wise prefix on `/`.
    Prefix,
    /// Implementation-defined; fairlead treats it as `Prefix`.
    ImplementationSpecific,
}

impl fmt::Display for PathType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathType::Exact => "Exact",
            PathType::Prefix => "Prefix",
            PathType::ImplementationSpecific => "ImplementationSpecific",
        })
    }
}

/// A Service port referenced by number or name (Ingress backends).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    /// `port.number`
    Number(u16),
    /// `port.name`
    Name(String),
}

impl PortRef {
    /// Whether `port` is the TCP Service port this reference names (an
    /// Ingress backend reaches TCP ports only).
    #[must_use]
    pub fn selects(&self, port: &ServicePort) -> bool {
        port.protocol == Protocol::Tcp
            && match self {
                PortRef::Number(n) => port.port == *n,
                PortRef::Name(name) => port.name == *name,
            }
    }
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// Where an Ingress path sends traffic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IngressBackend {
    /// A Service in the Ingress's namespace.
    Service {
        /// Service name.
        name: String,
        /// Service port.
        port: PortRef,
    },
    /// A typed reference to another object (not routable by fairlead; kept so
    /// it can be reported).
    Resource {
        /// API group.
        api_group: Option<String>,
        /// Kind.
        kind: String,
        /// Name.
        name: String,
    },
}

impl fmt::Display for IngressBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IngressBackend::Service { name, port } => write!(f, "service {name}:{port}"),
            IngressBackend::Resource {
                api_group,
                kind,
                name,
            } => write!(
                f,
                "resource {}{kind} {name}",
                api_group
                    .as_deref()
                    .map(|g| format!("{g}/"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// A path of an Ingress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressPath {
    /// The path (starts with `/`).
    pub path: String,
    /// How it matches.
    pub path_type: PathType,
    /// Where it goes.
    pub backend: IngressBackend,
}

/// A rule of an Ingress: a host (or every host) and its paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressRule {
    /// `None` matches every host.
    pub host: Option<Host>,
    /// Paths in manifest order.
    pub paths: Vec<IngressPath>,
}

/// A `spec.tls` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressTls {
    /// Hosts this certificate is for (lower-cased).
    pub hosts: Vec<Host>,
    /// Secret in the Ingress's namespace; `None` means the default certificate.
    pub secret_name: Option<String>,
}

/// An Ingress as the gateway sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingress {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `spec.ingressClassName`, else the `kubernetes.io/ingress.class`
    /// annotation; `None` means the default class.
    pub class: Option<String>,
    /// `spec.defaultBackend`.
    pub default_backend: Option<IngressBackend>,
    /// `spec.rules`.
    pub rules: Vec<IngressRule>,
    /// `spec.tls`.
    pub tls: Vec<IngressTls>,
}

/// An IngressClass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressClass {
    /// Its name.
    pub name: String,
    /// `spec.controller`.
    pub controller: String,
    /// `ingressclass.kubernetes.io/is-default-class: "true"`.
    pub is_default: bool,
}

/// TLS material from a `kubernetes.io/tls` Secret, parsed and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    /// The Secret's namespace and name.
    pub key: ObjectKey,
    /// Certificate chain, leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// Private key, PKCS#8, PKCS#1 or SEC1 DER.
    pub private_key: Vec<u8>,
    /// DNS names of the leaf (subjectAltName, or the CN when there is none), lower-cased.
    pub dns_names: Vec<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl fmt::Debug for TlsCertificate {
    // Never print the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("key", &self.key)
            .field("chain_len", &self.chain.len())
            .field("dns_names", &self.dns_names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl TlsCertificate {
    /// Whether the certificate is outside its validity period at `now`.
    #[must_use]
    pub fn expired_at(&self, now: SystemTime) -> bool {
        now > self.not_after || now < self.not_before
    }
}

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// `InternalIP` addresses.
    pub internal_ips: Vec<IpAddr>,
    /// `ExternalIP` addresses.
    pub external_ips: Vec<IpAddr>,
    /// `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}
