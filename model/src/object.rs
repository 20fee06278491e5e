//! Kubernetes objects as they arrive from a source, before translation, and
//! decoding them from untyped JSON/YAML values. Both sources (manifest files and
//! the apiserver) hand these to the [`crate::ModelWriter`].

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use crate::error::FieldError;
use crate::gateway_api;
use crate::types::{Kind, ObjectId};

/// A Kubernetes object of a kind fairlead reads.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    missing_docs,
    reason = "each variant is the Kubernetes kind of the same name"
)]
pub enum KubeObject {
    Service(Box<core::Service>),
    EndpointSlice(Box<discovery::EndpointSlice>),
    Ingress(Box<networking::Ingress>),
    IngressClass(Box<networking::IngressClass>),
    Secret(Box<core::Secret>),
    Node(Box<core::Node>),
    Namespace(Box<core::Namespace>),
    GatewayClass(Box<gateway_api::GatewayClass>),
    Gateway(Box<gateway_api::Gateway>),
    HttpRoute(Box<gateway_api::HTTPRoute>),
    GrpcRoute(Box<gateway_api::GRPCRoute>),
    ReferenceGrant(Box<gateway_api::ReferenceGrant>),
}

impl KubeObject {
    /// The object's kind.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            KubeObject::Service(_) => Kind::Service,
            KubeObject::EndpointSlice(_) => Kind::EndpointSlice,
            KubeObject::Ingress(_) => Kind::Ingress,
            KubeObject::IngressClass(_) => Kind::IngressClass,
            KubeObject::Secret(_) => Kind::Secret,
            KubeObject::Node(_) => Kind::Node,
            KubeObject::Namespace(_) => Kind::Namespace,
            KubeObject::GatewayClass(_) => Kind::GatewayClass,
            KubeObject::Gateway(_) => Kind::Gateway,
            KubeObject::HttpRoute(_) => Kind::HttpRoute,
            KubeObject::GrpcRoute(_) => Kind::GrpcRoute,
            KubeObject::ReferenceGrant(_) => Kind::ReferenceGrant,
        }
    }

    /// The object's metadata.
    #[must_use]
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            KubeObject::Service(o) => &o.metadata,
            KubeObject::EndpointSlice(o) => &o.metadata,
            KubeObject::Ingress(o) => &o.metadata,
            KubeObject::IngressClass(o) => &o.metadata,
            KubeObject::Secret(o) => &o.metadata,
            KubeObject::Node(o) => &o.metadata,
            KubeObject::Namespace(o) => &o.metadata,
            KubeObject::GatewayClass(o) => &o.metadata,
            KubeObject::Gateway(o) => &o.metadata,
            KubeObject::HttpRoute(o) => &o.metadata,
            KubeObject::GrpcRoute(o) => &o.metadata,
            KubeObject::ReferenceGrant(o) => &o.metadata,
        }
    }

    /// Kind, namespace and name. Namespaced objects without a namespace are in
    /// `default`, as `kubectl apply` would put them.
    #[must_use]
    pub fn id(&self) -> ObjectId {
        let kind = self.kind();
        let meta = self.metadata();
        ObjectId {
            kind,
            namespace: if kind.namespaced() {
                meta.namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned())
            } else {
                String::new()
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Why an untyped value could not become a [`KubeObject`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The object, when kind and name could be read.
    pub object: Option<ObjectId>,
    /// What is wrong, and where.
    pub error: FieldError,
}

/// Kinds fairlead knows of but does not read; objects of these kinds are
/// reported as unsupported rather than unknown.
const KINDS_READ: &str = "Service, EndpointSlice, Ingress, IngressClass, Secret, Node, Namespace, \
     GatewayClass, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant (and List)";

/// Decodes one object from an untyped value (one YAML document or one item of a
/// `kind: List`). Checks `apiVersion`, `kind` and `metadata.name`, then every
/// field through the k8s-openapi types, naming the field path on error.
pub fn decode(value: serde_json::Value) -> Result<KubeObject, DecodeError> {
    let str_field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
    let meta = value.get("metadata");
    let meta_str = |name: &str| {
        meta.and_then(|m| m.get(name))
            .and_then(serde_json::Value::as_str)
    };
    let (kind, object) = check_head(
        str_field("apiVersion").unwrap_or_default(),
        str_field("kind"),
        meta_str("name"),
        meta_str("namespace"),
    )?;
    read_kind(kind, value).map_err(|error| DecodeError {
        object: Some(object),
        error,
    })
}

/// Decodes one object from its JSON text, as [`decode`] decodes it from the
/// parsed value, without building the value: the head (`apiVersion`, `kind`,
/// `metadata.name` and `namespace`) and then the typed object are read from
/// the text. Anything this fast path does not take as it is (a field of the
/// wrong type, a key given twice, text that is not an object) goes through
/// [`decode`], so the outcome and every error message are [`decode`]'s.
///
/// # Errors
///
/// As [`decode`].
pub(crate) fn decode_json(text: &str) -> Result<KubeObject, DecodeError> {
    fast_decode_json(text).unwrap_or_else(|| {
        let value = serde_json::from_str(text).map_err(|e| DecodeError {
            object: None,
            error: FieldError::new("", format!("JSON syntax error: {e}")),
        })?;
        decode(value)
    })
}

/// [`decode_json`]'s fast path; `None` where it defers to [`decode`].
fn fast_decode_json(text: &str) -> Option<Result<KubeObject, DecodeError>> {
    use std::borrow::Cow;
    #[derive(serde::Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        namespace: Option<Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "apiVersion", borrow, default)]
        api_version: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        metadata: Option<Meta<'a>>,
    }
    let head: Head<'_> = serde_json::from_str(text).ok()?;
    let meta = head.metadata.as_ref();
    let (kind, object) = match check_head(
        head.api_version.as_deref().unwrap_or_default(),
        head.kind.as_deref(),
        meta.and_then(|m| m.name.as_deref()),
        meta.and_then(|m| m.namespace.as_deref()),
    ) {
        Ok(head) => head,
        Err(e) => return Some(Err(e)),
    };
    let decoded = read_kind(kind, JsonText(text)).ok()?;
    // The typed object names itself as the head did (a namespace of a
    // cluster-scoped kind is not part of its id either way).
    debug_assert_eq!(decoded.id(), object);
    Some(Ok(decoded))
}

/// Checks an object's head, the fields every object needs: `apiVersion`,
/// `kind` and `metadata.name`. Returns the kind and the object's id.
fn check_head(
    api_version: &str,
    kind_name: Option<&str>,
    name: Option<&str>,
    namespace: Option<&str>,
) -> Result<(Kind, ObjectId), DecodeError> {
    let Some(kind_name) = kind_name else {
        return Err(DecodeError {
            object: None,
            error: FieldError::new("kind", "missing: every object needs apiVersion and kind"),
        });
    };
    let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == kind_name) else {
        return Err(DecodeError {
            object: None,
            error: FieldError::new(
                "kind",
                format!(
                    "unsupported kind {kind_name} ({api_version}) {}{}: fairlead reads {KINDS_READ}",
                    namespace.map(|n| format!("{n}/")).unwrap_or_default(),
                    name.unwrap_or("<unnamed>")
                ),
            ),
        });
    };
    let object = ObjectId {
        kind,
        namespace: if kind.namespaced() {
            namespace.unwrap_or("default").to_owned()
        } else {
            String::new()
        },
        name: name.unwrap_or_default().to_owned(),
    };
    let fail = |field: &str, message: String| DecodeError {
        object: Some(object.clone()),
        error: FieldError::new(field, message),
    };
    if api_version != kind.api_version() {
        return Err(fail(
            "apiVersion",
            format!(
                "{kind} must be apiVersion {}, got {api_version:?}",
                kind.api_version()
            ),
        ));
    }
    if name.unwrap_or_default().is_empty() {
        return Err(fail("metadata.name", "missing".to_owned()));
    }
    Ok((kind, object))
}

/// Deserializes a typed object, naming the field path on error.
/// Where a kind's typed object is read from: a parsed value or JSON text.
trait TypedSource {
    type Error;
    fn typed<T: DeserializeOwned>(self) -> Result<Box<T>, Self::Error>;
}

impl TypedSource for serde_json::Value {
    /// Names the field path.
    type Error = FieldError;
    fn typed<T: DeserializeOwned>(self) -> Result<Box<T>, FieldError> {
        serde_path_to_error::deserialize::<_, T>(self)
            .map(Box::new)
            .map_err(|e| {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                FieldError::new(path, e.into_inner().to_string())
            })
    }
}

/// One object's JSON text; its errors are left to the value path.
struct JsonText<'a>(&'a str);

impl TypedSource for JsonText<'_> {
    type Error = serde_json::Error;
    fn typed<T: DeserializeOwned>(self) -> Result<Box<T>, serde_json::Error> {
        serde_json::from_str(self.0).map(Box::new)
    }
}

/// The object of `kind` read from `source`: the one place each kind meets its type.
fn read_kind<S: TypedSource>(kind: Kind, source: S) -> Result<KubeObject, S::Error> {
    Ok(match kind {
        Kind::Service => KubeObject::Service(source.typed()?),
        Kind::EndpointSlice => KubeObject::EndpointSlice(source.typed()?),
        Kind::Ingress => KubeObject::Ingress(source.typed()?),
        Kind::IngressClass => KubeObject::IngressClass(source.typed()?),
        Kind::Secret => KubeObject::Secret(source.typed()?),
        Kind::Node => KubeObject::Node(source.typed()?),
        Kind::Namespace => KubeObject::Namespace(source.typed()?),
        Kind::GatewayClass => KubeObject::GatewayClass(source.typed()?),
        Kind::Gateway => KubeObject::Gateway(source.typed()?),
        Kind::HttpRoute => KubeObject::HttpRoute(source.typed()?),
        Kind::GrpcRoute => KubeObject::GrpcRoute(source.typed()?),
        Kind::ReferenceGrant => KubeObject::ReferenceGrant(source.typed()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path takes a well-formed object itself (the files tests show that it
    /// decodes as the value path does) and leaves the unusual to the value path.
    #[test]
    fn the_fast_path_takes_the_common_case_and_defers_the_rest() {
        let service = r#"{"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}"#;
        assert!(matches!(
            fast_decode_json(service),
            Some(Ok(KubeObject::Service(_)))
        ));
        let unknown_kind =
            r#"{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}"#;
        assert!(matches!(fast_decode_json(unknown_kind), Some(Err(_))));
        for deferred in [
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "name": "b"}}"#,
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": "eighty"}]}}"#,
            r#"{"apiVersion": "v1", "kind": 7}"#,
            "[1, 2]",
        ] {
            assert!(fast_decode_json(deferred).is_none(), "{deferred}");
        }
    }
}
