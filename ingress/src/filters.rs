//! Gateway API filters and timeouts of a route rule, compiled into typed
//! data the request path applies: header modifiers (request and response),
//! redirects, URL rewrites, mirrors and timeouts. A route without any has
//! no [`RouteFilters`] at all (`Route::filters` is `None`), so it costs the
//! request path one branch.

use std::time::Duration;

use fairlead_model::{HeaderModifier, PathModifier, Redirect, Rewrite, RouteTimeouts};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::router::BackendId;

/// Header operations in the form the request path applies them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Compiles a model header modifier (names and values were checked by
    /// the model; anything that still does not convert is left out).
    #[must_use]
    pub fn new(m: &HeaderModifier) -> Self {
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        HeaderOps {
            set: pairs(&m.set),
            add: pairs(&m.add),
            remove: m
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    /// Applies remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// What a matched route does besides forwarding (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteFilters {
    /// Request header modifiers: the rule's, then the backendRef's.
    pub request_headers: Vec<HeaderOps>,
    /// Response header modifiers: the rule's, then the backendRef's.
    pub response_headers: Vec<HeaderOps>,
    /// Answer with a redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    /// Change the request sent upstream.
    pub rewrite: Option<Rewrite>,
    /// The `PathPrefix` the match was written with (for
    /// `ReplacePrefixMatch`).
    pub prefix: String,
    /// Backends each request is copied to.
    pub mirrors: Vec<BackendId>,
    /// `timeouts`.
    pub timeouts: RouteTimeouts,
}

impl RouteFilters {
    /// The time one attempt may take to the response headers: the route's
    /// `backendRequest`, else the gateway's, never over the route's
    /// `request`.
    #[must_use]
    pub fn attempt_timeout(&self, gateway: Duration) -> Duration {
        let t = self.timeouts.backend_request.unwrap_or(gateway);
        self.timeouts.request.map_or(t, |r| t.min(r))
    }

    /// The path after a path modifier.
    #[must_use]
    pub fn modify_path(&self, modifier: &PathModifier, path: &str) -> String {
        match modifier {
            PathModifier::ReplaceFullPath(p) => p.clone(),
            PathModifier::ReplacePrefixMatch(replacement) => {
                let prefix = self.prefix.trim_end_matches('/');
                // The match guarantees the prefix, element-wise; the rest
                // is empty or starts with '/'.
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                let base = replacement.trim_end_matches('/');
                let mut out = String::with_capacity(base.len() + rest.len() + 1);
                out.push_str(base);
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                out
            }
        }
    }

    /// The `Location` of the redirect filter `r` for a request to `host`
    /// (no port) and `path` with `query`, received over TLS or not on the
    /// listener port `listener_port`.
    #[must_use]
    pub fn location(
        &self,
        r: &Redirect,
        (tls, listener_port): (bool, u16),
        host: &str,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let scheme = r
            .scheme
            .as_deref()
            .unwrap_or(if tls { "https" } else { "http" });
        // The spec: an explicit port; else the scheme's well-known port
        // when the scheme is given, else the listener's port; no port in
        // the Location when it is the scheme's default.
        let port = r.port.unwrap_or(match r.scheme.as_deref() {
            Some("https") => 443,
            Some(_) => 80,
            None => listener_port,
        });
        let host = r.hostname.as_deref().unwrap_or(host);
        let path = r
            .path
            .as_ref()
            .map_or_else(|| path.to_owned(), |m| self.modify_path(m, path));
        let mut location = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
        location.push_str(scheme);
        location.push_str("://");
        location.push_str(host);
        let default_port = if scheme == "https" { 443 } else { 80 };
        if port != default_port {
            location.push(':');
            location.push_str(&port.to_string());
        }
        location.push_str(&path);
        if let Some(q) = query {
            location.push('?');
            location.push_str(q);
        }
        location
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> RouteFilters {
        RouteFilters {
            prefix: p.to_owned(),
            ..RouteFilters::default()
        }
    }

    #[test]
    fn prefix_replacement() {
        let replace = |prefix_: &str, with: &str, path: &str| {
            prefix(prefix_).modify_path(&PathModifier::ReplacePrefixMatch(with.to_owned()), path)
        };
        assert_eq!(
            replace("/prefix/one", "/one", "/prefix/one/two"),
            "/one/two"
        );
        assert_eq!(replace("/prefix/one", "/one", "/prefix/one"), "/one");
        assert_eq!(replace("/strip", "/", "/strip/three"), "/three");
        assert_eq!(replace("/strip", "/", "/strip"), "/");
        assert_eq!(replace("/strip/", "/", "/strip/x"), "/x");
        assert_eq!(replace("/", "/new", "/a/b"), "/new/a/b");
        assert_eq!(replace("/a", "/b/", "/a/c"), "/b/c");
    }

    #[test]
    fn redirect_locations() {
        let f = prefix("/old");
        let r = |scheme: Option<&str>, port: Option<u16>| Redirect {
            scheme: scheme.map(str::to_owned),
            hostname: None,
            port,
            path: None,
            status: 302,
        };
        let at = |r: &Redirect, tls, port| f.location(r, (tls, port), "a.test", "/p", Some("q=1"));
        // No scheme: the request's, with the listener's port.
        assert_eq!(at(&r(None, None), false, 8080), "http://a.test:8080/p?q=1");
        assert_eq!(at(&r(None, None), false, 80), "http://a.test/p?q=1");
        // A scheme: its well-known port, left out.
        assert_eq!(
            at(&r(Some("https"), None), false, 8080),
            "https://a.test/p?q=1"
        );
        assert_eq!(
            at(&r(Some("http"), Some(8443)), true, 443),
            "http://a.test:8443/p?q=1"
        );
        let full = Redirect {
            hostname: Some("b.test".to_owned()),
            path: Some(PathModifier::ReplacePrefixMatch("/new".to_owned())),
            ..r(None, None)
        };
        assert_eq!(
            f.location(&full, (true, 443), "a.test", "/old/x", None),
            "https://b.test/new/x"
        );
    }

    #[test]
    fn header_ops_remove_set_add() {
        let ops = HeaderOps::new(&HeaderModifier {
            set: vec![("x-set".into(), "s".into())],
            add: vec![("x-add".into(), "a2".into())],
            remove: vec!["x-gone".into()],
        });
        let mut h = HeaderMap::new();
        h.append("x-set", HeaderValue::from_static("old1"));
        h.append("x-set", HeaderValue::from_static("old2"));
        h.append("x-add", HeaderValue::from_static("a1"));
        h.append("x-gone", HeaderValue::from_static("g"));
        ops.apply(&mut h);
        assert_eq!(h.get_all("x-set").iter().collect::<Vec<_>>(), ["s"]);
        assert_eq!(h.get_all("x-add").iter().collect::<Vec<_>>(), ["a1", "a2"]);
        assert!(!h.contains_key("x-gone"));
    }

    #[test]
    fn attempt_timeouts() {
        let t = |request: Option<u64>, backend: Option<u64>| RouteFilters {
            timeouts: RouteTimeouts {
                request: request.map(Duration::from_millis),
                backend_request: backend.map(Duration::from_millis),
            },
            ..RouteFilters::default()
        };
        let gateway = Duration::from_secs(60);
        assert_eq!(t(None, None).attempt_timeout(gateway), gateway);
        assert_eq!(
            t(Some(500), None).attempt_timeout(gateway),
            Duration::from_millis(500)
        );
        assert_eq!(
            t(None, Some(200)).attempt_timeout(gateway),
            Duration::from_millis(200)
        );
        assert_eq!(
            t(Some(500), Some(200)).attempt_timeout(gateway),
            Duration::from_millis(200)
        );
    }
}
