//! The cluster's objects from manifest files (YAML or JSON).
//!
//! A file may hold several documents separated by `---` lines, and lists
//! (`kind: List` with `items`, as `kubectl get -o yaml` prints). Kinds other
//! than `v1` Service, Namespace, Node and Pod, `discovery.k8s.io/v1`
//! EndpointSlice, and Gateway API HTTPRoute, GRPCRoute and ReferenceGrant are skipped
//! without a word (but for those kinds under another version of their API
//! group, and kinds a letter or two away from them), as are headless and
//! ExternalName Services, FQDN slices, host-network Pods and routes without
//! a Service parent. Everything wrong is a [`ManifestProblem`] naming the file and
//! the object; the rest of the file, and the other files, still load.

use std::collections::btree_map::{BTreeMap, Entry};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};
use zerohop_planner::{model, ClusterView};
use zerohop_routes::model as routes;

use crate::convert::{FromObject, ObjectRef, DEFAULT_NAMESPACE};

/// API versions of the Gateway API kinds read (HTTPRoute, GRPCRoute, ReferenceGrant).
const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
const GATEWAY_V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";

/// An object read from a manifest, converted to the model. Kinds larger
/// than a few words are boxed: a directory of 10k Services holds 20k of
/// these, in maps whose every slot has the size of the largest kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A Service with a ClusterIP (shared with the views built from it).
    Service(Arc<model::Service>),
    /// An EndpointSlice of IPv4 or IPv6 addresses (shared likewise).
    EndpointSlice(Arc<model::EndpointSlice>),
    /// A Namespace (only its opt-out label matters).
    Namespace(model::Namespace),
    /// A Node (only its zone matters).
    Node(Box<model::Node>),
    /// An HTTPRoute or GRPCRoute with a Service parent.
    Route(Box<model::Route>),
    /// A ReferenceGrant.
    Grant(Box<model::Grant>),
    /// A Pod (its namespace, node and IPs).
    Pod(Box<model::Pod>),
}

impl Manifest {
    /// The object, as messages name it: `Service default/web`.
    pub fn object(&self) -> ObjectRef {
        let namespaced =
            |kind, namespace: &str, name: &str| ObjectRef::new(kind, namespace, Some(name));
        match self {
            Manifest::Service(service) => {
                namespaced("Service", &service.id.namespace, &service.id.name)
            }
            Manifest::EndpointSlice(slice) => {
                namespaced("EndpointSlice", &slice.id.namespace, &slice.id.name)
            }
            Manifest::Namespace(namespace) => {
                ObjectRef::cluster_scoped("Namespace", &namespace.name)
            }
            Manifest::Node(node) => ObjectRef::cluster_scoped("Node", &node.name),
            Manifest::Route(route) => {
                let metadata = route.0.metadata();
                namespaced(route.0.kind().name(), &metadata.namespace, &metadata.name)
            }
            Manifest::Grant(grant) => {
                let metadata = &grant.0.metadata;
                namespaced("ReferenceGrant", &metadata.namespace, &metadata.name)
            }
            Manifest::Pod(pod) => namespaced("Pod", &pod.namespace, &pod.name),
        }
    }
}

impl Manifest {
    /// Adds it to `view`, or replaces the object of its kind and name.
    fn apply_to(self, view: &mut ClusterView) {
        match self {
            Manifest::Service(service) => view.apply_service(service),
            Manifest::EndpointSlice(slice) => view.apply_slice(slice),
            Manifest::Namespace(namespace) => view.apply_namespace(namespace),
            Manifest::Node(node) => view.apply_node(*node),
            Manifest::Route(route) => view.apply_route(*route),
            Manifest::Grant(grant) => view.apply_grant(*grant),
            Manifest::Pod(pod) => view.apply_pod(*pod),
        };
    }

    /// Removes the object of its kind and name from `view`.
    fn delete_from(&self, view: &mut ClusterView) {
        match self {
            Manifest::Service(service) => view.delete_service(&service.id),
            Manifest::EndpointSlice(slice) => view.delete_slice(&slice.id),
            Manifest::Namespace(namespace) => view.delete_namespace(&namespace.name),
            Manifest::Node(node) => view.delete_node(&node.name),
            Manifest::Route(route) => view.delete_route(&route.key()),
            Manifest::Grant(grant) => view.delete_grant(&(
                grant.0.metadata.namespace.clone(),
                grant.0.metadata.name.clone(),
            )),
            Manifest::Pod(pod) => view.delete_pod(&(pod.namespace.clone(), pod.name.clone())),
        };
    }
}

/// Something in a manifest file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestProblem {
    /// The file, as given to [`parse_manifests`].
    pub file: String,
    /// The object, e.g. `Service default/web`, when it is known.
    pub object: Option<ObjectRef>,
    /// What is wrong.
    pub message: String,
}

/// `file: object: message`, or `file: message` without an object.
impl fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What one file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The objects read, in file order.
    pub manifests: Vec<Manifest>,
    /// What could not be read.
    pub problems: Vec<ManifestProblem>,
}

/// Reads every object of one file's text.
pub fn parse_manifests(file: &str, text: &str) -> Parsed {
    let mut parser = Parser {
        file,
        manifests: Vec::new(),
        problems: Vec::new(),
    };
    for document in split_documents(text) {
        parser.document(&document);
    }
    Parsed {
        manifests: parser.manifests,
        problems: parser.problems,
    }
}

/// Builds a view from files given as (file name, text). An object defined
/// twice (same kind, namespace and name, in one file or two) is a problem;
/// the first definition wins.
pub fn build_view(files: impl IntoIterator<Item = (String, String)>) -> Built {
    let parsed: Vec<(String, Parsed)> = files
        .into_iter()
        .map(|(file, text)| {
            let parsed = parse_manifests(&file, &text);
            (file, parsed)
        })
        .collect();
    assemble(parsed.iter().map(|(file, parsed)| (file.as_str(), parsed)))
}

/// Builds a view from files already parsed, in the order given, as
/// [`build_view`] does.
pub fn assemble<'a>(files: impl IntoIterator<Item = (&'a str, &'a Parsed)>) -> Built {
    let mut view = ClusterView::new();
    let mut problems = Vec::new();
    let mut defined_in: BTreeMap<ObjectRef, Arc<str>> = BTreeMap::new();
    for (file, parsed) in files {
        let name: Arc<str> = file.into();
        problems.extend(parsed.problems.iter().cloned());
        for manifest in &parsed.manifests {
            match defined_in.entry(manifest.object()) {
                Entry::Occupied(first) => problems.push(ManifestProblem {
                    file: file.to_owned(),
                    object: Some(first.key().clone()),
                    message: format!(
                        "defined again; the first definition, in {}, is used",
                        first.get()
                    ),
                }),
                Entry::Vacant(slot) => {
                    slot.insert(Arc::clone(&name));
                    manifest.clone().apply_to(&mut view);
                }
            }
        }
    }
    Built {
        view,
        problems,
        origins: defined_in.into_iter().collect(),
    }
}

/// The file each object of a view comes from, so that later problems with
/// an object can name its file. A persistent map, as the view is: a source
/// hands a copy to every snapshot, and copies share what did not change.
/// The objects of one file share its name.
pub type Origins = imbl::OrdMap<ObjectRef, Arc<str>>;

/// Files assembled into one view and kept up to date file by file: what
/// [`assemble`] makes of the same files (the problems in another order),
/// at a cost that follows the objects of the file that changed.
#[derive(Debug, Default)]
pub struct Assembly {
    files: BTreeMap<Arc<str>, FileObjects>,
    /// The files defining each object, sorted; the first is used. Nearly
    /// always one: a vector of one is far smaller than a set of one (a
    /// whole B-tree node), and the objects of a file share its name.
    definers: BTreeMap<ObjectRef, Vec<Arc<str>>>,
    view: ClusterView,
    origins: Origins,
}

/// One file's objects.
#[derive(Debug)]
struct FileObjects {
    /// Each object's first definition in the file.
    objects: BTreeMap<ObjectRef, Manifest>,
    /// What could not be read.
    problems: Vec<ManifestProblem>,
    /// The object of each definition after an object's first in the file.
    again: Vec<ObjectRef>,
}

impl Assembly {
    /// An assembly of no file.
    pub fn new() -> Assembly {
        Assembly::default()
    }

    /// Sets what file `file` holds; `None` removes it.
    pub fn set(&mut self, file: &str, parsed: Option<&Parsed>) {
        let old = self.files.remove(file);
        let mut affected = BTreeSet::new();
        for object in old.iter().flat_map(|old| old.objects.keys()) {
            if let Some(files) = self.definers.get_mut(object) {
                files.retain(|definer| **definer != *file);
                if files.is_empty() {
                    self.definers.remove(object);
                }
            }
            affected.insert(object.clone());
        }
        if let Some(parsed) = parsed {
            let name: Arc<str> = file.into();
            let mut objects = BTreeMap::new();
            let mut again = Vec::new();
            for manifest in &parsed.manifests {
                match objects.entry(manifest.object()) {
                    Entry::Occupied(first) => again.push(first.key().clone()),
                    Entry::Vacant(slot) => {
                        let files = self
                            .definers
                            .entry(slot.key().clone())
                            .or_insert_with(|| Vec::with_capacity(1));
                        if let Err(at) = files.binary_search(&name) {
                            files.insert(at, Arc::clone(&name));
                        }
                        affected.insert(slot.key().clone());
                        // An object the file held already, unchanged, stays
                        // the one the view shares: a file read again would
                        // otherwise hold a second copy of each.
                        let previous = old
                            .as_ref()
                            .and_then(|old| old.objects.get(slot.key()))
                            .filter(|previous| *previous == manifest);
                        slot.insert(previous.unwrap_or(manifest).clone());
                    }
                }
            }
            let problems = parsed.problems.clone();
            let objects = FileObjects {
                // Rebuilt from its sorted entries: full B-tree nodes,
                // where filling it left them partly empty (see `pack`).
                objects: objects.into_iter().collect(),
                problems,
                again,
            };
            self.files.insert(name, objects);
        }
        for object in affected {
            let winner = self
                .definers
                .get(&object)
                .and_then(|files| files.first())
                .map(|winner| (winner, &self.files[winner].objects[&object]));
            match winner {
                Some((winner, manifest)) => {
                    manifest.clone().apply_to(&mut self.view);
                    self.origins.insert(object, winner.clone());
                }
                None => {
                    let old = old.as_ref().expect("an affected object comes from a file");
                    old.objects[&object].delete_from(&mut self.view);
                    self.origins.remove(&object);
                }
            }
        }
    }

    /// Rebuilds its index of objects with full B-tree nodes: one filled
    /// file by file keeps them partly empty (a split leaves six of eleven
    /// entries on one side and five on the other). Worth it after many
    /// files were set at once.
    pub fn pack(&mut self) {
        self.definers = std::mem::take(&mut self.definers).into_iter().collect();
    }

    /// The view of every file.
    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// The file each object of the view comes from.
    pub fn origins(&self) -> &Origins {
        &self.origins
    }

    /// What could not be used: each file's problems, in file order, then
    /// the objects defined in more than one file.
    pub fn problems(&self) -> Vec<ManifestProblem> {
        let again = |file: &str, object: &ObjectRef| {
            let first = self.definers[object].first().expect("defined");
            ManifestProblem {
                file: file.to_owned(),
                object: Some(object.clone()),
                message: format!("defined again; the first definition, in {first}, is used"),
            }
        };
        let own = self.files.iter().flat_map(|(name, file)| {
            let again_in_file = file.again.iter().map(move |object| again(name, object));
            file.problems.iter().cloned().chain(again_in_file)
        });
        let in_other_files = self
            .definers
            .iter()
            .filter(|(_, files)| files.len() > 1)
            .flat_map(|(object, files)| files.iter().skip(1).map(move |file| again(file, object)));
        own.chain(in_other_files).collect()
    }
}

/// What [`build_view`] made of a set of files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Built {
    /// Every object that loaded.
    pub view: ClusterView,
    /// Malformed documents, invalid or duplicate objects.
    pub problems: Vec<ManifestProblem>,
    /// The file each object comes from.
    pub origins: Origins,
}

/// One YAML document of a file.
struct Document<'a> {
    /// Line of the file where it starts, from 1.
    first_line: usize,
    /// Its text, starting with its `---` line if it has one.
    text: &'a str,
}

impl Document<'_> {
    /// The text preceded by empty lines, so that the line numbers in parser
    /// messages are those of the whole file. Only built to report an error.
    fn with_file_line_numbers(&self) -> String {
        "\n".repeat(self.first_line - 1) + self.text
    }
}

/// Splits a text on `---` lines, as kubectl does, so that a malformed
/// document does not hide the documents after it.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end();
        let is_separator = content == "---" || content.starts_with("--- ");
        if is_separator && offset > start {
            documents.push(Document {
                first_line,
                text: &text[start..offset],
            });
            start = offset;
            first_line = index + 1;
        }
        offset += line.len();
    }
    documents.push(Document {
        first_line,
        text: &text[start..],
    });
    documents
}

struct Parser<'a> {
    file: &'a str,
    manifests: Vec<Manifest>,
    problems: Vec<ManifestProblem>,
}

impl Parser<'_> {
    fn problem(&mut self, object: Option<ObjectRef>, message: String) {
        self.problems.push(ManifestProblem {
            file: self.file.to_string(),
            object,
            message,
        });
    }

    fn not_an_object(&mut self, document: Option<&Document<'_>>, why: &str) {
        let place = match document {
            Some(document) => format!("line {}", document.first_line),
            None => "list item".to_string(),
        };
        self.problem(None, format!("not a Kubernetes object ({place}): {why}"));
    }

    fn document(&mut self, document: &Document<'_>) {
        // The YAML scanner's time grows with the square of the nesting of
        // flow collections (200,000 nested `{a: ` take minutes), and the
        // parser refuses more than MAX_NESTING levels anyway: say so
        // before it starts.
        if let Some(line) = nested_deeper_than(document.text, MAX_NESTING) {
            let line = document.first_line + line - 1;
            self.problem(
                None,
                format!(
                    "malformed YAML: nested deeper than {MAX_NESTING} levels at line {line}; \
                     not parsed"
                ),
            );
            return;
        }
        match serde_yaml_ng::from_str::<Value>(document.text) {
            Ok(Value::Null) => {}
            Ok(value) => self.object(value, Some(document)),
            Err(error) => {
                // Parsing again at the document's place in the file gives
                // line numbers of the file.
                let error = serde_yaml_ng::from_str::<Value>(&document.with_file_line_numbers())
                    .err()
                    .unwrap_or(error);
                self.problem(None, format!("malformed YAML: {error}"));
            }
        }
    }

    /// One object: a document, or an item of a list (without `document`).
    fn object(&mut self, value: Value, document: Option<&Document<'_>>) {
        let Value::Mapping(mut fields) = value else {
            self.not_an_object(document, "expected a mapping with apiVersion and kind");
            return;
        };
        let api_version = text_field(&fields, "apiVersion");
        let kind = text_field(&fields, "kind");
        let manifest = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => self
                .convert::<core::Service, _>("Service", fields, document)
                .map(|service| Manifest::Service(Arc::new(service))),
            ("discovery.k8s.io/v1", "EndpointSlice") => self
                .convert::<discovery::EndpointSlice, _>("EndpointSlice", fields, document)
                .map(|slice| Manifest::EndpointSlice(Arc::new(slice))),
            ("v1", "Namespace") => self
                .convert::<core::Namespace, _>("Namespace", fields, document)
                .map(Manifest::Namespace),
            ("v1", "Node") => self
                .convert::<core::Node, _>("Node", fields, document)
                .map(|node| Manifest::Node(Box::new(node))),
            ("v1", "Pod") => self
                .convert::<core::Pod, _>("Pod", fields, document)
                .map(|pod| Manifest::Pod(Box::new(pod))),
            (GATEWAY_V1 | GATEWAY_V1BETA1, "HTTPRoute") => self
                .convert::<routes::HttpRoute, _>("HTTPRoute", fields, document)
                .map(|route| Manifest::Route(Box::new(route))),
            (GATEWAY_V1, "GRPCRoute") => self
                .convert::<routes::GrpcRoute, _>("GRPCRoute", fields, document)
                .map(|route| Manifest::Route(Box::new(route))),
            (GATEWAY_V1 | GATEWAY_V1BETA1, "ReferenceGrant") => self
                .convert::<routes::ReferenceGrant, _>("ReferenceGrant", fields, document)
                .map(|grant| Manifest::Grant(Box::new(grant))),
            (_, "") => {
                self.not_an_object(document, "no kind");
                None
            }
            ("", _) => {
                self.not_an_object(document, "no apiVersion");
                None
            }
            (_, list_kind) if list_kind.ends_with("List") => {
                // Items of a typed list (ServiceList) may leave out their kind.
                let item_kind = list_kind.strip_suffix("List").unwrap_or_default();
                if let Some(Value::Sequence(items)) = fields.remove("items") {
                    for item in items {
                        self.object(with_kind(item, item_kind, &api_version), None);
                    }
                }
                None
            }
            (api_version, kind) => {
                if let Some(why) = not_read_because(api_version, kind) {
                    self.not_an_object(document, &why);
                }
                None
            }
        };
        self.manifests.extend(manifest);
    }

    /// Deserializes the Kubernetes type of `kind` and converts it to the
    /// model; records the problem if either fails.
    fn convert<Wire, Domain>(
        &mut self,
        kind: &'static str,
        fields: Mapping,
        document: Option<&Document<'_>>,
    ) -> Option<Domain>
    where
        Wire: DeserializeOwned,
        Domain: FromObject<Wire>,
    {
        let object = object_of(kind, &fields);
        let wire = match serde_yaml_ng::from_value::<Wire>(Value::Mapping(fields)) {
            Ok(wire) => wire,
            Err(error) => {
                // Parsing the text again gives the field path and line.
                let message = document
                    .and_then(|d| {
                        serde_yaml_ng::from_str::<Wire>(&d.with_file_line_numbers()).err()
                    })
                    .unwrap_or(error);
                self.problem(Some(object), message.to_string());
                return None;
            }
        };
        match Domain::from_object(&wire) {
            Ok(domain) => Some(domain),
            Err(error) if error.is_ignored() => None,
            Err(error) => {
                self.problem(Some(error.object().clone()), error.reason());
                None
            }
        }
    }
}

/// The deepest nesting of `[` and `{` a document may have: the YAML
/// parser's own recursion limit.
const MAX_NESTING: usize = 128;

/// The line (from 1) where `text` opens more than `limit` nested flow
/// collections, if it does. Quoted scalars and comments do not count;
/// brackets inside plain or block scalars do, which only makes a document
/// with more than `limit` of them unclosed look deeper than it is.
fn nested_deeper_than(text: &str, limit: usize) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1);
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut previous = '\n';
    let mut characters = text.chars();
    while let Some(character) = characters.next() {
        if character == '\n' {
            line += 1;
            comment = false;
        } else if comment {
        } else if let Some(open) = quote {
            if character == open {
                quote = None;
            } else if character == '\\' && open == '"' {
                characters.next();
            }
        } else {
            match character {
                // A quote opens a scalar only where one starts (not `it's`).
                '\'' | '"' if previous.is_whitespace() || "[{,:-".contains(previous) => {
                    quote = Some(character);
                }
                '#' if previous.is_whitespace() => comment = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > limit {
                        return Some(line);
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        previous = character;
    }
    None
}

/// The kinds read, each with the apiVersions read.
const READ: [(&str, &[&str]); 8] = [
    ("Service", &["v1"]),
    ("EndpointSlice", &["discovery.k8s.io/v1"]),
    ("Namespace", &["v1"]),
    ("Node", &["v1"]),
    ("Pod", &["v1"]),
    ("HTTPRoute", &[GATEWAY_V1, GATEWAY_V1BETA1]),
    ("GRPCRoute", &[GATEWAY_V1]),
    ("ReferenceGrant", &[GATEWAY_V1, GATEWAY_V1BETA1]),
];

/// Why a document of a kind that is not read deserves a word: a kind read
/// under another version of its API group (an old
/// `discovery.k8s.io/v1beta1` slice), or a kind one or two letters away
/// from one read (`Servce`). Every other kind (Deployments, ConfigMaps,
/// Knative's Services, ...) is skipped without one.
fn not_read_because(api_version: &str, kind: &str) -> Option<String> {
    let same_group = |versions: &[&str]| {
        versions
            .iter()
            .any(|read| api_group(read) == api_group(api_version))
    };
    if let Some((read, versions)) = READ.iter().find(|(read, _)| *read == kind) {
        if !same_group(versions) {
            return None;
        }
        return Some(format!(
            "{read} of apiVersion {api_version} is not read (only {}); skipped",
            versions.join(", ")
        ));
    }
    // Within the group only (batch's Job is no Pod, RBAC's Role no Node),
    // and one letter for the short names.
    let near = READ
        .iter()
        .filter(|(_, versions)| same_group(versions))
        .map(|(read, _)| *read)
        .find(|read| {
            let allowed = if read.len() <= 4 { 1 } else { 2 };
            edit_distance(&read.to_lowercase(), &kind.to_lowercase()) <= allowed
        })?;
    Some(format!(
        "kind {kind} is not one zerohop reads (did you mean {near}?); skipped"
    ))
}

/// The group of an apiVersion: `discovery.k8s.io` of
/// `discovery.k8s.io/v1`, `""` (the core group) of `v1`.
fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// Levenshtein distance between two short words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

fn text_field(fields: &Mapping, key: &str) -> String {
    fields
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The object of `kind` named by the raw fields, for messages about an
/// object that does not even deserialize.
fn object_of(kind: &'static str, fields: &Mapping) -> ObjectRef {
    let metadata = fields.get("metadata");
    let field = |key: &str| {
        metadata
            .and_then(|metadata| metadata.get(key))
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
    };
    ObjectRef::new(
        kind,
        field("namespace").unwrap_or(DEFAULT_NAMESPACE),
        field("name"),
    )
}

/// Gives a list item the list's item kind and apiVersion when it has none.
fn with_kind(item: Value, kind: &str, api_version: &str) -> Value {
    let Value::Mapping(mut fields) = item else {
        return item;
    };
    if !kind.is_empty() && !fields.contains_key("kind") {
        fields.insert("kind".into(), kind.into());
        fields.insert("apiVersion".into(), api_version.into());
    }
    Value::Mapping(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerohop_planner::model::{ServiceId, SliceId};

    fn names(manifests: &[Manifest]) -> Vec<String> {
        manifests
            .iter()
            .map(|manifest| manifest.object().to_string())
            .collect()
    }

    fn messages(problems: &[ManifestProblem]) -> Vec<String> {
        problems.iter().map(ManifestProblem::to_string).collect()
    }

    const SERVICE_A: &str = "apiVersion: v1
kind: Service
metadata: {name: a, namespace: demo}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
";

    const SLICE_A: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: demo, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.2]}]
";

    #[test]
    fn reads_every_document_and_skips_empty_ones_and_unused_kinds() {
        let text = format!(
            "---\n# just a comment\n---\n{SERVICE_A}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: demo}}\n---\n---\n{SLICE_A}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\n---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: knative}}\n"
        );
        let Parsed {
            manifests,
            problems,
        } = parse_manifests("all.yaml", &text);
        assert_eq!(problems, vec![]);
        assert_eq!(
            names(&manifests),
            vec!["Service demo/a", "Namespace demo", "EndpointSlice demo/a-1"]
        );
        let Manifest::EndpointSlice(slice) = &manifests[2] else {
            panic!("not a slice");
        };
        assert_eq!(slice.id, SliceId::new("demo", "a-1"));
        assert_eq!(slice.service, ServiceId::new("demo", "a"));
    }

    #[test]
    fn reads_lists_including_typed_lists_without_item_kinds() {
        let text = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}\n- {}\n---\napiVersion: v1\nkind: ServiceList\nitems:\n- {{metadata: {{name: b}}, spec: {{clusterIP: 10.96.0.2}}}}\n",
            serde_yaml_ng::to_string(&serde_yaml_ng::from_str::<Value>(SERVICE_A).unwrap())
                .unwrap()
                .replace('\n', "\n  "),
            serde_yaml_ng::to_string(&serde_yaml_ng::from_str::<Value>(SLICE_A).unwrap())
                .unwrap()
                .replace('\n', "\n  "),
        );
        let Parsed {
            manifests,
            problems,
        } = parse_manifests("list.yaml", &text);
        assert_eq!(problems, vec![]);
        assert_eq!(
            names(&manifests),
            vec![
                "Service demo/a",
                "EndpointSlice demo/a-1",
                "Service default/b"
            ]
        );
    }

    #[test]
    fn reads_json() {
        let text = "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"Service\",\n\t\"metadata\": {\"name\": \"j\"},\n\t\"spec\": {\"clusterIP\": \"10.96.0.3\"}\n}\n";
        let Parsed {
            manifests,
            problems,
        } = parse_manifests("svc.json", text);
        assert_eq!(problems, vec![]);
        assert_eq!(names(&manifests), vec!["Service default/j"]);
    }

    #[test]
    fn malformed_yaml_names_the_file_and_line_and_other_documents_still_load() {
        let text = format!(
            "{SERVICE_A}---\napiVersion: v1\nkind: Service\nmetadata: [oops\n---\n{SLICE_A}"
        );
        let Parsed {
            manifests,
            problems,
        } = parse_manifests("broken.yaml", &text);
        assert_eq!(
            names(&manifests),
            vec!["Service demo/a", "EndpointSlice demo/a-1"]
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, "broken.yaml");
        assert_eq!(problems[0].object, None);
        let message = problems[0].to_string();
        assert!(
            message.starts_with("broken.yaml: malformed YAML: "),
            "{message}"
        );
        // The broken line is line 8 of the file, not of its document.
        assert!(message.contains("at line 8 column 11"), "{message}");
    }

    #[test]
    fn conversion_failure_names_file_and_object() {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}]}}\n---\n{SERVICE_A}"
        );
        let Parsed {
            manifests,
            problems,
        } = parse_manifests("services.yaml", &text);
        assert_eq!(names(&manifests), vec!["Service demo/a"]);
        assert_eq!(
            messages(&problems),
            vec!["services.yaml: Service default/web: no ClusterIP"]
        );
        assert_eq!(
            problems[0].object,
            Some(ObjectRef::new("Service", "default", Some("web")))
        );
    }

    #[test]
    fn deserialization_failure_names_file_object_field_and_line() {
        let text = format!(
            "{SERVICE_A}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.9\n  ports:\n  - port: eighty\n"
        );
        let Parsed {
            manifests,
            problems,
        } = parse_manifests("services.yaml", &text);
        assert_eq!(names(&manifests), vec!["Service demo/a"]);
        let message = messages(&problems).join("\n");
        assert!(
            message
                .starts_with("services.yaml: Service shop/web: spec.ports[0].port: invalid type"),
            "{message}"
        );
        assert!(message.ends_with("at line 12 column 11"), "{message}");
    }

    #[test]
    fn headless_and_external_name_services_are_skipped_silently() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {clusterIP: None}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec: {type: ExternalName, externalName: example.com}\n";
        assert_eq!(parse_manifests("s.yaml", text), Parsed::default());
    }

    #[test]
    fn documents_that_are_not_objects_are_problems() {
        let text = "just a string\n---\nreplicas: 3\n---\nkind: Service\nmetadata: {name: web}\n";
        let Parsed {
            manifests,
            problems,
        } = parse_manifests("values.yaml", text);
        assert!(manifests.is_empty());
        assert_eq!(
            messages(&problems),
            vec![
                "values.yaml: not a Kubernetes object (line 1): expected a mapping with apiVersion and kind",
                "values.yaml: not a Kubernetes object (line 2): no kind",
                "values.yaml: not a Kubernetes object (line 4): no apiVersion",
            ]
        );
    }

    #[test]
    fn a_separator_needs_its_own_line() {
        let documents = split_documents("a: 1\n---\nb: '---'\n--- \nc: 3\n----\n");
        let texts: Vec<(usize, &str)> = documents.iter().map(|d| (d.first_line, d.text)).collect();
        assert_eq!(
            texts,
            vec![
                (1, "a: 1\n"),
                (2, "---\nb: '---'\n"),
                (4, "--- \nc: 3\n----\n")
            ]
        );
    }

    #[test]
    fn build_view_keeps_the_first_of_duplicates_and_names_both_files() {
        let other_a = SERVICE_A.replace("10.96.0.1", "10.96.0.99");
        let Built { view, problems, .. } = build_view([
            ("a.yaml".to_string(), format!("{SERVICE_A}---\n{SLICE_A}")),
            ("b.yaml".to_string(), format!("{other_a}---\n{SLICE_A}")),
            ("c.yaml".to_string(), format!("{SERVICE_A}---\n{SERVICE_A}")),
        ]);
        assert_eq!(
            messages(&problems),
            vec![
                "b.yaml: Service demo/a: defined again; the first definition, in a.yaml, is used",
                "b.yaml: EndpointSlice demo/a-1: defined again; the first definition, in a.yaml, is used",
                "c.yaml: Service demo/a: defined again; the first definition, in a.yaml, is used",
                "c.yaml: Service demo/a: defined again; the first definition, in a.yaml, is used",
            ]
        );
        let service = &view.services()[&ServiceId::new("demo", "a")];
        assert_eq!(
            service.cluster_ips,
            vec!["10.96.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(view.slices().len(), 1);
    }

    #[test]
    fn build_view_reports_duplicates_within_one_file() {
        let Built { view, problems, .. } =
            build_view([("a.yaml".to_string(), format!("{SERVICE_A}---\n{SERVICE_A}"))]);
        assert_eq!(
            messages(&problems),
            vec!["a.yaml: Service demo/a: defined again; the first definition, in a.yaml, is used"]
        );
        assert_eq!(view.services().len(), 1);
    }

    #[test]
    fn build_view_keeps_going_past_bad_files() {
        let Built { view, problems, .. } = build_view([
            ("bad.yaml".to_string(), "kind: [".to_string()),
            ("good.yaml".to_string(), SERVICE_A.to_string()),
        ]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].file, "bad.yaml");
        assert_eq!(view.services().len(), 1);
    }

    #[test]
    fn deeply_nested_documents_are_refused_at_once_and_the_rest_loads() {
        let depth = 200_000;
        let deep = format!(
            "kind: Service\nspec: {}{}\n",
            "{a: ".repeat(depth),
            "}".repeat(depth)
        );
        let text = format!("{SERVICE_A}---\n{deep}---\n# [[[ in a comment\nx: '{{{{'\n");
        let started = std::time::Instant::now();
        let Parsed {
            manifests,
            problems,
        } = parse_manifests("deep.yaml", &text);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(names(&manifests).len(), 1);
        // After SERVICE_A: the `---` line, `kind: Service`, then `spec:`.
        let spec_line = SERVICE_A.lines().count() + 3;
        assert_eq!(
            messages(&problems),
            vec![
                format!(
                    "deep.yaml: malformed YAML: nested deeper than 128 levels at line \
                     {spec_line}; not parsed"
                ),
                // Brackets in comments and quotes are not nesting: the last
                // document is parsed, and has no kind.
                format!(
                    "deep.yaml: not a Kubernetes object (line {}): no kind",
                    spec_line + 1
                ),
            ],
        );
    }

    #[test]
    fn nesting_counts_flow_collections_outside_quotes_and_comments() {
        assert_eq!(nested_deeper_than("a: [[[]]]", 3), None);
        assert_eq!(nested_deeper_than("a: [[[[]]]]", 3), Some(1));
        assert_eq!(nested_deeper_than("a: 1\nb: {c: {d: {e: 1}}}", 2), Some(2));
        assert_eq!(
            nested_deeper_than("a: '[[[[[' # {{{{\nb: \"{\\\"{{{\"", 1),
            None
        );
        assert_eq!(nested_deeper_than("a: it's [[", 1), Some(1));
    }

    #[test]
    fn kinds_read_under_another_version_and_near_misses_are_reported() {
        let text =
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: old}\n\
                    ---\napiVersion: v1\nkind: Servce\nmetadata: {name: typo}\n\
                    ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: other}\n\
                    ---\napiVersion: batch/v1\nkind: Job\nmetadata: {name: other}\n\
                    ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: x}\n\
                    ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n";
        let Parsed {
            manifests,
            problems,
        } = parse_manifests("mixed.yaml", text);
        assert_eq!(manifests, vec![]);
        assert_eq!(
            messages(&problems),
            vec![
                "mixed.yaml: not a Kubernetes object (line 1): EndpointSlice of apiVersion \
                 discovery.k8s.io/v1beta1 is not read (only discovery.k8s.io/v1); skipped",
                "mixed.yaml: not a Kubernetes object (line 4): kind Servce is not one zerohop \
                 reads (did you mean Service?); skipped",
            ]
        );
        assert_eq!(edit_distance("service", "servce"), 1);
        assert_eq!(edit_distance("node", "pod"), 2);
        assert!(edit_distance("deployment", "endpointslice") > 2);
    }

    /// A file read again keeps the objects it held where they did not
    /// change, the ones the view shares: a cluster's directory read again
    /// file by file does not come to hold each object twice.
    #[test]
    fn a_file_read_again_shares_its_unchanged_objects_with_the_view() {
        let text = |ip: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec: {{clusterIP: 10.96.0.1, ports: [{{port: 80}}]}}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
            )
        };
        let mut assembly = Assembly::new();
        assembly.set(
            "s.yaml",
            Some(&parse_manifests("s.yaml", &text("10.96.0.2"))),
        );
        assembly.set(
            "s.yaml",
            Some(&parse_manifests("s.yaml", &text("10.96.0.3"))),
        );
        let held = &assembly.files["s.yaml"].objects;
        for (name, ip) in [("a", "10.96.0.1"), ("b", "10.96.0.3")] {
            let in_view = &assembly.view().services()[&ServiceId::new("default", name)];
            assert_eq!(
                in_view.cluster_ips,
                [ip.parse::<std::net::IpAddr>().unwrap()]
            );
            let Manifest::Service(in_file) =
                &held[&ObjectRef::new("Service", "default", Some(name))]
            else {
                panic!("a Service");
            };
            assert!(Arc::ptr_eq(in_view, in_file), "Service {name}: one copy");
        }
    }

    /// Over random edits of three files (objects moving between them,
    /// defined twice in one file or in two, files removed), an assembly
    /// kept up to date file by file is what [`assemble`] makes of the
    /// files as they are.
    #[test]
    fn an_assembly_kept_up_to_date_is_the_assembly_of_the_files() {
        let object = |n: u64| {
            match n % 6 {
            0 => "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
            1 => "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}\n",
            2 => "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}\n",
            3 => "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nendpoints: []\n",
            4 => "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {zerohop.io/fast-path: \"off\"}}\n",
            _ => "apiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec: {clusterIP: nonsense}\n",
        }
        };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut files: BTreeMap<String, Parsed> = BTreeMap::new();
        let mut assembly = Assembly::new();
        for step in 0..400 {
            let file = format!("{}.yaml", random() % 3);
            if random() % 5 == 0 {
                files.remove(&file);
                assembly.set(&file, None);
            } else {
                let text: Vec<&str> = (0..random() % 4).map(|_| object(random())).collect();
                let parsed = parse_manifests(&file, &text.join("---\n"));
                assembly.set(&file, Some(&parsed));
                files.insert(file, parsed);
            }
            let built = assemble(files.iter().map(|(file, parsed)| (file.as_str(), parsed)));
            assert_eq!(assembly.view(), &built.view, "step {step}");
            assert_eq!(assembly.origins(), &built.origins, "step {step}");
            let mut expected = messages(&built.problems);
            let mut problems = messages(&assembly.problems());
            expected.sort();
            problems.sort();
            assert_eq!(problems, expected, "step {step}");
        }
    }
}
