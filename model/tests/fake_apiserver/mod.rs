//! A fake apiserver for tests, on 127.0.0.1: list (paginated) and watch
//! with resourceVersion, field selectors, bookmarks, `ERROR 410 Gone` on expired
//! watches, dropped connections, and JSON merge patches of the status
//! subresource. Just enough of the protocol for kube-rs's watcher, from the
//! documented API conventions.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fake"
)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, io::Error>;
type Chunk = Result<Frame<Bytes>, io::Error>;

/// A resource type the fake serves.
#[derive(Clone, Copy, Debug)]
struct Type {
    plural: &'static str,
    group_version: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const TYPES: [Type; 14] = [
    Type {
        plural: "services",
        group_version: "v1",
        kind: "Service",
        namespaced: true,
    },
    Type {
        plural: "secrets",
        group_version: "v1",
        kind: "Secret",
        namespaced: true,
    },
    Type {
        plural: "namespaces",
        group_version: "v1",
        kind: "Namespace",
        namespaced: false,
    },
    Type {
        plural: "nodes",
        group_version: "v1",
        kind: "Node",
        namespaced: false,
    },
    Type {
        plural: "endpointslices",
        group_version: "discovery.k8s.io/v1",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Type {
        plural: "ingresses",
        group_version: "networking.k8s.io/v1",
        kind: "Ingress",
        namespaced: true,
    },
    Type {
        plural: "events",
        group_version: "events.k8s.io/v1",
        kind: "Event",
        namespaced: true,
    },
    Type {
        plural: "leases",
        group_version: "coordination.k8s.io/v1",
        kind: "Lease",
        namespaced: true,
    },
    Type {
        plural: "ingressclasses",
        group_version: "networking.k8s.io/v1",
        kind: "IngressClass",
        namespaced: false,
    },
    Type {
        plural: "gatewayclasses",
        group_version: "gateway.networking.k8s.io/v1",
        kind: "GatewayClass",
        namespaced: false,
    },
    Type {
        plural: "gateways",
        group_version: "gateway.networking.k8s.io/v1",
        kind: "Gateway",
        namespaced: true,
    },
    Type {
        plural: "httproutes",
        group_version: "gateway.networking.k8s.io/v1",
        kind: "HTTPRoute",
        namespaced: true,
    },
    Type {
        plural: "grpcroutes",
        group_version: "gateway.networking.k8s.io/v1",
        kind: "GRPCRoute",
        namespaced: true,
    },
    Type {
        plural: "referencegrants",
        group_version: "gateway.networking.k8s.io/v1beta1",
        kind: "ReferenceGrant",
        namespaced: true,
    },
];

/// The API group of the CRDs the fake can leave uninstalled.
pub(crate) const GATEWAY_API: &str = "gateway.networking.k8s.io";

fn type_of_kind(kind: &str) -> Type {
    *TYPES
        .iter()
        .find(|t| t.kind == kind)
        .unwrap_or_else(|| panic!("the fake does not serve {kind}"))
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    /// HTTP method.
    pub(crate) method: Method,
    /// Path, without the query.
    pub(crate) path: String,
    /// Decoded query parameters.
    pub(crate) query: BTreeMap<String, String>,
    /// Content type of the request body.
    pub(crate) content_type: Option<String>,
    /// The body, parsed as JSON (Null when empty).
    pub(crate) body: Value,
}

impl Recorded {
    /// Whether this is a list (not a watch) of `plural`.
    pub(crate) fn is_list_of(&self, plural: &str) -> bool {
        self.method == Method::GET && self.path.ends_with(&format!("/{plural}")) && !self.is_watch()
    }

    /// Whether this is a watch of `plural`.
    pub(crate) fn is_watch_of(&self, plural: &str) -> bool {
        self.method == Method::GET && self.path.ends_with(&format!("/{plural}")) && self.is_watch()
    }

    fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }
}

#[derive(Default)]
struct Resource {
    /// Objects by (namespace, name).
    objects: BTreeMap<(String, String), Value>,
    /// Every event: (resourceVersion, type, object).
    events: Vec<(u64, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    /// Bumped on every change of this resource (put, remove, expire): a
    /// prerendered list is served only while this has not moved.
    changed: u64,
}

/// The items of a list, each serialized, at one resourceVersion: what a
/// list response (or a page of one) is assembled from.
#[derive(Clone)]
struct Rendered {
    rv: u64,
    items: Arc<[Bytes]>,
}

/// A list rendered ahead of the request (`FakeApiserver::prerender`), as a
/// real apiserver serves lists from its watch cache; valid while the
/// resource's `changed` counter is the one it was rendered at.
struct Prerendered {
    changed: u64,
    rendered: Rendered,
}

struct Watch {
    plural: &'static str,
    namespace: Option<String>,
    selector: Vec<(String, bool, String)>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Chunk>,
}

impl Watch {
    fn matches(&self, object: &Value) -> bool {
        matches_filter(object, self.namespace.as_deref(), &self.selector)
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    resources: BTreeMap<&'static str, Resource>,
    watches: Vec<Watch>,
    requests: Vec<Recorded>,
    /// API groups not served (their CRDs are not installed): 404.
    uninstalled: Vec<String>,
    /// Rendered list responses by (plural, namespace, field selector).
    prerendered: BTreeMap<(&'static str, Option<String>, String), Prerendered>,
}

/// The fake apiserver; stops when dropped.
pub(crate) struct FakeApiserver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        self.task.abort();
        // Ends every open watch, so that no connection task outlives the test.
        self.state.lock().unwrap().watches.clear();
    }
}

fn field<'a>(object: &'a Value, path: &str) -> &'a str {
    path.split('.')
        .try_fold(object, |v, part| v.get(part))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn matches_filter(
    object: &Value,
    namespace: Option<&str>,
    selector: &[(String, bool, String)],
) -> bool {
    namespace.is_none_or(|ns| field(object, "metadata.namespace") == ns)
        && selector
            .iter()
            .all(|(path, equal, value)| (field(object, path) == value) == *equal)
}

/// `a=b,c!=d` as (field, equal, value) triples.
fn parse_selector(selector: &str) -> Vec<(String, bool, String)> {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                (k.to_owned(), false, v.to_owned())
            } else if let Some((k, v)) = term.split_once("==") {
                (k.to_owned(), true, v.to_owned())
            } else {
                let (k, v) = term.split_once('=').expect("selector term");
                (k.to_owned(), true, v.to_owned())
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    json_response(code, &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(serde_json::to_vec(body).unwrap()))
                .map_err(|never: Infallible| match never {})
                .boxed(),
        )
        .unwrap()
}

fn gone(from: u64, oldest: u64) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {from} ({oldest})"),
        "reason": "Expired", "code": 410,
    })
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    if let Value::Object(patch) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let map = target.as_object_mut().unwrap();
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

impl State {
    fn resource(&mut self, plural: &'static str) -> &mut Resource {
        self.resources.entry(plural).or_default()
    }

    /// Sends `lines` (one chunk per watch) to the watches of `plural`
    /// matching each object.
    fn broadcast(&mut self, plural: &str, events: &[(&'static str, Value)]) {
        self.watches.retain(|w| {
            if w.plural != plural {
                return true;
            }
            let mut chunk = Vec::new();
            for (kind, object) in events {
                if w.matches(object) {
                    chunk.extend_from_slice(&event_line(kind, object));
                }
            }
            chunk.is_empty() || w.tx.send(Ok(Frame::data(Bytes::from(chunk)))).is_ok()
        });
    }

    /// Stores `object` (stamping its resourceVersion); returns the event type.
    fn put(&mut self, mut object: Value, record: bool) -> (&'static str, &'static str, Value) {
        let t = type_of_kind(field(&object, "kind"));
        let name = field(&object, "metadata.name").to_owned();
        let namespace = if t.namespaced {
            let ns = field(&object, "metadata.namespace");
            let ns = if ns.is_empty() { "default" } else { ns }.to_owned();
            object["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let resource = self.resource(t.plural);
        resource.changed += 1;
        let kind = if resource
            .objects
            .insert((namespace, name), object.clone())
            .is_some()
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
        if record {
            resource.events.push((rv, kind, object.clone()));
        } else {
            resource.compacted = rv + 1;
        }
        (t.plural, kind, object)
    }

    fn remove(
        &mut self,
        kind: &str,
        namespace: &str,
        name: &str,
        record: bool,
    ) -> Option<(&'static str, Value)> {
        let t = type_of_kind(kind);
        let ns = if t.namespaced { namespace } else { "" };
        self.rv += 1;
        let rv = self.rv;
        let resource = self.resource(t.plural);
        let mut object = resource.objects.remove(&(ns.to_owned(), name.to_owned()))?;
        resource.changed += 1;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if record {
            resource.events.push((rv, "DELETED", object.clone()));
        } else {
            resource.compacted = rv + 1;
        }
        Some((t.plural, object))
    }
}

impl FakeApiserver {
    /// Starts serving on 127.0.0.1 with `objects` stored.
    pub(crate) async fn start(objects: Vec<Value>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        for object in objects {
            state.lock().unwrap().put(object, true);
        }
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    // Aborted connections end here with an error; that is the point.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// Renders the list response of `kind` (all namespaces, or `namespace`)
    /// filtered by `field_selector` (as sent, e.g. `type=kubernetes.io/tls`;
    /// empty for none) now, and serves those items to every such list until
    /// the kind changes: what a real apiserver does from its watch cache, so
    /// that a benchmark measures the client and not the fake.
    pub(crate) fn prerender(&self, kind: &str, namespace: Option<&str>, field_selector: &str) {
        let t = type_of_kind(kind);
        let mut state = self.state.lock().unwrap();
        let selector = parse_selector(field_selector);
        let rendered = render_list(&mut state, &t, namespace, &selector);
        let changed = state.resource(t.plural).changed;
        state.prerendered.insert(
            (
                t.plural,
                namespace.map(str::to_owned),
                field_selector.to_owned(),
            ),
            Prerendered { changed, rendered },
        );
    }

    /// Stops serving an API group, as when its CRDs are not installed: every
    /// request for it gets 404 and its open watches end.
    pub(crate) fn uninstall_group(&self, group: &str) {
        let mut state = self.state.lock().unwrap();
        state.uninstalled.push(group.to_owned());
        state.watches.retain(|w| {
            let t = TYPES.iter().find(|t| t.plural == w.plural).unwrap();
            !t.group_version.starts_with(&format!("{group}/"))
        });
    }

    /// Serves an API group again (its CRDs were installed).
    pub(crate) fn install_group(&self, group: &str) {
        self.state
            .lock()
            .unwrap()
            .uninstalled
            .retain(|g| g != group);
    }

    /// A kube client pointed at the fake.
    pub(crate) fn client(&self) -> kube::Client {
        // kube builds a TLS connector even for http:// from the process-wide
        // rustls provider; with the whole workspace's features (ring and
        // aws-lc-rs, the latter from the ingress) none is chosen by itself.
        // The binary installs ring the same way (`source::kube::client`).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// The base URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds or replaces an object; watches see ADDED or MODIFIED.
    pub(crate) fn apply(&self, object: Value) {
        self.apply_all(vec![object]);
    }

    /// Adds or replaces objects (of one kind); each watch receives all the
    /// events in one chunk, as a burst.
    pub(crate) fn apply_all(&self, objects: Vec<Value>) {
        let mut state = self.state.lock().unwrap();
        let mut plural = "";
        let mut events = Vec::new();
        for object in objects {
            let (p, kind, object) = state.put(object, true);
            plural = p;
            events.push((kind, object));
        }
        state.broadcast(plural, &events);
    }

    /// Deletes an object; watches see DELETED.
    pub(crate) fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some((plural, object)) = state.remove(kind, namespace, name, true) {
            state.broadcast(plural, &[("DELETED", object)]);
        }
    }

    /// Changes an object without any watch seeing it, and compacts its
    /// kind's history: the change is visible only to a new list.
    pub(crate) fn apply_unseen(&self, object: Value) {
        self.state.lock().unwrap().put(object, false);
    }

    /// Deletes an object without any watch seeing it; see `apply_unseen`.
    pub(crate) fn delete_unseen(&self, kind: &str, namespace: &str, name: &str) {
        self.state
            .lock()
            .unwrap()
            .remove(kind, namespace, name, false);
    }

    /// Ends every open watch of `kind` with `ERROR 410 Gone`, as the
    /// apiserver does when a watch's resourceVersion has been compacted.
    /// Watches resuming from an older version get the same.
    pub(crate) fn expire(&self, kind: &str) {
        let t = type_of_kind(kind);
        let mut state = self.state.lock().unwrap();
        let rv = state.rv;
        let resource = state.resource(t.plural);
        resource.compacted = rv + 1;
        resource.changed += 1;
        state.watches.retain(|w| {
            if w.plural == t.plural {
                let _ =
                    w.tx.send(Ok(Frame::data(event_line("ERROR", &gone(rv, rv + 1)))));
                false
            } else {
                true
            }
        });
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that
    /// asked for bookmarks. Returns that version.
    pub(crate) fn bookmark(&self) -> u64 {
        let mut state = self.state.lock().unwrap();
        let rv = state.rv;
        state.watches.retain(|w| {
            if !w.bookmarks {
                return true;
            }
            let t = TYPES.iter().find(|t| t.plural == w.plural).unwrap();
            let object = json!({
                "apiVersion": t.group_version, "kind": t.kind,
                "metadata": {"resourceVersion": rv.to_string()},
            });
            w.tx.send(Ok(Frame::data(event_line("BOOKMARK", &object))))
                .is_ok()
        });
        rv
    }

    /// Aborts every open watch connection (no clean end of the response).
    pub(crate) fn drop_watches(&self) {
        let mut state = self.state.lock().unwrap();
        for w in state.watches.drain(..) {
            let _ =
                w.tx.send(Err(io::Error::other("connection dropped by the test")));
        }
    }

    /// Open watches.
    pub(crate) fn open_watches(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .watches
            .iter()
            .filter(|w| !w.tx.is_closed())
            .count()
    }

    /// Every request so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The stored object.
    pub(crate) fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let t = type_of_kind(kind);
        let ns = if t.namespaced { namespace } else { "" };
        self.state
            .lock()
            .unwrap()
            .resources
            .get(t.plural)?
            .objects
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }
}

async fn handle(state: &Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query());
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    let recorded = Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type,
        body: body.clone(),
    };
    state.lock().unwrap().requests.push(recorded);

    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return status(StatusCode::NOT_FOUND, "NotFound", "no such path"),
    };
    let (namespace, plural, name, sub) = match rest {
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, sub] if *plural != "namespaces" => (None, *plural, Some(*name), Some(*sub)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        _ => return status(StatusCode::NOT_FOUND, "NotFound", "no such path"),
    };
    let Some(t) = TYPES
        .iter()
        .find(|t| t.plural == plural && t.group_version == group_version)
    else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such resource");
    };
    if state
        .lock()
        .unwrap()
        .uninstalled
        .iter()
        .any(|g| t.group_version.starts_with(&format!("{g}/")))
    {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    match (&method, name, sub) {
        (&Method::GET, None, None) => {
            let field_selector = query.get("fieldSelector").map_or("", String::as_str);
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                watch(state, t, namespace, parse_selector(field_selector), &query)
            } else {
                list(state, t, namespace, field_selector, &query)
            }
        }
        (&Method::PATCH, Some(name), Some("status")) => {
            let mut state = state.lock().unwrap();
            let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
            let Some(mut object) = state.resource(t.plural).objects.get(&key).cloned() else {
                return status(StatusCode::NOT_FOUND, "NotFound", "no such object");
            };
            // The status subresource takes only the status.
            let status_only = json!({"status": body.get("status").cloned().unwrap_or(Value::Null)});
            merge(&mut object, &status_only);
            let (plural, kind, object) = state.put(object, true);
            state.broadcast(plural, &[(kind, object.clone())]);
            json_response(StatusCode::OK, &object)
        }
        (&Method::GET | &Method::POST | &Method::PATCH | &Method::PUT, _, None) => {
            object_request(state, t, &method, namespace, name, &body)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported by the fake",
        ),
    }
}

/// GET of one object, POST (create), PATCH (JSON merge) and PUT (replace,
/// with optimistic concurrency on resourceVersion) of whole objects.
fn object_request(
    state: &Arc<Mutex<State>>,
    t: &Type,
    method: &Method,
    namespace: Option<&str>,
    name: Option<&str>,
    body: &Value,
) -> Response<Body> {
    match (method, name) {
        (&Method::GET, Some(name)) => {
            let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
            match state.lock().unwrap().resource(t.plural).objects.get(&key) {
                Some(object) => json_response(StatusCode::OK, object),
                None => status(StatusCode::NOT_FOUND, "NotFound", "no such object"),
            }
        }
        (&Method::POST, None) => {
            let mut state = state.lock().unwrap();
            let mut object = body.clone();
            object["apiVersion"] = json!(t.group_version);
            object["kind"] = json!(t.kind);
            if let Some(ns) = namespace {
                object["metadata"]["namespace"] = json!(ns);
            }
            let key = (
                namespace.unwrap_or_default().to_owned(),
                field(&object, "metadata.name").to_owned(),
            );
            if state.resource(t.plural).objects.contains_key(&key) {
                return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
            }
            let (plural, kind, object) = state.put(object, true);
            state.broadcast(plural, &[(kind, object.clone())]);
            json_response(StatusCode::CREATED, &object)
        }
        (&Method::PATCH, Some(name)) => {
            let mut state = state.lock().unwrap();
            let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
            let Some(mut object) = state.resource(t.plural).objects.get(&key).cloned() else {
                return status(StatusCode::NOT_FOUND, "NotFound", "no such object");
            };
            merge(&mut object, body);
            let (plural, kind, object) = state.put(object, true);
            state.broadcast(plural, &[(kind, object.clone())]);
            json_response(StatusCode::OK, &object)
        }
        (&Method::PUT, Some(name)) => {
            // Replace, with optimistic concurrency on resourceVersion.
            let mut state = state.lock().unwrap();
            let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
            let Some(current) = state.resource(t.plural).objects.get(&key).cloned() else {
                return status(StatusCode::NOT_FOUND, "NotFound", "no such object");
            };
            let wanted = field(body, "metadata.resourceVersion");
            if !wanted.is_empty() && wanted != field(&current, "metadata.resourceVersion") {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                );
            }
            let mut object = body.clone();
            object["apiVersion"] = json!(t.group_version);
            object["kind"] = json!(t.kind);
            object["metadata"]["namespace"] = json!(key.0);
            let (plural, kind, object) = state.put(object, true);
            state.broadcast(plural, &[(kind, object.clone())]);
            json_response(StatusCode::OK, &object)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported by the fake",
        ),
    }
}

/// A list, paginated as the apiserver does (`limit`, `continue`): the
/// continue token is the resourceVersion of the list and the offset of the
/// next item, and every page comes from the list rendered for the first.
fn list(
    state: &Arc<Mutex<State>>,
    t: &Type,
    namespace: Option<&str>,
    field_selector: &str,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let mut state = state.lock().unwrap();
    let changed = state.resource(t.plural).changed;
    let key = (
        t.plural,
        namespace.map(str::to_owned),
        field_selector.to_owned(),
    );
    let rendered = match state.prerendered.get(&key) {
        Some(p) if p.changed == changed => p.rendered.clone(),
        _ => render_list(&mut state, t, namespace, &parse_selector(field_selector)),
    };
    let (rv, offset) = query
        .get("continue")
        .and_then(|c| c.split_once(':'))
        .and_then(|(rv, offset)| Some((rv.parse().ok()?, offset.parse().ok()?)))
        .unwrap_or((rendered.rv, 0_usize));
    if rv != rendered.rv {
        // The list changed between pages: a real apiserver serves the old
        // version from its cache; the fake says it is gone, and the client
        // lists again from the start.
        return status(StatusCode::GONE, "Expired", "the list changed; list again");
    }
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let items = &rendered.items[offset.min(rendered.items.len())..];
    let page = &items[..limit.min(items.len())];
    let rest = items.len() - page.len();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if rest > 0 {
        metadata["continue"] = json!(format!("{rv}:{}", offset + page.len()));
        metadata["remainingItemCount"] = json!(rest);
    }
    let mut body = serde_json::to_vec(&json!({
        "apiVersion": t.group_version,
        "kind": format!("{}List", t.kind),
        "metadata": metadata,
    }))
    .unwrap();
    body.pop();
    body.reserve(page.iter().map(|i| i.len() + 1).sum::<usize>() + 16);
    body.extend_from_slice(br#","items":["#);
    for (i, item) in page.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never: Infallible| match never {})
                .boxed(),
        )
        .unwrap()
}

/// The items of a list, serialized.
fn render_list(
    state: &mut State,
    t: &Type,
    namespace: Option<&str>,
    selector: &[(String, bool, String)],
) -> Rendered {
    let rv = state.rv;
    let items = state
        .resource(t.plural)
        .objects
        .values()
        .filter(|o| matches_filter(o, namespace, selector))
        .map(|o| Bytes::from(serde_json::to_vec(o).unwrap()))
        .collect();
    Rendered { rv, items }
}

fn watch(
    state: &Arc<Mutex<State>>,
    t: &Type,
    namespace: Option<&str>,
    selector: Vec<(String, bool, String)>,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
    {
        let mut state = state.lock().unwrap();
        let resource = state.resource(t.plural);
        if from + 1 < resource.compacted {
            let _ = tx.send(Ok(Frame::data(event_line(
                "ERROR",
                &gone(from, resource.compacted),
            ))));
            drop(tx);
        } else {
            let w = Watch {
                plural: t.plural,
                namespace: namespace.map(str::to_owned),
                selector,
                bookmarks: query
                    .get("allowWatchBookmarks")
                    .is_some_and(|v| v == "true"),
                tx,
            };
            let mut replay = Vec::new();
            for (rv, kind, object) in &resource.events {
                if *rv > from && w.matches(object) {
                    replay.extend_from_slice(&event_line(kind, object));
                }
            }
            if !replay.is_empty() {
                let _ = w.tx.send(Ok(Frame::data(Bytes::from(replay))));
            }
            state.watches.push(w);
        }
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}
