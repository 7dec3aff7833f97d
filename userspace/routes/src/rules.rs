//! Route rules compiled for the router, and the checks that decide which
//! rules are invalid and which references do not resolve. The status module
//! reports exactly what this module finds, so the status a user reads and
//! what the waypoint does never disagree.

use std::{fmt, time::Duration};

use regex::Regex;

use crate::{
    conditions::reason,
    contract::ServiceInfo,
    duration::parse_duration,
    filters::{has_path_prefix, REPLACE_FULL_PATH, REPLACE_PREFIX_MATCH},
    model::{
        is_core_group, BackendRef, Filter, GrpcMatch, GrpcRule, HeaderMatch, HeaderModifier, Match,
        ObjectRef, PathModifier, ReferenceGrant, RequestMirror, RequestRedirect, Route, RouteKind,
        Rule, UrlRewrite, GROUP, SERVICE_KIND,
    },
    request::RequestHead,
    retry::{compile_retry, RetryPolicy},
};

/// Why a rule is invalid or a reference does not resolve: a Gateway API
/// condition reason and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleProblem {
    pub reason: &'static str,
    pub message: String,
}

impl RuleProblem {
    fn new(reason: &'static str, message: impl Into<String>) -> RuleProblem {
        RuleProblem {
            reason,
            message: message.into(),
        }
    }
}

/// One port of one Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// What references resolve against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cluster<'a> {
    pub services: &'a [ServiceInfo],
    pub grants: &'a [ReferenceGrant],
    /// Backends in another namespace need a ReferenceGrant (see
    /// [`crate::contract::WaypointConfig::require_reference_grants`]).
    pub require_grants: bool,
}

/// The route a reference is made from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Referrer<'a> {
    pub kind: RouteKind,
    pub namespace: &'a str,
}

impl Cluster<'_> {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceInfo> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// A backendRef (or mirror backendRef) of a route. Spec (HTTPBackendRef,
    /// GRPCBackendRef): an unsupported kind is `InvalidKind`, a missing
    /// Service `BackendNotFound`; a Service reference needs a port
    /// (BackendObjectReference), so a missing or unknown port is treated as
    /// a missing backend. A Service in another namespace needs no
    /// ReferenceGrant (GEP-1294: mesh routes augment Services rather than
    /// expose them), unless the operator requires grants: then, without
    /// one, `RefNotPermitted`.
    pub fn resolve_backend(
        &self,
        from: Referrer,
        target: &ObjectRef,
    ) -> Result<ServicePort, RuleProblem> {
        let route_namespace = from.namespace;
        if !target.is_service() {
            return Err(RuleProblem::new(
                reason::INVALID_KIND,
                format!(
                    "backend {} {}: only core Services are supported",
                    target.group_kind(),
                    target.name
                ),
            ));
        }
        let namespace = target.namespace.as_deref().unwrap_or(route_namespace);
        let name = &target.name;
        if self.require_grants
            && namespace != route_namespace
            && !self.grant_allows(from, namespace, name)
        {
            let kind = from.kind.name();
            return Err(RuleProblem::new(
                reason::REF_NOT_PERMITTED,
                format!("backend Service {namespace}/{name}: no ReferenceGrant in {namespace} allows {kind}s from {route_namespace}"),
            ));
        }
        let Some(service) = self.service(namespace, name) else {
            return Err(RuleProblem::new(
                reason::BACKEND_NOT_FOUND,
                format!("backend Service {namespace}/{name} does not exist"),
            ));
        };
        let port = match target.port {
            None => {
                return Err(RuleProblem::new(
                    reason::BACKEND_NOT_FOUND,
                    format!(
                        "backend Service {namespace}/{name}: a Service backendRef needs a port"
                    ),
                ))
            }
            Some(port) if !service.ports.contains(&port) => {
                return Err(RuleProblem::new(
                    reason::BACKEND_NOT_FOUND,
                    format!("backend Service {namespace}/{name} has no port {port}"),
                ))
            }
            Some(port) => port,
        };
        Ok(ServicePort {
            namespace: namespace.into(),
            name: name.clone(),
            port,
        })
    }

    /// A ReferenceGrant in `to_namespace` lets routes of `from`'s kind and
    /// namespace refer to the Service `name` (or to every Service).
    fn grant_allows(&self, from: Referrer, to_namespace: &str, name: &str) -> bool {
        self.grants
            .iter()
            .filter(|g| g.metadata.namespace == to_namespace)
            .any(|grant| {
                let from = grant.spec.from.iter().any(|f| {
                    f.group == GROUP && f.kind == from.kind.name() && f.namespace == from.namespace
                });
                let to = grant.spec.to.iter().any(|t| {
                    is_core_group(&t.group)
                        && t.kind == SERVICE_KIND
                        && t.name.as_deref().is_none_or(|n| n == name)
                });
                from && to
            })
    }
}

/// Precedence of a match, most specific first once sorted in reverse.
/// HTTPRoutes and GRPCRoutes are never merged on one parent (the status
/// module accepts one kind), so the two kinds are never compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Specificity {
    /// Spec (HTTPRouteRule matches): Exact path, then the longest prefix
    /// (for zerohop also the longest regular expression, whose precedence
    /// the spec leaves to implementations), then a method match, then the
    /// most header matches, then the most query param matches.
    Http {
        exact_path: bool,
        path_chars: usize,
        method: bool,
        headers: usize,
        query_params: usize,
    },
    /// Spec (GRPCRouteRule matches): the most characters in the matching
    /// service, then in the method, then the most header matches.
    Grpc {
        service_chars: usize,
        method_chars: usize,
        headers: usize,
    },
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(expected) => value == expected,
            ValueMatcher::Regex(regex) => regex.is_match(value),
        }
    }
}

/// A header or query param match.
#[derive(Debug)]
struct NamedMatcher {
    name: String,
    value: ValueMatcher,
}

/// A match of either kind: a gRPC service and method match is a match
/// on the request path, `/service/method`.
#[derive(Debug)]
pub(crate) struct CompiledMatch {
    path: PathMatcher,
    method: Option<String>,
    headers: Vec<NamedMatcher>,
    query_params: Vec<NamedMatcher>,
    specificity: Specificity,
}

impl CompiledMatch {
    pub fn specificity(&self) -> Specificity {
        self.specificity
    }

    /// The PathPrefix value, for ReplacePrefixMatch.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatcher::Prefix(prefix) => Some(prefix),
            _ => None,
        }
    }

    pub fn matches(&self, request: &RequestHead) -> bool {
        let path = match &self.path {
            PathMatcher::Exact(expected) => request.path == *expected,
            PathMatcher::Prefix(prefix) => has_path_prefix(&request.path, prefix),
            PathMatcher::Regex(regex) => regex.is_match(&request.path),
        };
        path && self.method.as_ref().is_none_or(|m| *m == request.method)
            && self
                .headers
                .iter()
                .all(|h| header_value(request, &h.name).is_some_and(|v| h.value.matches(&v)))
            && self.query_params.iter().all(|q| {
                query_param(request.query.as_deref().unwrap_or(""), &q.name)
                    .is_some_and(|v| q.value.matches(&v))
            })
    }
}

/// A header's values joined with `,` (RFC 9110 field combination).
fn header_value(request: &RequestHead, name: &str) -> Option<String> {
    let values: Vec<_> = request
        .headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The first value of a query param (the spec's recommendation for repeated
/// params), percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (bytes[i], hex) {
            (b'%', Some(hex)) => {
                let hex = std::str::from_utf8(hex).expect("ASCII hex digits");
                decoded.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// A filter, checked and ready to apply.
#[derive(Debug)]
pub(crate) enum Action {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(RequestRedirect),
    Rewrite(UrlRewrite),
    /// An invalid mirror is dropped (spec: "not configure this backend"),
    /// the request itself still goes through.
    Mirror {
        target: Result<ServicePort, RuleProblem>,
        share: Share,
    },
    /// A filter that must not be skipped but cannot run: its requests get
    /// an error response.
    Unresolvable(RuleProblem),
}

impl Action {
    fn path_modifier(&self) -> Option<&PathModifier> {
        match self {
            Action::Redirect(redirect) => redirect.path.as_ref(),
            Action::Rewrite(rewrite) => rewrite.path.as_ref(),
            _ => None,
        }
    }

    fn problem(&self) -> Option<&RuleProblem> {
        match self {
            Action::Mirror {
                target: Err(problem),
                ..
            }
            | Action::Unresolvable(problem) => Some(problem),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct CompiledBackend {
    pub weight: u32,
    /// An invalid backend keeps its weight: its share of requests gets 500.
    pub target: Result<ServicePort, RuleProblem>,
    pub filters: Vec<Action>,
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    /// Position in the route's `rules`.
    pub index: usize,
    pub matches: Vec<CompiledMatch>,
    pub filters: Vec<Action>,
    pub backends: Vec<CompiledBackend>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    /// HTTPRoute `retry`; GRPCRoute has none.
    pub retry: Option<RetryPolicy>,
}

impl CompiledRule {
    /// References of this (valid) rule that do not resolve.
    pub fn ref_problems(&self) -> impl Iterator<Item = &RuleProblem> {
        let backend_problems = self.backends.iter().flat_map(|b| {
            b.target
                .as_ref()
                .err()
                .into_iter()
                .chain(b.filters.iter().filter_map(Action::problem))
        });
        self.filters
            .iter()
            .filter_map(Action::problem)
            .chain(backend_problems)
    }
}

/// The route's rules: the valid ones compiled, the invalid ones with why.
/// Spec (HTTPRouteRule filters, RouteConditionPartiallyInvalid): an invalid
/// rule is dropped; the route stays accepted while one rule is valid.
pub(crate) fn compile_rules(
    route: &Route,
    cluster: &Cluster,
) -> (Vec<CompiledRule>, Vec<(usize, RuleProblem)>) {
    let from = Referrer {
        kind: route.kind(),
        namespace: &route.metadata().namespace,
    };
    let compiled: Vec<Result<CompiledRule, RuleProblem>> = match route {
        Route::Http(route) => (route.spec.rules.iter().enumerate())
            .map(|(index, rule)| compile_rule(from, index, rule, cluster))
            .collect(),
        Route::Grpc(route) => (route.spec.rules.iter().enumerate())
            .map(|(index, rule)| compile_grpc_rule(from, index, rule, cluster))
            .collect(),
    };
    let mut valid = Vec::new();
    let mut dropped = Vec::new();
    for (index, rule) in compiled.into_iter().enumerate() {
        match rule {
            Ok(compiled) => valid.push(compiled),
            Err(problem) => dropped.push((index, problem)),
        }
    }
    (valid, dropped)
}

fn compile_rule(
    from: Referrer,
    index: usize,
    rule: &Rule,
    cluster: &Cluster,
) -> Result<CompiledRule, RuleProblem> {
    let matches = if rule.matches.is_empty() {
        vec![compile_match(&Match::default())?]
    } else {
        rule.matches
            .iter()
            .map(compile_match)
            .collect::<Result<_, _>>()?
    };
    let filters = compile_filters(from, &rule.filters, cluster)?;
    let backends = compile_backends(from, &rule.backend_refs, cluster)?;
    check_filter_combination(&filters, !backends.is_empty())?;
    for backend in &backends {
        check_filter_combination(&backend.filters, false)?;
    }
    let all_filters = filters
        .iter()
        .chain(backends.iter().flat_map(|b| &b.filters));
    check_prefix_replacement(rule, all_filters)?;
    let timeouts = rule.timeouts.clone().unwrap_or_default();
    let retry = rule.retry.as_ref().map(compile_retry).transpose();
    Ok(CompiledRule {
        index,
        matches,
        filters,
        backends,
        request_timeout: timeout(timeouts.request.as_deref())?,
        backend_timeout: timeout(timeouts.backend_request.as_deref())?,
        retry: retry.map_err(|message| RuleProblem::new(reason::UNSUPPORTED_VALUE, message))?,
    })
}

/// Spec (GRPCRouteRule): no matches match every gRPC request; the filter
/// types are HTTPRoute's header modifiers, RequestMirror and ExtensionRef;
/// there are no timeouts and no retries.
fn compile_grpc_rule(
    from: Referrer,
    index: usize,
    rule: &GrpcRule,
    cluster: &Cluster,
) -> Result<CompiledRule, RuleProblem> {
    let matches = if rule.matches.is_empty() {
        vec![compile_grpc_match(&GrpcMatch::default())?]
    } else {
        rule.matches
            .iter()
            .map(compile_grpc_match)
            .collect::<Result<_, _>>()?
    };
    let all_filters = rule
        .filters
        .iter()
        .chain(rule.backend_refs.iter().flat_map(|b| &b.filters));
    if let Some(filter) = all_filters
        .into_iter()
        .find(|f| !GRPC_FILTERS.contains(&f.kind.as_str()))
    {
        return Err(RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            format!("filter type {:?} is not a GRPCRoute filter", filter.kind),
        ));
    }
    Ok(CompiledRule {
        index,
        matches,
        filters: compile_filters(from, &rule.filters, cluster)?,
        backends: compile_backends(from, &rule.backend_refs, cluster)?,
        request_timeout: None,
        backend_timeout: None,
        retry: None,
    })
}

/// The filter types a GRPCRoute may have.
const GRPC_FILTERS: [&str; 4] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "ExtensionRef",
];

fn compile_backends(
    from: Referrer,
    backends: &[BackendRef],
    cluster: &Cluster,
) -> Result<Vec<CompiledBackend>, RuleProblem> {
    backends
        .iter()
        .map(|backend| {
            Ok(CompiledBackend {
                weight: backend.weight.unwrap_or(1),
                target: cluster.resolve_backend(from, &backend.target),
                filters: compile_filters(from, &backend.filters, cluster)?,
            })
        })
        .collect()
}

fn compile_filters(
    from: Referrer,
    filters: &[Filter],
    cluster: &Cluster,
) -> Result<Vec<Action>, RuleProblem> {
    filters
        .iter()
        .map(|f| compile_filter(from, f, cluster))
        .collect()
}

/// A timeout; `0s` disables it (spec, HTTPRouteTimeouts).
fn timeout(text: Option<&str>) -> Result<Option<Duration>, RuleProblem> {
    let Some(text) = text else { return Ok(None) };
    let duration = parse_duration(text).ok_or_else(|| {
        RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            format!("timeout {text:?} is no Gateway API duration"),
        )
    })?;
    Ok((!duration.is_zero()).then_some(duration))
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Spec: unknown enum values (match types, methods) set Accepted False with
/// `UnsupportedValue`; regular expressions use the `regex` crate syntax and
/// must match the whole value, so one that does not compile is unsupported
/// too.
fn compile_match(m: &Match) -> Result<CompiledMatch, RuleProblem> {
    let path = m.path.as_ref();
    let kind = path.and_then(|p| p.kind.as_deref()).unwrap_or("PathPrefix");
    let value = path
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    if kind != "RegularExpression" && !value.starts_with('/') {
        return Err(RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            format!("path {value:?} does not start with /"),
        ));
    }
    let specificity = Specificity::Http {
        exact_path: kind == "Exact",
        path_chars: value.chars().count(),
        method: m.method.is_some(),
        headers: count_names(&m.headers, str::to_ascii_lowercase),
        query_params: count_names(&m.query_params, str::to_owned),
    };
    let path = match kind {
        "Exact" => PathMatcher::Exact(value),
        "PathPrefix" => PathMatcher::Prefix(value),
        "RegularExpression" => PathMatcher::Regex(full_match_regex("path", &value)?),
        other => {
            return Err(RuleProblem::new(
                reason::UNSUPPORTED_VALUE,
                format!("path match type {other:?} is not supported"),
            ))
        }
    };
    if let Some(method) = m.method.as_deref().filter(|m| !METHODS.contains(m)) {
        return Err(RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            format!("method {method:?} is not supported"),
        ));
    }
    Ok(CompiledMatch {
        path,
        method: m.method.clone(),
        headers: compile_named_matches("header", &m.headers, str::to_ascii_lowercase)?,
        query_params: compile_named_matches("query param", &m.query_params, str::to_owned)?,
        specificity,
    })
}

/// A gRPC call is a request for the path `/service/method` (service with
/// its package: `pkg.Service`). Spec (GRPCMethodMatch): at least one of
/// service and method is set; an Exact one may not contain `/`; an unset
/// one matches anything. Regular expressions use the `regex` crate syntax
/// and match the whole service or method.
fn compile_grpc_match(m: &GrpcMatch) -> Result<CompiledMatch, RuleProblem> {
    let unsupported = |message: String| RuleProblem::new(reason::UNSUPPORTED_VALUE, message);
    let method_match = m.method.clone().unwrap_or_default();
    let service = method_match.service.filter(|s| !s.is_empty());
    let method = method_match.method.filter(|s| !s.is_empty());
    if m.method.is_some() && service.is_none() && method.is_none() {
        return Err(unsupported(
            "a gRPC method match needs a service or a method".into(),
        ));
    }
    let path = match method_match.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            if let Some(bad) = [&service, &method]
                .into_iter()
                .flatten()
                .find(|v| v.contains('/'))
            {
                return Err(unsupported(format!(
                    "Exact gRPC service or method {bad:?} contains /"
                )));
            }
            match (&service, &method) {
                (Some(service), Some(method)) => PathMatcher::Exact(format!("/{service}/{method}")),
                (Some(service), None) => PathMatcher::Prefix(format!("/{service}")),
                (None, Some(method)) => PathMatcher::Regex(full_match_regex(
                    "gRPC method",
                    &format!("/[^/]+/{}", regex::escape(method)),
                )?),
                (None, None) => PathMatcher::Prefix("/".into()),
            }
        }
        "RegularExpression" => {
            // Each checked alone, so that an error names the field.
            for (what, pattern) in [("gRPC service", &service), ("gRPC method", &method)] {
                if let Some(pattern) = pattern {
                    full_match_regex(what, pattern)?;
                }
            }
            let part = |p: &Option<String>| p.clone().unwrap_or_else(|| "[^/]+".into());
            PathMatcher::Regex(full_match_regex(
                "gRPC method",
                &format!("/(?:{})/(?:{})", part(&service), part(&method)),
            )?)
        }
        other => {
            return Err(unsupported(format!(
                "gRPC method match type {other:?} is not supported"
            )))
        }
    };
    let chars = |v: &Option<String>| v.as_deref().map_or(0, |v| v.chars().count());
    Ok(CompiledMatch {
        path,
        method: None,
        headers: compile_named_matches("header", &m.headers, str::to_ascii_lowercase)?,
        query_params: Vec::new(),
        specificity: Specificity::Grpc {
            service_chars: chars(&service),
            method_chars: chars(&method),
            headers: count_names(&m.headers, str::to_ascii_lowercase),
        },
    })
}

/// How many distinct names `matches` has (spec: only the first entry of a
/// name counts).
fn count_names(matches: &[HeaderMatch], normalize: fn(&str) -> String) -> usize {
    let names: std::collections::BTreeSet<String> =
        matches.iter().map(|m| normalize(&m.name)).collect();
    names.len()
}

/// Header or query param matches. Spec: only the first entry of a name
/// counts; header names are case-insensitive, query param names are not
/// (`normalize` says which).
fn compile_named_matches(
    what: &str,
    matches: &[HeaderMatch],
    normalize: fn(&str) -> String,
) -> Result<Vec<NamedMatcher>, RuleProblem> {
    let mut compiled: Vec<NamedMatcher> = Vec::new();
    for m in matches {
        let name = normalize(&m.name);
        if compiled.iter().any(|c| c.name == name) {
            continue;
        }
        let value = match m.kind.as_deref().unwrap_or("Exact") {
            "Exact" => ValueMatcher::Exact(m.value.clone()),
            "RegularExpression" => ValueMatcher::Regex(full_match_regex(what, &m.value)?),
            other => {
                return Err(RuleProblem::new(
                    reason::UNSUPPORTED_VALUE,
                    format!("{what} match type {other:?} is not supported"),
                ))
            }
        };
        compiled.push(NamedMatcher { name, value });
    }
    Ok(compiled)
}

fn full_match_regex(what: &str, pattern: &str) -> Result<Regex, RuleProblem> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|error| {
        let error = error.to_string().replace('\n', " ");
        RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            format!("{what} regular expression {pattern:?} does not compile: {error}"),
        )
    })
}

/// Spec (HTTPRouteFilter type): an unknown filter type sets Accepted False
/// with `UnsupportedValue`, and so do the types zerohop does not implement
/// (CORS, ExternalAuth, ...). An ExtensionRef names a custom filter zerohop
/// cannot resolve (it implements none): "the filter MUST NOT be skipped",
/// its requests get an error response, and ResolvedRefs says `InvalidKind`
/// (a reference to an unsupported group/kind).
fn compile_filter(
    from: Referrer,
    filter: &Filter,
    cluster: &Cluster,
) -> Result<Action, RuleProblem> {
    let missing = || {
        RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            format!("filter {} has no configuration", filter.kind),
        )
    };
    let action = match filter.kind.as_str() {
        "RequestHeaderModifier" => Action::RequestHeaders(filter.request_header_modifier.clone().ok_or_else(missing)?),
        "ResponseHeaderModifier" => Action::ResponseHeaders(filter.response_header_modifier.clone().ok_or_else(missing)?),
        "RequestRedirect" => Action::Redirect(checked_redirect(filter.request_redirect.as_ref().ok_or_else(missing)?)?),
        "URLRewrite" => {
            let rewrite = filter.url_rewrite.as_ref().ok_or_else(missing)?;
            rewrite.path.as_ref().map(check_path_modifier).transpose()?;
            Action::Rewrite(rewrite.clone())
        }
        "RequestMirror" => {
            let mirror = filter.request_mirror.as_ref().ok_or_else(missing)?;
            Action::Mirror {
                target: cluster.resolve_backend(from, &mirror.backend_ref),
                share: mirror_share(mirror)?,
            }
        }
        "ExtensionRef" => Action::Unresolvable(RuleProblem::new(
            reason::INVALID_KIND,
            "ExtensionRef filter: zerohop implements no extension filters, so requests this filter would process get 500",
        )),
        other => return Err(RuleProblem::new(reason::UNSUPPORTED_VALUE, format!("filter type {other:?} is not supported by zerohop"))),
    };
    Ok(action)
}

/// The share of requests a mirror gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    pub numerator: u32,
    pub denominator: u32,
}

impl Share {
    /// Whether this request is in the share: `roll(n)` is uniform in
    /// `0..n`, rolled only when the share is neither none nor all.
    pub fn hits(self, roll: &mut dyn FnMut(u32) -> u32) -> bool {
        match self.numerator {
            0 => false,
            n if n >= self.denominator => true,
            n => roll(self.denominator) < n,
        }
    }
}

/// Spec (HTTPRequestMirrorFilter): `percent` (0 to 100) or `fraction`
/// (numerator ≤ denominator, denominator ≥ 1, by default 100), not both;
/// neither mirrors every request.
fn mirror_share(mirror: &RequestMirror) -> Result<Share, RuleProblem> {
    let share = match (mirror.percent, mirror.fraction) {
        (None, None) => Some(Share {
            numerator: 1,
            denominator: 1,
        }),
        (Some(percent), None) => (percent <= 100).then_some(Share {
            numerator: percent,
            denominator: 100,
        }),
        (None, Some(fraction)) => {
            let denominator = fraction.denominator.unwrap_or(100);
            (denominator >= 1 && fraction.numerator <= denominator).then_some(Share {
                numerator: fraction.numerator,
                denominator,
            })
        }
        (Some(_), Some(_)) => None,
    };
    share.ok_or_else(|| {
        RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            "a mirror takes percent (0 to 100) or fraction (numerator <= denominator, denominator >= 1), not both",
        )
    })
}

fn checked_redirect(redirect: &RequestRedirect) -> Result<RequestRedirect, RuleProblem> {
    if let Some(scheme) = redirect
        .scheme
        .as_deref()
        .filter(|s| !["http", "https"].contains(s))
    {
        return Err(RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            format!("redirect scheme {scheme:?} is not supported"),
        ));
    }
    if let Some(status) = redirect
        .status_code
        .filter(|s| ![301, 302, 303, 307, 308].contains(s))
    {
        return Err(RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            format!("redirect status code {status} is not supported"),
        ));
    }
    redirect
        .path
        .as_ref()
        .map(check_path_modifier)
        .transpose()?;
    Ok(redirect.clone())
}

fn check_path_modifier(modifier: &PathModifier) -> Result<(), RuleProblem> {
    let valid = match modifier.kind.as_str() {
        REPLACE_FULL_PATH => modifier.replace_full_path.is_some(),
        REPLACE_PREFIX_MATCH => modifier.replace_prefix_match.is_some(),
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            format!("path modifier {:?} is incomplete or unknown", modifier.kind),
        ))
    }
}

/// Spec (HTTPRouteRule filters and its validations): RequestRedirect and
/// URLRewrite may not be combined, and a RequestRedirect rule has no
/// backendRefs; `IncompatibleFilters` is the spec's reason.
fn check_filter_combination(filters: &[Action], has_backends: bool) -> Result<(), RuleProblem> {
    let redirect = filters.iter().any(|a| matches!(a, Action::Redirect(_)));
    let rewrite = filters.iter().any(|a| matches!(a, Action::Rewrite(_)));
    if redirect && rewrite {
        return Err(RuleProblem::new(
            reason::INCOMPATIBLE_FILTERS,
            "RequestRedirect and URLRewrite filters cannot be combined",
        ));
    }
    if redirect && has_backends {
        return Err(RuleProblem::new(
            reason::INCOMPATIBLE_FILTERS,
            "a RequestRedirect rule cannot have backendRefs",
        ));
    }
    Ok(())
}

/// Spec (HTTPPathModifier): ReplacePrefixMatch is only compatible with a
/// PathPrefix match; the validations ask for exactly one; anything else
/// sets Accepted False.
fn check_prefix_replacement<'a>(
    rule: &Rule,
    mut filters: impl Iterator<Item = &'a Action>,
) -> Result<(), RuleProblem> {
    let replaces_prefix = filters.any(|a| {
        a.path_modifier()
            .is_some_and(|m| m.kind == REPLACE_PREFIX_MATCH)
    });
    let one_prefix_match = match rule.matches.as_slice() {
        [] => true, // the API default: one PathPrefix `/` match
        [only] => only
            .path
            .as_ref()
            .is_none_or(|p| p.kind.as_deref().unwrap_or("PathPrefix") == "PathPrefix"),
        _ => false,
    };
    if replaces_prefix && !one_prefix_match {
        return Err(RuleProblem::new(
            reason::UNSUPPORTED_VALUE,
            "ReplacePrefixMatch needs exactly one PathPrefix match",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PathMatch;

    fn request(
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> RequestHead {
        RequestHead {
            method: method.into(),
            path: path.into(),
            query: query.map(Into::into),
            headers: crate::testing::header_map(headers),
        }
    }

    fn get(path: &str) -> RequestHead {
        request("GET", path, None, &[])
    }

    fn compiled(json: serde_json::Value) -> Result<CompiledMatch, RuleProblem> {
        compile_match(&serde_json::from_value(json).unwrap())
    }

    #[test]
    fn a_match_without_path_matches_every_path() {
        let m = compile_match(&Match::default()).unwrap();
        assert!(m.matches(&get("/")) && m.matches(&get("/any/thing")));
    }

    #[test]
    fn exact_path_is_exact_and_case_sensitive() {
        let m = compiled(serde_json::json!({"path": {"type": "Exact", "value": "/abc"}})).unwrap();
        assert!(m.matches(&get("/abc")));
        for other in ["/abc/", "/Abc", "/abcd", "/abc/d"] {
            assert!(!m.matches(&get(other)), "{other}");
        }
    }

    #[test]
    fn prefix_path_matches_elements() {
        let m = compiled(serde_json::json!({"path": {"value": "/foo"}})).unwrap();
        assert!(m.matches(&get("/foo")) && m.matches(&get("/foo/")) && m.matches(&get("/foo/bar")));
        assert!(!m.matches(&get("/foobar")));
    }

    #[test]
    fn regex_path_must_match_the_whole_path() {
        let m = compiled(
            serde_json::json!({"path": {"type": "RegularExpression", "value": "/users/[0-9]+"}}),
        )
        .unwrap();
        assert!(m.matches(&get("/users/42")));
        assert!(!m.matches(&get("/users/42/edit")));
        assert!(!m.matches(&get("/api/users/42")));
    }

    #[test]
    fn headers_match_case_insensitive_names_and_exact_or_regex_values() {
        let m = compiled(serde_json::json!({"headers": [
            {"name": "X-Version", "value": "v2"},
            {"name": "x-version", "value": "ignored: only the first entry of a name counts"},
            {"name": "User-Agent", "type": "RegularExpression", "value": "curl/.*"}
        ]}))
        .unwrap();
        assert!(matches!(
            m.specificity(),
            Specificity::Http { headers: 2, .. }
        ));
        let with = |headers: &[(&str, &str)]| m.matches(&request("GET", "/", None, headers));
        assert!(with(&[("x-version", "v2"), ("user-agent", "curl/8.0")]));
        assert!(!with(&[("x-version", "V2"), ("user-agent", "curl/8.0")]));
        assert!(!with(&[
            ("x-version", "v2"),
            ("user-agent", "wget curl/8.0")
        ]));
        assert!(!with(&[("user-agent", "curl/8.0")]));
    }

    #[test]
    fn query_params_match_the_first_decoded_value() {
        let m = compiled(serde_json::json!({"queryParams": [
            {"name": "animal", "value": "whale shark"},
            {"name": "id", "type": "RegularExpression", "value": "[0-9]{3}"}
        ]}))
        .unwrap();
        let with = |query: &str| m.matches(&request("GET", "/", Some(query), &[]));
        assert!(with("animal=whale%20shark&id=123"));
        assert!(with("id=123&animal=whale%20shark&animal=dolphin"));
        assert!(!with("animal=dolphin&animal=whale%20shark&id=123"));
        assert!(!with("animal=whale%20shark&id=1234"));
        assert!(
            !with("Animal=whale%20shark&id=123"),
            "query param names are case-sensitive"
        );
        assert!(!m.matches(&get("/")));
    }

    #[test]
    fn method_must_be_equal() {
        let m = compiled(serde_json::json!({"method": "POST"})).unwrap();
        assert!(m.matches(&request("POST", "/x", None, &[])));
        assert!(!m.matches(&get("/x")));
    }

    #[test]
    fn specificity_orders_as_the_spec_lists() {
        let spec = |json| compiled(json).unwrap().specificity();
        let exact_short = spec(serde_json::json!({"path": {"type": "Exact", "value": "/a"}}));
        let long_prefix = spec(serde_json::json!({"path": {"value": "/a/very/long/prefix"}}));
        let prefix_with_method =
            spec(serde_json::json!({"path": {"value": "/a"}, "method": "GET"}));
        let prefix_with_headers = spec(serde_json::json!({"path": {"value": "/a"}, "headers": [
            {"name": "a", "value": "1"}, {"name": "b", "value": "2"}]}));
        let prefix_with_query = spec(
            serde_json::json!({"path": {"value": "/a"}, "queryParams": [{"name": "a", "value": "1"}]}),
        );
        assert!(exact_short > long_prefix);
        assert!(long_prefix > prefix_with_method);
        assert!(prefix_with_method > prefix_with_headers);
        assert!(prefix_with_headers > prefix_with_query);
    }

    #[test]
    fn bad_regexes_and_unknown_values_are_unsupported() {
        for json in [
            serde_json::json!({"path": {"type": "RegularExpression", "value": "/(unclosed"}}),
            serde_json::json!({"headers": [{"name": "a", "type": "RegularExpression", "value": "[z-a]"}]}),
            serde_json::json!({"queryParams": [{"name": "a", "type": "RegularExpression", "value": "*"}]}),
            serde_json::json!({"path": {"type": "Glob", "value": "/a*"}}),
            serde_json::json!({"path": {"value": "relative"}}),
            serde_json::json!({"method": "BREW"}),
        ] {
            let problem = compiled(json.clone()).unwrap_err();
            assert_eq!(problem.reason, reason::UNSUPPORTED_VALUE, "{json}");
        }
    }

    fn grpc(json: serde_json::Value) -> Result<CompiledMatch, RuleProblem> {
        compile_grpc_match(&serde_json::from_value(json).unwrap())
    }

    fn call(path: &str) -> RequestHead {
        request("POST", path, None, &[("content-type", "application/grpc")])
    }

    #[test]
    fn grpc_method_matches_match_the_request_path() {
        let cases = [
            (
                serde_json::json!({"method": {"service": "pkg.Echo", "method": "Say"}}),
                &["/pkg.Echo/Say"][..],
                &["/pkg.Echo/SayMore", "/pkg.Echo2/Say", "/pkg.Echo"][..],
            ),
            (
                serde_json::json!({"method": {"service": "pkg.Echo"}}),
                &["/pkg.Echo/Say", "/pkg.Echo/Other"][..],
                &["/pkg.Echo2/Say", "/other.Echo/Say"][..],
            ),
            (
                serde_json::json!({"method": {"method": "Say"}}),
                &["/pkg.Echo/Say", "/a.B/Say"][..],
                &["/pkg.Echo/Sayx", "/Say", "/a/b/Say"][..],
            ),
            (
                serde_json::json!({"method": {"type": "RegularExpression", "service": "pkg\\.Echo.*", "method": "S.y"}}),
                &["/pkg.Echo/Say", "/pkg.EchoV2/Soy"][..],
                &["/pkg.Echo/Says", "/xpkg.Echo/Say"][..],
            ),
            (
                serde_json::json!({"method": {"type": "RegularExpression", "method": "Get.*"}}),
                &["/a.B/GetUser"][..],
                &["/a.B/SetUser"][..],
            ),
            (serde_json::json!({}), &["/a.B/C", "/"][..], &[][..]),
        ];
        for (json, matching, other) in cases {
            let m = grpc(json.clone()).unwrap();
            for path in matching {
                assert!(m.matches(&call(path)), "{json} should match {path}");
            }
            for path in other {
                assert!(!m.matches(&call(path)), "{json} should not match {path}");
            }
        }
    }

    #[test]
    fn bad_grpc_method_matches_are_unsupported() {
        for json in [
            serde_json::json!({"method": {}}),
            serde_json::json!({"method": {"service": "", "method": ""}}),
            serde_json::json!({"method": {"service": "a/b", "method": "c"}}),
            serde_json::json!({"method": {"type": "Prefix", "service": "a"}}),
            serde_json::json!({"method": {"type": "RegularExpression", "method": "(open"}}),
            serde_json::json!({"method": {"service": "a"}, "headers": [{"type": "Glob", "name": "a", "value": "b"}]}),
        ] {
            let problem = grpc(json.clone()).unwrap_err();
            assert_eq!(problem.reason, reason::UNSUPPORTED_VALUE, "{json}");
        }
    }

    #[test]
    fn grpc_specificity_is_service_then_method_then_headers() {
        let spec = |json| grpc(json).unwrap().specificity();
        let long_service = spec(serde_json::json!({"method": {"service": "pkg.LongService"}}));
        let short_exact =
            spec(serde_json::json!({"method": {"service": "pkg.S", "method": "Method"}}));
        let short_service = spec(serde_json::json!({"method": {"service": "pkg.S"}}));
        let with_headers = spec(
            serde_json::json!({"method": {"service": "pkg.S"}, "headers": [
            {"name": "a", "value": "1"}, {"name": "A", "value": "ignored"}]}),
        );
        let method_only = spec(serde_json::json!({"method": {"method": "AVeryLongMethodName"}}));
        assert!(
            long_service > short_exact,
            "the longer service wins before the method counts"
        );
        assert!(short_exact > with_headers);
        assert!(with_headers > short_service);
        assert!(short_service > method_only);
        assert!(matches!(with_headers, Specificity::Grpc { headers: 1, .. }));
    }

    #[test]
    fn percent_decoding_leaves_invalid_escapes_alone() {
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn replace_prefix_match_needs_one_prefix_match() {
        let rule = |matches: Vec<Match>| Rule {
            matches,
            ..Default::default()
        };
        let prefix = |value: &str| Match {
            path: Some(PathMatch {
                kind: None,
                value: Some(value.into()),
            }),
            ..Default::default()
        };
        let exact = Match {
            path: Some(PathMatch {
                kind: Some("Exact".into()),
                value: Some("/a".into()),
            }),
            ..Default::default()
        };
        let rewrite = [Action::Rewrite(UrlRewrite {
            hostname: None,
            path: Some(PathModifier {
                kind: REPLACE_PREFIX_MATCH.into(),
                replace_full_path: None,
                replace_prefix_match: Some("/b".into()),
            }),
        })];
        assert!(check_prefix_replacement(&rule(vec![prefix("/a")]), rewrite.iter()).is_ok());
        assert!(check_prefix_replacement(&rule(vec![exact]), rewrite.iter()).is_err());
        assert!(
            check_prefix_replacement(&rule(vec![prefix("/a"), prefix("/b")]), rewrite.iter())
                .is_err()
        );
        assert!(check_prefix_replacement(&rule(vec![]), rewrite.iter()).is_ok());
    }
}
