//! The HTTP/1.1, HTTP/2 and TLS ingress gateway of fairlead (the
//! ingress-nginx job): Ingress v1 routing compiled from the shared model into
//! typed route tables (never configuration text), TLS by SNI from the
//! model's certificates, and upstream pools balanced over the ready endpoints
//! of each backend Service.
//!
//! The binary calls [`run`] with [`Args`] (its flags) and a [`Context`]
//! (model receiver, metrics registry, readiness flag, cancellation token).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod explain;
pub mod filters;
pub mod framing;
pub mod gateway;
pub mod gateway_api;
mod h2c;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod router;
pub mod server;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fairlead_model::{Ready, Snapshot};
use ipnet::IpNet;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::Error;

/// Flags of the ingress gateway (`fairlead ingress`, and `fairlead node`).
#[derive(clap::Args, Debug, Clone)]
#[group(id = "ingress-args")]
pub struct Args {
    /// Plain HTTP listener (`ADDR:PORT`, or `:PORT` for every IPv4 address).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:80", value_parser = parse_listen)]
    pub http: SocketAddr,
    /// HTTPS listener (TLS 1.2/1.3, ALPN h2 and http/1.1).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:443", value_parser = parse_listen)]
    pub https: SocketAddr,
    /// The IngressClass served. Ingresses naming it are served; Ingresses
    /// naming no class are served when it is the default IngressClass.
    #[arg(long, value_name = "NAME", default_value = "fairlead")]
    pub ingress_class: String,
    /// The Gateway API controller name served: Gateways of GatewayClasses
    /// with this `controllerName` are served.
    #[arg(long, value_name = "NAME", default_value = fairlead_model::DEFAULT_GATEWAY_CONTROLLER)]
    pub gateway_controller: String,
    /// Certificate for TLS names no Ingress has a certificate for: one PEM
    /// file holding the chain (leaf first) and the private key. Without it,
    /// a self-signed certificate is generated at start.
    #[arg(long, value_name = "FILE")]
    pub default_cert: Option<PathBuf>,
    /// Peers (CIDRs, comma-separated) whose X-Forwarded-* and X-Request-Id
    /// headers are believed; everyone else's are replaced.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// The global default backend (NAMESPACE/SERVICE:PORT) for requests no
    /// rule and no Ingress defaultBackend takes; overrides the defaultBackend
    /// of rule-less Ingresses.
    #[arg(long, value_name = "NS/SVC:PORT")]
    pub ingress_default_backend: Option<router::DefaultBackend>,
    /// Redirect plain-HTTP requests for hosts with TLS to HTTPS (308).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub ingress_ssl_redirect: bool,
    /// Port written in HTTPS redirects (default: the port of --https).
    #[arg(long, value_name = "PORT")]
    pub ingress_redirect_port: Option<u16>,
    /// Upstream TCP connect timeout.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub ingress_connect_timeout: Duration,
    /// Time allowed for an upstream's response headers.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub ingress_response_timeout: Duration,
    /// How long idle upstream keep-alive connections are kept.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub ingress_upstream_idle_timeout: Duration,
    /// Time allowed for a client's request head, and for an idle keep-alive
    /// gap between requests (slowloris defence).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub ingress_header_timeout: Duration,
    /// Time allowed for a TLS handshake.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub ingress_handshake_timeout: Duration,
    /// How long a TLS session may be resumed after its full handshake
    /// (TLS 1.3 and 1.2 session tickets, whose keys rotate every 6 hours;
    /// a TLS 1.2 session cache); 0 turns resumption off.
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = parse_duration)]
    pub ingress_tls_session_timeout: Duration,
    /// TLS 1.2 sessions remembered for clients that resume by session id.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub ingress_tls_session_cache: usize,
    /// How long an HTTP/2 connection may stay without an open stream before
    /// it is closed (GOAWAY). An HTTP/1.1 keep-alive gap is bounded by
    /// --ingress-header-timeout.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub ingress_idle_timeout: Duration,
    /// On shutdown, how long open requests and WebSockets may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub ingress_drain_timeout: Duration,
    /// Retries on another endpoint (connect failures; idempotent requests
    /// without a body whose exchange failed).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub ingress_retries: u32,
    /// Consecutive transport failures that eject an endpoint (0: never).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub ingress_eject_after: u32,
    /// Base ejection time (doubles with each ejection, up to ten times).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub ingress_eject_time: Duration,
    /// Client connections served at once; more get 503 and are closed.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub ingress_max_connections: usize,
    /// Most headers in a request (more: 431).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub ingress_max_headers: usize,
    /// Largest request head in bytes (more: 431).
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024)]
    pub ingress_max_header_bytes: usize,
    /// Longest request target (path and query) in bytes (more: 414).
    #[arg(long, value_name = "BYTES", default_value_t = 8192)]
    pub ingress_max_uri: usize,
    /// Concurrent HTTP/2 streams per client connection.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub ingress_h2_max_streams: u32,
    /// Log every request (target fairlead_ingress::access, level info).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub ingress_access_log: bool,
}

pub use fairlead_model::parse_duration;

/// A listen address: `IP:PORT`, `[IPv6]:PORT`, or `:PORT` (every IPv4
/// address, like nginx's `listen PORT`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let full;
    let s = if s.starts_with(':') {
        full = format!("0.0.0.0{s}");
        &full
    } else {
        s
    };
    s.parse()
        .map_err(|_| "expected IP:PORT, [IPv6]:PORT or :PORT".to_owned())
}

impl Args {
    /// The class selection the router uses.
    #[must_use]
    pub fn class_selection(&self) -> router::ClassSelection {
        router::ClassSelection {
            class: self.ingress_class.clone(),
            default_backend: self.ingress_default_backend.clone(),
            gateway_api: gateway_api::Selection {
                controller: self.gateway_controller.clone(),
                http_port: self.http.port(),
                https_port: self.https.port(),
                listen_failures: fairlead_model::gateway_status::ListenFailures::default(),
            },
        }
    }

    /// Settings of the request path.
    #[must_use]
    pub fn proxy_config(&self) -> proxy::ProxyConfig {
        proxy::ProxyConfig {
            ssl_redirect: self.ingress_ssl_redirect,
            https_port: self.ingress_redirect_port.unwrap_or(self.https.port()),
            trusted_proxies: self.trusted_proxies.clone(),
            max_uri_len: self.ingress_max_uri,
            response_timeout: self.ingress_response_timeout,
            retries: self.ingress_retries,
            access_log: self.ingress_access_log,
        }
    }

    /// Settings of the upstream pools.
    #[must_use]
    pub fn pool_config(&self) -> upstream::PoolConfig {
        upstream::PoolConfig {
            connect_timeout: self.ingress_connect_timeout,
            idle_timeout: self.ingress_upstream_idle_timeout,
            // As many as the requests in flight to one endpoint usually
            // are: HTTP/2 clients multiplex hundreds of streams, each on its
            // own upstream connection, and a pool smaller than that closed
            // and reopened one connection every second request under
            // h2load -c50 -m10. Idle ones still go after `idle_timeout`.
            max_idle_per_endpoint: 1024,
            eject_after: self.ingress_eject_after,
            eject_time: self.ingress_eject_time,
        }
    }

    /// TLS session resumption.
    #[must_use]
    pub fn tls_resumption(&self) -> tls::Resumption {
        tls::Resumption {
            lifetime: self.ingress_tls_session_timeout,
            cache_size: self.ingress_tls_session_cache,
            ..tls::Resumption::default()
        }
    }

    /// Settings of client connections.
    #[must_use]
    pub fn server_config(&self) -> server::ServerConfig {
        server::ServerConfig {
            header_timeout: self.ingress_header_timeout,
            tls_handshake_timeout: self.ingress_handshake_timeout,
            idle_timeout: self.ingress_idle_timeout,
            max_headers: self.ingress_max_headers,
            max_header_bytes: self.ingress_max_header_bytes,
            max_connections: self.ingress_max_connections,
            h2_max_streams: self.ingress_h2_max_streams,
        }
    }
}

/// What the binary hands the gateway.
#[derive(Debug)]
pub struct Context<'a> {
    /// The model.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Where the metrics go (a `fairlead_ingress` sub-registry is made here).
    pub registry: &'a mut Registry,
    /// Set once the gateway serves the synced model; cleared when draining.
    pub ready: Ready,
    /// Cancelled to shut down: stop accepting, drain, return.
    pub cancel: CancellationToken,
    /// This node's name: the ingress reaches a Service's endpoints as a
    /// client on this node (`internalTrafficPolicy`, topology).
    pub node_name: Option<String>,
    /// Filled with the gateway's routing state once it starts (`fairlead
    /// explain`); `View::default()` when nobody asks.
    pub view: explain::View,
    /// Where the gateway reports the Gateway listener sockets it could not
    /// open (the Gateway API status reads it); `Default` when nobody reads.
    pub listen_failures: fairlead_model::gateway_status::ListenFailures,
}

/// Runs the gateway: registers its metrics (before the returned future is
/// first polled, so the registry borrow ends here), waits for the synced
/// model, listens, serves, and follows the model until `cancel`; then drains
/// and returns.
pub fn run(
    args: Args,
    ctx: Context<'_>,
) -> impl Future<Output = Result<(), Error>> + Send + 'static {
    let metrics =
        metrics::Metrics::register(ctx.registry.sub_registry_with_prefix("fairlead_ingress"));
    gateway::run(
        args,
        metrics,
        ctx.snapshots,
        ctx.ready,
        ctx.cancel,
        ctx.node_name,
        (ctx.view, ctx.listen_failures),
    )
}

#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: super::Args,
    }

    #[test]
    fn listen_addresses_as_the_issue_writes_them() {
        let cli = Cli::try_parse_from(["x", "--http", ":80", "--https", "[::1]:8443"]).unwrap();
        assert_eq!(cli.args.http, "0.0.0.0:80".parse().unwrap());
        assert_eq!(cli.args.https, "[::1]:8443".parse().unwrap());
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.args.https, "0.0.0.0:443".parse().unwrap());
        assert_eq!(cli.args.ingress_idle_timeout.as_secs(), 60);
        for bad in ["80", ":", "x:80", ":99999"] {
            assert!(Cli::try_parse_from(["x", "--http", bad]).is_err(), "{bad}");
        }
    }
}
