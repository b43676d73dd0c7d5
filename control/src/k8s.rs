//! Kubernetes objects as Sluice reads them: Nodes, Namespaces, Pods, NetworkPolicies and
//! AdminNetworkPolicies (policy.networking.k8s.io/v1alpha1), from
//! YAML or JSON files (`sluicectl apply -f`, fixtures) or an API watch.
//!
//! [`parse_documents`] turns text into typed [`Object`]s, checking the envelope (apiVersion,
//! kind, metadata.name) of every document and naming the document in every error. The views
//! [`NodeInfo`], [`PodInfo`] and [`NamespaceInfo`] reduce objects to what the daemon uses;
//! [`ClusterObjects`] keeps the current set.
//!
//! Unknown fields: the Kubernetes types ignore fields they do not know, which is right for
//! what an API server of a newer version writes (status, new features). Where a human's typo
//! would silently change behaviour, `metadata` of every object and the `spec` of a
//! NetworkPolicy (a misspelt `podSelector` would select every pod), unknown fields are errors.

mod store;
mod view;

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Resource;

use crate::policy::admin::{self, AdminNetworkPolicy};
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use store::{Change, ClusterObjects};
pub use view::{
    NamedPort, NamespaceInfo, NodeInfo, PodInfo, Protocol, MODE_ANNOTATION, VTEP_MAC_ANNOTATION,
};

/// Largest input [`parse_documents`] accepts, in bytes.
pub const MAX_INPUT: usize = 4 << 20;

/// Deepest nesting of YAML flow collections (`[` and `{`) accepted. The YAML parser's work
/// grows with input length times flow depth, so 4 MiB of `[` would take hours; real objects
/// nest a handful of levels, and the deserialiser refuses more than 128 levels anyway.
pub const MAX_FLOW_DEPTH: usize = 64;

/// The namespace of a namespaced object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds Sluice reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Node,
    Namespace,
    Pod,
    NetworkPolicy,
    AdminNetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Node,
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::AdminNetworkPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => Node::KIND,
            Kind::Namespace => Namespace::KIND,
            Kind::Pod => Pod::KIND,
            Kind::NetworkPolicy => NetworkPolicy::KIND,
            Kind::AdminNetworkPolicy => admin::KIND,
        }
    }

    /// The one apiVersion Sluice accepts for the kind.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Node => Node::API_VERSION,
            Kind::Namespace => Namespace::API_VERSION,
            Kind::Pod => Pod::API_VERSION,
            Kind::NetworkPolicy => NetworkPolicy::API_VERSION,
            Kind::AdminNetworkPolicy => admin::API_VERSION,
        }
    }

    pub fn is_namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::NetworkPolicy)
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies an object in a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    /// Set exactly for namespaced kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn node(name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            kind: Kind::Node,
            namespace: None,
            name: name.into(),
        }
    }

    pub fn namespace(name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            kind: Kind::Namespace,
            namespace: None,
            name: name.into(),
        }
    }

    pub fn pod(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            kind: Kind::Pod,
            namespace: Some(namespace.into()),
            name: name.into(),
        }
    }

    pub fn network_policy(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            kind: Kind::NetworkPolicy,
            namespace: Some(namespace.into()),
            name: name.into(),
        }
    }

    /// The key of an object of `kind` with this metadata: namespaced kinds get
    /// [`DEFAULT_NAMESPACE`] when none is set, cluster-scoped kinds never have one.
    fn from_meta(kind: Kind, namespace: Option<&str>, name: Option<&str>) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: kind.is_namespaced().then(|| {
                namespace
                    .filter(|n| !n.is_empty())
                    .unwrap_or(DEFAULT_NAMESPACE)
                    .to_owned()
            }),
            name: name.unwrap_or_default().to_owned(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            "(unnamed)"
        } else {
            &self.name
        };
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{name}", self.kind),
            None => write!(f, "{} {name}", self.kind),
        }
    }
}

/// One object of a supported kind.
// The variants hold the Kubernetes types themselves, for callers to match on; a Pod is far
// larger than a Namespace, but objects are moved once, into a store.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Node(Node),
    Namespace(Namespace),
    Pod(Pod),
    NetworkPolicy(NetworkPolicy),
    AdminNetworkPolicy(Box<AdminNetworkPolicy>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::AdminNetworkPolicy(_) => Kind::AdminNetworkPolicy,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::AdminNetworkPolicy(o) => &o.metadata,
        }
    }

    /// Pods and NetworkPolicies without a namespace are in [`DEFAULT_NAMESPACE`].
    pub fn key(&self) -> ObjectKey {
        let m = self.metadata();
        ObjectKey::from_meta(self.kind(), m.namespace.as_deref(), m.name.as_deref())
    }
}

/// Where in the input a document-level error is: `document 2`, or `document 1, items[3]` for
/// an item of a List.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocRef {
    /// 1-based, counting empty documents too.
    pub doc: usize,
    /// 0-based index into the document's `items`, for Lists.
    pub item: Option<usize>,
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.doc)?;
        if let Some(i) = self.item {
            write!(f, ", items[{i}]")?;
        }
        Ok(())
    }
}

/// A document in the input, or an object already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Document(DocRef),
    /// Boxed to keep [`K8sError`] small.
    Object(Box<ObjectKey>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Document(d) => d.fmt(f),
            Origin::Object(k) => k.fmt(f),
        }
    }
}

/// Input or objects that Sluice cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum K8sError {
    #[error("input is {size} bytes: at most {max} bytes are accepted")]
    TooLarge { size: usize, max: usize },
    #[error("{at}: {format} syntax error: {message}")]
    Syntax {
        at: DocRef,
        /// "YAML" or "JSON".
        format: &'static str,
        line: Option<usize>,
        message: String,
    },
    #[error("{at}: expected an object with apiVersion and kind, found {found}")]
    NotAnObject { at: DocRef, found: &'static str },
    #[error("{at}: missing {field}")]
    MissingField { at: Origin, field: String },
    #[error(
        "{at}: unknown kind {kind:?}: supported kinds are Node, Namespace, Pod, NetworkPolicy, AdminNetworkPolicy"
    )]
    UnknownKind { at: DocRef, kind: String },
    #[error("{at}: apiVersion {api_version:?} is wrong for kind {kind}: expected {:?}", kind.api_version())]
    WrongApiVersion {
        at: DocRef,
        kind: Kind,
        api_version: String,
    },
    #[error("{at}: {key} has unknown field {field}")]
    UnknownField {
        at: DocRef,
        key: Box<ObjectKey>,
        field: String,
    },
    #[error("{at}: {key} is invalid at {field}: {message}")]
    InvalidObject {
        at: DocRef,
        key: Box<ObjectKey>,
        field: String,
        message: String,
    },
    #[error("{at}: invalid {field} {value:?}: expected {expected}")]
    InvalidField {
        at: Origin,
        field: String,
        value: String,
        expected: String,
    },
}

/// Parses YAML (one or more `---`-separated documents) or JSON (one or more objects). A
/// document may be a single object or a List (`kind: List`, or `NodeList`, `PodList`, ...)
/// whose `items` are objects; items of a typed list may leave out apiVersion and kind, as the
/// API server does. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Object>, K8sError> {
    if text.len() > MAX_INPUT {
        return Err(K8sError::TooLarge {
            size: text.len(),
            max: MAX_INPUT,
        });
    }
    let mut out = Vec::new();
    let body = text.trim_start_matches('\u{feff}');
    if body.trim_start().starts_with('{') {
        let stream = serde_json::Deserializer::from_str(body).into_iter::<StrictValue>();
        for (i, doc) in stream.enumerate() {
            let at = DocRef {
                doc: i + 1,
                item: None,
            };
            let StrictValue(doc) = doc.map_err(|e| K8sError::Syntax {
                at,
                format: "JSON",
                line: Some(e.line()),
                message: e.to_string(),
            })?;
            push_document(at, doc, &mut out)?;
        }
    } else {
        if let Some((doc, line)) = flow_too_deep(body) {
            return Err(K8sError::Syntax {
                at: DocRef { doc, item: None },
                format: "YAML",
                line: Some(line),
                message: format!(
                    "flow collections ([...] or {{...}}) nested deeper than {MAX_FLOW_DEPTH} at line {line}"
                ),
            });
        }
        for (i, d) in serde_norway::Deserializer::from_str(body).enumerate() {
            let at = DocRef {
                doc: i + 1,
                item: None,
            };
            // After a syntax error the document iterator repeats it forever: stop at the first.
            let StrictValue(doc) = StrictValue::deserialize(d).map_err(|e| K8sError::Syntax {
                at,
                format: "YAML",
                line: e.location().map(|l| l.line()),
                message: e.to_string(),
            })?;
            push_document(at, doc, &mut out)?;
        }
    }
    Ok(out)
}

/// Where YAML flow collections first nest deeper than [`MAX_FLOW_DEPTH`]: (document, line),
/// both 1-based. A lexical scan, not a parser: it skips comments and quoted scalars, and may
/// count brackets inside block scalars, which only makes it stricter on pathological input.
fn flow_too_deep(text: &str) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    let mut doc = 1;
    let mut seen_content = false;
    let mut quote: Option<char> = None;
    for (n, line) in text.lines().enumerate() {
        if quote.is_none()
            && (line == "---" || line.starts_with("--- ") || line.starts_with("---\t"))
        {
            // A leading `---` opens the first document rather than a second one.
            if seen_content {
                doc += 1;
            }
            seen_content = true;
            depth = 0;
            continue;
        }
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some('"') if c == '\\' => {
                    chars.next();
                }
                Some('\'') if c == '\'' && chars.peek() == Some(&'\'') => {
                    chars.next();
                }
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => {
                    let at_token_start = prev.is_whitespace() || "[{,:-".contains(prev);
                    match c {
                        '#' if prev.is_whitespace() => break,
                        '"' | '\'' if at_token_start => quote = Some(c),
                        '[' | '{' => {
                            depth += 1;
                            if depth > MAX_FLOW_DEPTH {
                                return Some((doc, n + 1));
                            }
                        }
                        ']' | '}' => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                    if !c.is_whitespace() {
                        seen_content = true;
                    }
                }
            }
            prev = c;
        }
    }
    None
}

/// A JSON value that refuses duplicate keys in objects (serde_json's own `Value` keeps the
/// last one, silently dropping the first: a duplicated `ingress:` would lose rules).
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("number {v} is not finite")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "an object",
    }
}

fn push_document(at: DocRef, doc: Value, out: &mut Vec<Object>) -> Result<(), K8sError> {
    let mut map = match doc {
        Value::Null => return Ok(()),
        Value::Object(m) => m,
        other => {
            return Err(K8sError::NotAnObject {
                at,
                found: type_name(&other),
            })
        }
    };
    let kind = string_field(at, &map, "kind")?;
    let Some(item_kind) = kind.strip_suffix("List") else {
        out.push(object_from_map(at, map)?);
        return Ok(());
    };
    let item_kind = (!item_kind.is_empty()).then(|| item_kind.to_owned());
    let api_version = string_field(at, &map, "apiVersion")?;
    let items = match map.remove("items") {
        Some(Value::Array(items)) => items,
        // An empty list as some clients write it.
        Some(Value::Null) => Vec::new(),
        Some(other) => {
            return Err(K8sError::InvalidField {
                at: Origin::Document(at),
                field: "items".into(),
                value: type_name(&other).into(),
                expected: "a sequence of objects".into(),
            })
        }
        None => {
            return Err(K8sError::MissingField {
                at: Origin::Document(at),
                field: "items".into(),
            })
        }
    };
    for (j, item) in items.into_iter().enumerate() {
        let at = DocRef {
            doc: at.doc,
            item: Some(j),
        };
        let mut item = match item {
            Value::Object(m) => m,
            other => {
                return Err(K8sError::NotAnObject {
                    at,
                    found: type_name(&other),
                })
            }
        };
        // Items of a typed list (PodList, ...) may leave their kind implicit.
        if let Some(k) = &item_kind {
            item.entry("kind")
                .or_insert_with(|| Value::String(k.clone()));
            item.entry("apiVersion")
                .or_insert_with(|| Value::String(api_version.clone()));
        }
        out.push(object_from_map(at, item)?);
    }
    Ok(())
}

/// A required, non-empty string at the top of a document.
fn string_field(at: DocRef, map: &Map<String, Value>, field: &str) -> Result<String, K8sError> {
    match map.get(field) {
        None | Some(Value::Null) => Err(K8sError::MissingField {
            at: Origin::Document(at),
            field: field.into(),
        }),
        Some(Value::String(s)) if s.is_empty() => Err(K8sError::MissingField {
            at: Origin::Document(at),
            field: field.into(),
        }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(K8sError::InvalidField {
            at: Origin::Document(at),
            field: field.into(),
            value: other.to_string(),
            expected: "a string".into(),
        }),
    }
}

fn object_from_map(at: DocRef, map: Map<String, Value>) -> Result<Object, K8sError> {
    let kind_name = string_field(at, &map, "kind")?;
    let kind = Kind::from_name(&kind_name).ok_or(K8sError::UnknownKind {
        at,
        kind: kind_name,
    })?;
    let api_version = string_field(at, &map, "apiVersion")?;
    if api_version != kind.api_version() {
        return Err(K8sError::WrongApiVersion {
            at,
            kind,
            api_version,
        });
    }
    let meta = match map.get("metadata") {
        Some(Value::Object(m)) => m,
        Some(Value::Null) | None => {
            return Err(K8sError::MissingField {
                at: Origin::Document(at),
                field: "metadata.name".into(),
            })
        }
        Some(other) => {
            return Err(K8sError::InvalidField {
                at: Origin::Document(at),
                field: "metadata".into(),
                value: type_name(other).into(),
                expected: "an object".into(),
            })
        }
    };
    let name = match meta.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(K8sError::MissingField {
                at: Origin::Document(at),
                field: "metadata.name".into(),
            })
        }
        Some(other) => {
            return Err(K8sError::InvalidField {
                at: Origin::Document(at),
                field: "metadata.name".into(),
                value: other.to_string(),
                expected: "a string".into(),
            })
        }
    };
    let key = ObjectKey::from_meta(
        kind,
        meta.get("namespace").and_then(Value::as_str),
        Some(name),
    );
    let value = Value::Object(map);
    Ok(match kind {
        Kind::Node => Object::Node(typed(at, &key, value, &["metadata"])?),
        Kind::Namespace => Object::Namespace(typed(at, &key, value, &["metadata"])?),
        Kind::Pod => Object::Pod(typed(at, &key, value, &["metadata"])?),
        Kind::NetworkPolicy => {
            Object::NetworkPolicy(typed(at, &key, value, &["metadata", "spec"])?)
        }
        // Sluice's own type refuses unknown fields everywhere.
        Kind::AdminNetworkPolicy => {
            Object::AdminNetworkPolicy(Box::new(typed(at, &key, value, &["metadata"])?))
        }
    })
}

/// Converts to the Kubernetes type, then refuses fields under `strict` that the type dropped.
fn typed<T: DeserializeOwned + Serialize>(
    at: DocRef,
    key: &ObjectKey,
    value: Value,
    strict: &[&str],
) -> Result<T, K8sError> {
    let original: Vec<(&str, Value)> = strict
        .iter()
        .filter_map(|&s| Some((s, value.get(s)?.clone())))
        .collect();
    let obj: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        K8sError::InvalidObject {
            at,
            key: Box::new(key.clone()),
            field,
            message: e.into_inner().to_string(),
        }
    })?;
    if original.is_empty() {
        return Ok(obj);
    }
    let back = serde_json::to_value(&obj).map_err(|e| K8sError::InvalidObject {
        at,
        key: Box::new(key.clone()),
        field: ".".into(),
        message: e.to_string(),
    })?;
    for (section, v) in &original {
        let mut path = (*section).to_owned();
        if let Some(field) = back
            .get(section)
            .and_then(|b| first_dropped(v, b, &mut path))
        {
            return Err(K8sError::UnknownField {
                at,
                key: Box::new(key.clone()),
                field,
            });
        }
    }
    Ok(obj)
}

/// The first non-null field of `input` that is missing from `kept`, as a dotted path.
fn first_dropped(input: &Value, kept: &Value, path: &mut String) -> Option<String> {
    let len = path.len();
    let found = match (input, kept) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| {
            if v.is_null() {
                return None;
            }
            path.truncate(len);
            path.push('.');
            path.push_str(k);
            match b.get(k) {
                None => Some(path.clone()),
                Some(w) => first_dropped(v, w, path),
            }
        }),
        (Value::Array(a), Value::Array(b)) => {
            a.iter().zip(b).enumerate().find_map(|(i, (v, w))| {
                path.truncate(len);
                path.push_str(&format!("[{i}]"));
                first_dropped(v, w, path)
            })
        }
        _ => None,
    };
    path.truncate(len);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = include_str!("../../fixtures/k8s/nodes.yaml");
    const NAMESPACES: &str = include_str!("../../fixtures/k8s/namespaces.yaml");
    const PODS: &str = include_str!("../../fixtures/k8s/pods.yaml");
    const POLICIES: &str = include_str!("../../fixtures/k8s/netpol-allow-from-namespace.yaml");
    const POD_LIST: &str = include_str!("../../fixtures/k8s/pod-list.json");

    fn err(text: &str) -> K8sError {
        parse_documents(text).expect_err(text)
    }

    #[test]
    fn admin_network_policies_load_strictly() {
        let ok = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n\
                  metadata: {name: deny-z}\nspec:\n  priority: 10\n  subject: {namespaces: {}}\n  \
                  ingress:\n  - {action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}\n";
        let objs = parse_documents(ok).unwrap();
        assert_eq!(objs[0].kind(), Kind::AdminNetworkPolicy);
        // Cluster-scoped: no namespace in the key.
        assert_eq!(objs[0].key().namespace, None);
        let Object::AdminNetworkPolicy(a) = &objs[0] else {
            panic!("{:?}", objs[0])
        };
        assert_eq!(crate::policy::admin::parse_admin(a).unwrap().priority, 10);
        let typo = ok.replace("subject", "subjet");
        let e = parse_documents(&typo).unwrap_err().to_string();
        assert!(
            e.contains("subjet") && e.contains("AdminNetworkPolicy deny-z"),
            "{e}"
        );
        let wrong = ok.replace("v1alpha1", "v1");
        let e = parse_documents(&wrong).unwrap_err().to_string();
        assert!(
            e.contains("expected \"policy.networking.k8s.io/v1alpha1\""),
            "{e}"
        );
    }

    #[test]
    fn multi_document_yaml() {
        let all = format!("{NODES}\n---\n{NAMESPACES}\n---\n{PODS}\n---\n{POLICIES}");
        let objs = parse_documents(&all).unwrap();
        let kinds: Vec<Kind> = objs.iter().map(Object::kind).collect();
        assert_eq!(kinds.iter().filter(|k| **k == Kind::Node).count(), 2);
        assert_eq!(kinds.iter().filter(|k| **k == Kind::Namespace).count(), 3);
        assert_eq!(kinds.iter().filter(|k| **k == Kind::Pod).count(), 4);
        assert_eq!(
            kinds.iter().filter(|k| **k == Kind::NetworkPolicy).count(),
            2
        );
        assert_eq!(objs[0].key(), ObjectKey::node("node-1"));
        let pod = objs.iter().find(|o| o.kind() == Kind::Pod).unwrap();
        assert_eq!(pod.key(), ObjectKey::pod("x", "a"));
    }

    #[test]
    fn empty_documents_are_skipped() {
        assert!(parse_documents("").unwrap().is_empty());
        assert!(parse_documents("---\n---\n# nothing\n").unwrap().is_empty());
        let objs = parse_documents(
            "---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 1);
    }

    #[test]
    fn default_namespace() {
        let objs = parse_documents(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\n---\n\
             apiVersion: v1\nkind: Node\nmetadata: {name: n, namespace: ignored}\n",
        )
        .unwrap();
        assert_eq!(objs[0].key(), ObjectKey::pod("default", "p"));
        assert_eq!(objs[1].key(), ObjectKey::network_policy("default", "np"));
        assert_eq!(objs[2].key(), ObjectKey::node("n"));
        assert_eq!(objs[0].key().to_string(), "Pod default/p");
    }

    #[test]
    fn json_single_and_lists() {
        let one =
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x","labels":{"ns":"x"}}}"#;
        let objs = parse_documents(one).unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].key(), ObjectKey::namespace("x"));
        // Two objects back to back.
        assert_eq!(parse_documents(&format!("{one}\n{one}")).unwrap().len(), 2);
        // A typed list whose items carry no kind, as the API server answers.
        let objs = parse_documents(POD_LIST).unwrap();
        assert_eq!(objs.len(), 2);
        assert!(objs.iter().all(|o| o.kind() == Kind::Pod));
        assert_eq!(objs[1].key(), ObjectKey::pod("y", "b"));
        // A generic List of mixed kinds, as kubectl prints it.
        let list = format!(
            r#"{{"apiVersion":"v1","kind":"List","items":[{one},{}]}}"#,
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"}}"#
        );
        let objs = parse_documents(&list).unwrap();
        assert_eq!(
            objs.iter().map(Object::kind).collect::<Vec<_>>(),
            [Kind::Namespace, Kind::Node]
        );
        // Also in YAML.
        let objs = parse_documents(
            "apiVersion: v1\nkind: NodeList\nitems:\n- metadata: {name: a}\n- metadata: {name: b}\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 2);
        assert!(parse_documents("apiVersion: v1\nkind: List\nitems: []\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn errors_name_the_document() {
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{ns}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\n"),
                "document 2: unknown kind \"Deployment\": supported kinds are Node, Namespace, Pod, NetworkPolicy, AdminNetworkPolicy",
            ),
            (format!("{ns}---\nkind: Pod\nmetadata: {{name: p}}\n"), "document 2: missing apiVersion"),
            (format!("{ns}---\n{ns}---\napiVersion: v1\nmetadata: {{name: p}}\n"), "document 3: missing kind"),
            (
                format!("{ns}---\napiVersion: v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\n"),
                "document 2: apiVersion \"v1\" is wrong for kind NetworkPolicy: expected \"networking.k8s.io/v1\"",
            ),
            (
                "apiVersion: networking.k8s.io/v1\nkind: Pod\nmetadata: {name: p}\n".into(),
                "document 1: apiVersion \"networking.k8s.io/v1\" is wrong for kind Pod: expected \"v1\"",
            ),
            (format!("{ns}---\napiVersion: v1\nkind: Pod\nmetadata: {{}}\n"), "document 2: missing metadata.name"),
            (format!("{ns}---\napiVersion: v1\nkind: Pod\n"), "document 2: missing metadata.name"),
            (format!("{ns}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: \"\"}}\n"), "document 2: missing metadata.name"),
            (format!("{ns}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: 5}}\n"), "document 2: invalid metadata.name"),
            (format!("{ns}---\n- a\n- b\n"), "document 2: expected an object with apiVersion and kind, found a sequence"),
            (format!("{ns}---\njust text\n"), "document 2: expected an object with apiVersion and kind, found a string"),
            (format!("{ns}---\nkind: 3\n"), "document 2: invalid kind"),
            ("apiVersion: v1\nkind: List\n".into(), "document 1: missing items"),
            ("apiVersion: v1\nkind: List\nitems: 3\n".into(), "document 1: invalid items"),
            (
                "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Secret, metadata: {name: s}}\n".into(),
                "document 1, items[1]: unknown kind \"Secret\"",
            ),
            ("apiVersion: v1\nkind: List\nitems: [3]\n".into(), "document 1, items[0]: expected an object"),
            (
                format!("{ns}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: x}}\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: http\n"),
                "document 2: Pod x/p is invalid at spec.containers[0].ports[0].containerPort: invalid type: string \"http\"",
            ),
            (
                format!("{ns}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: y, label: {{a: b}}}}\n"),
                "document 2: Namespace y has unknown field metadata.label",
            ),
            (
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  podselector: {}\n".into(),
                "document 1: NetworkPolicy x/np has unknown field spec.podselector",
            ),
            (
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabel: {ns: y}}\n".into(),
                "document 1: NetworkPolicy default/np has unknown field spec.ingress[0].from[0].namespaceSelector.matchLabel",
            ),
        ];
        for (text, want) in &cases {
            let msg = err(text).to_string();
            assert!(msg.starts_with(want), "{text}\ngot:  {msg}\nwant: {want}");
        }
    }

    #[test]
    fn syntax_errors_name_document_and_line() {
        let e = err("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\nkind: [Pod\n---\n");
        match &e {
            K8sError::Syntax {
                at, format, line, ..
            } => {
                assert_eq!(at.doc, 2);
                assert_eq!(*format, "YAML");
                assert!(line.is_some_and(|l| l >= 5), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string().starts_with("document 2: YAML syntax error"),
            "{e}"
        );
        assert!(e.to_string().contains("line"), "{e}");
        let e = err("{\"apiVersion\": \"v1\",\n\"kind\": }");
        match &e {
            K8sError::Syntax {
                at, format, line, ..
            } => {
                assert_eq!((at.doc, *format, *line), (1, "JSON", Some(2)));
            }
            other => panic!("{other:?}"),
        }
        // Duplicate keys are an error, not a silent overwrite.
        let e = err("apiVersion: v1\nkind: Namespace\nkind: Pod\nmetadata: {name: x}\n");
        assert!(matches!(e, K8sError::Syntax { .. }), "{e:?}");
    }

    #[test]
    fn size_limit() {
        let pad = format!("# {}\n", "x".repeat(1000));
        let mut text = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");
        while text.len() <= MAX_INPUT - pad.len() {
            text.push_str(&pad);
        }
        assert_eq!(parse_documents(&text).unwrap().len(), 1);
        text.push_str(&pad);
        assert_eq!(
            err(&text),
            K8sError::TooLarge {
                size: text.len(),
                max: MAX_INPUT
            }
        );
    }

    #[test]
    fn hostile_yaml_is_refused() {
        // Alias expansion ("billion laughs") and deep nesting end in errors, not in memory or
        // stack exhaustion.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            bomb.push_str(&format!(
                "{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                n = (b'a' + i) as char,
                p = (b'a' + i - 1) as char
            ));
        }
        assert!(parse_documents(&bomb).is_err());
        assert!(parse_documents(&"[".repeat(100_000)).is_err());
        assert!(parse_documents(&format!("a: {}", "[".repeat(100_000))).is_err());
        assert!(parse_documents(&format!("{{\"a\": {}", "[".repeat(100_000))).is_err());
    }

    #[test]
    fn flow_depth_limit() {
        let nested = |d: usize| format!("a: {}1{}\n", "[".repeat(d), "]".repeat(d));
        assert_eq!(flow_too_deep(&nested(MAX_FLOW_DEPTH)), None);
        assert_eq!(flow_too_deep(&nested(MAX_FLOW_DEPTH + 1)), Some((1, 1)));
        // Brackets in comments and quoted scalars do not count.
        let quoted = format!(
            "a: \"{0}\"\nb: '{0}'\nc: x # {0}\nd: \"\\\"{0}\"\ne: 'it''s {0}'\n",
            "[".repeat(100)
        );
        assert_eq!(flow_too_deep(&quoted), None);
        // The document is counted as the parser counts it.
        let text = format!("---\na: 1\n---\nb: 2\n---\n{}", nested(100));
        assert_eq!(flow_too_deep(&text), Some((3, 6)));
        let e = err(&text);
        assert!(
            e.to_string().starts_with("document 3: YAML syntax error"),
            "{e}"
        );
        // Input at the size limit that is all brackets is refused (before the YAML parser,
        // which would take hours).
        assert!(parse_documents(&format!("a: {}", "[".repeat(MAX_INPUT - 3))).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
            let _ = parse_documents(&s);
        }

        #[test]
        fn yaml_like_text_never_panics(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "apiVersion: v1\n", "apiVersion: networking.k8s.io/v1\n", "kind: Pod\n",
                    "kind: Node\n", "kind: List\n", "kind: PodList\n", "kind: NetworkPolicy\n",
                    "kind: Namespace\n", "metadata:\n", "  name: a\n", "  namespace: b\n",
                    "  labels: {x: y}\n", "items:\n", "- ", "---\n", "spec:\n", "  podCIDR: 198.19.1.0/24\n",
                    "  containers: []\n", "  podSelector: {}\n", "status: {podIP: 198.19.1.5}\n",
                    "{", "}", "[", "]", ": ", "&a ", "*a ", "\"", "'", "\t", "  ", "\n", "null\n",
                ]),
                0..40,
            )
        ) {
            let text: String = parts.concat();
            if let Ok(objs) = parse_documents(&text) {
                for o in objs {
                    let _ = o.key();
                    match &o {
                        Object::Node(n) => { let _ = NodeInfo::from_node(n); }
                        Object::Pod(p) => { let _ = PodInfo::from_pod(p); }
                        Object::Namespace(n) => { let _ = NamespaceInfo::from_namespace(n); }
                        Object::NetworkPolicy(_) => {}
                        Object::AdminNetworkPolicy(a) => { let _ = crate::policy::admin::parse_admin(a); }
                    }
                }
            }
        }
    }
}
