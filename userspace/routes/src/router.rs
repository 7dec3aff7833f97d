//! The waypoint's routing decision for one request: which route rule of the
//! Service the client dialled applies, and what to do (answer directly, or
//! forward to which endpoint, with which edits).
//!
//! Input is [`WaypointConfig`], the JSON file the agent writes for the
//! waypoint (see [`crate::contract`]); [`Router::new`] compiles it once per
//! change.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http::{header::HOST, HeaderMap, HeaderValue};

use crate::{
    contract::{Endpoint, UpstreamHttp, WaypointConfig},
    filters::{
        apply_header_modifier, host_without_port, merge_header_modifiers, rewrite_path, Location,
    },
    model::{HeaderModifier, RequestRedirect, Route, Seniority},
    request::RequestHead,
    retry::RetryPolicy,
    rules::{Action, Cluster, CompiledMatch, CompiledRule, ServicePort, Specificity},
    status::{assess, parent_ports, Claims, Inputs},
};

/// What to do with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The destination is no L7 Service the waypoint knows.
    UnknownService,
    /// Answer without forwarding: 404 (no rule matches), 500 (the rule's
    /// backends are invalid), 503 (no ready endpoint), a redirect, ...
    Respond(Response),
    /// Forward upstream (boxed: its header map makes it much the largest).
    Forward(Box<Forward>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Why, for logs and the response body.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// `namespace/name#rule` (the rule's index in the route), for logs;
    /// `(no route applies)` when the client has no route for the Service.
    /// Like `backend`, built once per config and shared, not formatted per
    /// request.
    pub route: Arc<str>,
    /// The backend Service the endpoint is of, `namespace/name`.
    pub backend: Arc<str>,
    /// The chosen endpoint.
    pub upstream: Upstream,
    /// Request headers after the filters.
    pub request_headers: HeaderMap,
    /// Path and query after URLRewrite.
    pub path_and_query: String,
    /// Host after URLRewrite, when rewritten (`request_headers` then
    /// carries it as `host` too).
    pub host: Option<String>,
    /// To apply to the upstream's response, with [`apply_header_modifier`].
    pub response_headers: HeaderModifier,
    /// Endpoints that get a copy; their answers are ignored.
    pub mirrors: Vec<Upstream>,
    /// HTTPRoute `timeouts.request`: the whole exchange, client side.
    pub request_timeout: Option<Duration>,
    /// HTTPRoute `timeouts.backendRequest`: one upstream attempt.
    pub backend_timeout: Option<Duration>,
    /// HTTPRoute `retry`: when and where to try again.
    pub retry: Option<Retry>,
}

/// A rule's retry policy, with the endpoints of the chosen backend Service
/// that a retry may go to.
#[derive(Debug, Clone)]
pub struct Retry {
    pub policy: RetryPolicy,
    backends: Arc<Backends>,
}

impl PartialEq for Retry {
    fn eq(&self, other: &Retry) -> bool {
        self.policy == other.policy && Arc::ptr_eq(&self.backends, &other.backends)
    }
}

impl Retry {
    /// The endpoint of the next attempt: one not `tried` yet (one on this
    /// node if there is one, as for the first attempt), else any again.
    pub fn next_upstream(
        &self,
        tried: &[SocketAddr],
        dice: &mut dyn FnMut(u32) -> u32,
    ) -> Option<Upstream> {
        let endpoints = &self.backends.endpoints;
        let untried: Vec<Endpoint> = (endpoints.iter())
            .filter(|e| !tried.contains(&e.addr))
            .copied()
            .collect();
        let endpoint = match untried.is_empty() {
            false => pick_endpoint(&untried, dice),
            true => pick_endpoint(endpoints, dice),
        };
        endpoint.map(|endpoint| self.backends.upstream(endpoint))
    }
}

/// An endpoint a request goes to, and the HTTP version it is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub http: UpstreamHttp,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// The ready endpoints of a Service port, and how they are spoken to.
#[derive(Debug, Default)]
struct Backends {
    /// `namespace/name` of their Service.
    service: Arc<str>,
    http: UpstreamHttp,
    endpoints: Vec<Endpoint>,
}

impl Backends {
    /// An endpoint on this node if there is one, else any.
    fn pick(&self, dice: &mut dyn FnMut(u32) -> u32) -> Option<Upstream> {
        pick_endpoint(&self.endpoints, dice).map(|endpoint| self.upstream(endpoint))
    }

    fn upstream(&self, endpoint: &Endpoint) -> Upstream {
        Upstream {
            addr: endpoint.addr,
            http: self.http,
        }
    }
}

/// The compiled config.
#[derive(Debug, Default)]
pub struct Router {
    /// ClusterIP:port of every L7 Service port.
    frontends: BTreeMap<SocketAddr, ServicePort>,
    /// The rules attached to each L7 Service port.
    tables: BTreeMap<ServicePort, RouteTable>,
    routes: Vec<CompiledRoute>,
    /// Shared with the forwards whose rule retries.
    endpoints: BTreeMap<ServicePort, Arc<Backends>>,
    clients: BTreeMap<IpAddr, String>,
}

/// The valid rules of one route.
#[derive(Debug)]
struct CompiledRoute {
    /// Breaks ties of equal precedence across routes.
    seniority: Seniority,
    rules: Vec<CompiledRule>,
    /// `namespace/name#rule` of each rule, in `rules`' order: built once
    /// here rather than formatted for every request.
    labels: Vec<Arc<str>>,
}

/// The routes attached to one Service port.
#[derive(Debug, Default)]
struct RouteTable {
    /// Every (route, rule, match), most specific first.
    entries: Vec<TableEntry>,
    attached: BTreeSet<usize>,
    has_producer_routes: bool,
    /// Namespaces with consumer routes for this Service.
    consumer_namespaces: BTreeSet<String>,
}

#[derive(Debug)]
struct TableEntry {
    /// Index in `Router::routes`, then in that route's `rules` and the
    /// rule's `matches`.
    route: usize,
    rule: usize,
    matched: usize,
    specificity: Specificity,
    /// `None` for a producer route, else the namespace of its clients.
    consumer_namespace: Option<String>,
}

/// What the rule's and backend's filters have made of the request so far.
struct Outgoing {
    headers: HeaderMap,
    path: String,
    query: Option<String>,
    host: Option<String>,
    response_headers: HeaderModifier,
    mirrors: Vec<Upstream>,
}

/// What the filters of the chosen rule need to know.
struct RuleContext<'a> {
    /// `namespace/name#rule`, for logs.
    label: &'a Arc<str>,
    matched: &'a CompiledMatch,
    destination: SocketAddr,
}

/// What a rule bounds its exchanges with.
#[derive(Debug, Clone, Copy, Default)]
struct ExchangePolicy {
    request_timeout: Option<Duration>,
    backend_timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
}

impl Router {
    /// Compiles a config; invalid routes and rules are handled as the spec
    /// prescribes (see the status module).
    pub fn new(config: &WaypointConfig) -> Router {
        let cluster = Inputs {
            services: &config.services,
            grants: &config.grants,
            require_reference_grants: config.require_reference_grants,
        }
        .cluster();
        let claims = Claims::new(&config.routes);
        let mut router = Router {
            clients: config
                .clients
                .iter()
                .map(|(ip, ns)| (ip.to_canonical(), ns.clone()))
                .collect(),
            ..Router::default()
        };
        let mut endpoints = BTreeMap::<_, Backends>::new();
        for set in &config.endpoints {
            let key = ServicePort {
                namespace: set.namespace.clone(),
                name: set.name.clone(),
                port: set.port,
            };
            let service = Arc::from(format!("{}/{}", key.namespace, key.name));
            let backends = endpoints.entry(key).or_default();
            backends.service = service;
            backends.http = set.http;
            backends.endpoints.extend(&set.endpoints);
        }
        router.endpoints = (endpoints.into_iter())
            .map(|(port, backends)| (port, Arc::new(backends)))
            .collect();
        for route in &config.routes {
            router.attach(route, &cluster, &claims);
        }
        let routes = &router.routes;
        for table in router.tables.values_mut() {
            table.entries.sort_by(|a, b| {
                let key = |e: &TableEntry| {
                    (
                        Reverse(e.specificity),
                        &routes[e.route].seniority,
                        e.rule,
                        e.matched,
                    )
                };
                key(a).cmp(&key(b))
            });
        }
        router
    }

    /// Adds the valid rules of `route` to the tables of the Service ports
    /// that accept it.
    fn attach(&mut self, route: &Route, cluster: &Cluster, claims: &Claims) {
        let (evaluation, rules) = assess(route, cluster, claims);
        let index = self.routes.len();
        for parent in evaluation.parents.iter().filter(|p| p.is_accepted()) {
            let service = cluster
                .service(&parent.namespace, &parent.name)
                .expect("an accepted parent exists");
            let consumer_namespace = parent.consumer.then(|| route.metadata().namespace.clone());
            for port in parent_ports(&parent.parent_ref, service) {
                let key = ServicePort {
                    namespace: parent.namespace.clone(),
                    name: parent.name.clone(),
                    port,
                };
                for ip in &service.cluster_ips {
                    self.frontends
                        .insert(SocketAddr::new(ip.to_canonical(), port), key.clone());
                }
                let table = self.tables.entry(key).or_default();
                if !table.attached.insert(index) {
                    continue;
                }
                match &consumer_namespace {
                    Some(namespace) => {
                        table.consumer_namespaces.insert(namespace.clone());
                    }
                    None => table.has_producer_routes = true,
                }
                for (rule_position, rule) in rules.iter().enumerate() {
                    for (matched, m) in rule.matches.iter().enumerate() {
                        table.entries.push(TableEntry {
                            route: index,
                            rule: rule_position,
                            matched,
                            specificity: m.specificity(),
                            consumer_namespace: consumer_namespace.clone(),
                        });
                    }
                }
            }
        }
        let key = route.key();
        let labels = rules
            .iter()
            .map(|rule| Arc::from(format!("{key}#{}", rule.index)))
            .collect();
        self.routes.push(CompiledRoute {
            seniority: route.seniority(),
            rules,
            labels,
        });
    }

    /// `namespace/name` of the L7 Service at a ClusterIP:port, if any.
    pub fn service_at(&self, destination: SocketAddr) -> Option<String> {
        self.frontend(destination)
            .map(|s| format!("{}/{}", s.namespace, s.name))
    }

    fn frontend(&self, destination: SocketAddr) -> Option<&ServicePort> {
        self.frontends.get(&SocketAddr::new(
            destination.ip().to_canonical(),
            destination.port(),
        ))
    }

    /// How the endpoints of the L7 Service port at `destination` are spoken
    /// to; [`UpstreamHttp::AsClient`] when it names no protocol, or there
    /// is no such port.
    pub fn port_http(&self, destination: SocketAddr) -> UpstreamHttp {
        self.frontend(destination)
            .and_then(|port| self.endpoints.get(port))
            .map_or(UpstreamHttp::AsClient, |backends| backends.http)
    }

    /// Where a connection to `destination` that does not speak HTTP goes,
    /// byte for byte: an endpoint of the Service port it dialled, one on
    /// this node if there is one, as the L4 path chooses. `None` when
    /// `destination` is no L7 Service port or it has no ready endpoint.
    pub fn passthrough(
        &self,
        destination: SocketAddr,
        dice: &mut dyn FnMut(u32) -> u32,
    ) -> Option<SocketAddr> {
        let backends = self.endpoints.get(self.frontend(destination)?)?;
        backends.pick(dice).map(|upstream| upstream.addr)
    }

    /// Decides what to do with a request sent by `client` to `destination`
    /// (the ClusterIP:port it dialled). `dice(n)` returns a uniform number
    /// in `0..n` (weighted backend choice); it is called only when there
    /// is a choice to make.
    ///
    /// Which routes apply (GEP-1294/GEP-1426): a client whose namespace has
    /// consumer routes for the Service gets only those; any other client
    /// (unknown ones included) gets the producer routes. A client with no
    /// route at all (the Service has only other namespaces' consumer routes)
    /// is forwarded to the Service as if there were no mesh. Among the
    /// applicable rules the most specific match wins (spec order: Exact
    /// path, longest prefix or regex, method, most headers, most query
    /// params; then the oldest route, `namespace/name`, rule and match
    /// order); none matches → 404 (GAMMA rejects requests that match no
    /// route).
    pub fn decide(
        &self,
        destination: SocketAddr,
        client: IpAddr,
        request: &RequestHead,
        dice: &mut dyn FnMut(u32) -> u32,
    ) -> Decision {
        self.decide_head(destination, client, Head::Borrowed(request), dice)
    }

    /// [`Router::decide`] for a request head the caller no longer needs:
    /// its headers, path and query become the forwarded request's without
    /// being copied.
    pub fn decide_owned(
        &self,
        destination: SocketAddr,
        client: IpAddr,
        request: RequestHead,
        dice: &mut dyn FnMut(u32) -> u32,
    ) -> Decision {
        self.decide_head(destination, client, Head::Owned(request), dice)
    }

    fn decide_head(
        &self,
        destination: SocketAddr,
        client: IpAddr,
        head: Head<'_>,
        dice: &mut dyn FnMut(u32) -> u32,
    ) -> Decision {
        let request = head.get();
        let Some(service) = self.frontend(destination) else {
            return Decision::UnknownService;
        };
        let table = &self.tables[service];
        let consumer_namespace = self
            .clients
            .get(&client.to_canonical())
            .filter(|namespace| table.consumer_namespaces.contains(*namespace));
        if consumer_namespace.is_none() && !table.has_producer_routes {
            let outgoing = head.into_outgoing();
            return self.forward(
                Arc::from("(no route applies)"),
                service,
                outgoing,
                ExchangePolicy::default(),
                dice,
            );
        }
        let chosen = table
            .entries
            .iter()
            .filter(|e| e.consumer_namespace.as_ref() == consumer_namespace)
            .find(|e| self.routes[e.route].rules[e.rule].matches[e.matched].matches(request));
        match chosen {
            Some(entry) => self.apply_rule(entry, destination, head.into_outgoing(), dice),
            None => respond(404, format!("no route rule of {service} matches")),
        }
    }

    fn apply_rule(
        &self,
        entry: &TableEntry,
        destination: SocketAddr,
        mut outgoing: Outgoing,
        dice: &mut dyn FnMut(u32) -> u32,
    ) -> Decision {
        let route = &self.routes[entry.route];
        let rule = &route.rules[entry.rule];
        let context = RuleContext {
            label: &route.labels[entry.rule],
            matched: &rule.matches[entry.matched],
            destination,
        };
        if let Some(response) = self.apply_filters(&rule.filters, &mut outgoing, &context, dice) {
            return Decision::Respond(response);
        }
        let label = context.label;
        // Spec (HTTPRouteRule backendRefs): requests that would go to an
        // invalid backend, or to no backend at all, get 500.
        if rule.backends.is_empty() {
            return respond(500, format!("{label} has no backendRefs"));
        }
        let Some(backend) = pick_weighted(&rule.backends, |b| b.weight, dice) else {
            return respond(500, format!("{label}: every backendRef has weight 0"));
        };
        let target = match &backend.target {
            Ok(target) => target,
            Err(problem) => {
                return respond(
                    500,
                    format!("{label}: invalid backendRef: {}", problem.message),
                )
            }
        };
        if let Some(response) = self.apply_filters(&backend.filters, &mut outgoing, &context, dice)
        {
            return Decision::Respond(response);
        }
        let policy = ExchangePolicy {
            request_timeout: rule.request_timeout,
            backend_timeout: rule.backend_timeout,
            retry: rule.retry,
        };
        self.forward(context.label.clone(), target, outgoing, policy, dice)
    }

    /// Applies filters in order (spec: "implementations SHOULD implement
    /// filters in the order they are specified"); a filter that answers
    /// the request itself (redirect, error) ends it.
    fn apply_filters(
        &self,
        filters: &[Action],
        outgoing: &mut Outgoing,
        context: &RuleContext,
        dice: &mut dyn FnMut(u32) -> u32,
    ) -> Option<Response> {
        for filter in filters {
            match filter {
                Action::RequestHeaders(modifier) => {
                    apply_header_modifier(&mut outgoing.headers, modifier);
                }
                Action::ResponseHeaders(modifier) => {
                    outgoing.response_headers =
                        merge_header_modifiers(&outgoing.response_headers, modifier);
                }
                Action::Rewrite(rewrite) => {
                    if let Some(modifier) = &rewrite.path {
                        outgoing.path =
                            rewrite_path(&outgoing.path, modifier, context.matched.prefix());
                    }
                    if let Some(host) = &rewrite.hostname {
                        outgoing.set_host(host);
                    }
                }
                Action::Mirror {
                    target: Ok(target),
                    share,
                } => {
                    if share.hits(dice) {
                        let picked = self.endpoints.get(target).and_then(|b| b.pick(dice));
                        outgoing.mirrors.extend(picked);
                    }
                }
                Action::Mirror { target: Err(_), .. } => {}
                Action::Redirect(redirect) => {
                    return Some(redirect_response(redirect, outgoing, context))
                }
                Action::Unresolvable(problem) => {
                    return Some(error(
                        500,
                        format!("{}: {}", context.label, problem.message),
                    ))
                }
            }
        }
        None
    }

    /// Forwards to a ready endpoint of `target`, a local one if there is
    /// one; 503 when there is none (spec: SHOULD for no ready endpoints).
    fn forward(
        &self,
        route: Arc<str>,
        target: &ServicePort,
        outgoing: Outgoing,
        policy: ExchangePolicy,
        dice: &mut dyn FnMut(u32) -> u32,
    ) -> Decision {
        let backends = self.endpoints.get(target);
        let Some((backends, upstream)) = backends.and_then(|b| Some((b, b.pick(dice)?))) else {
            return respond(
                503,
                format!("{route}: Service {target} has no ready endpoint"),
            );
        };
        let path_and_query = outgoing.path_and_query();
        Decision::Forward(Box::new(Forward {
            route,
            backend: backends.service.clone(),
            upstream,
            request_headers: outgoing.headers,
            path_and_query,
            host: outgoing.host,
            response_headers: outgoing.response_headers,
            mirrors: outgoing.mirrors,
            request_timeout: policy.request_timeout,
            backend_timeout: policy.backend_timeout,
            retry: policy.retry.map(|policy| Retry {
                policy,
                backends: Arc::clone(backends),
            }),
        }))
    }
}

/// The request head [`Router::decide_head`] starts from: borrowed (its
/// parts are copied for the edits) or owned (they are moved).
enum Head<'a> {
    Borrowed(&'a RequestHead),
    Owned(RequestHead),
}

impl Head<'_> {
    fn get(&self) -> &RequestHead {
        match self {
            Head::Borrowed(request) => request,
            Head::Owned(request) => request,
        }
    }

    /// The edits start from the request as received.
    fn into_outgoing(self) -> Outgoing {
        match self {
            Head::Borrowed(request) => Outgoing::new(
                request.headers.clone(),
                request.path.clone(),
                request.query.clone(),
            ),
            Head::Owned(request) => Outgoing::new(request.headers, request.path, request.query),
        }
    }
}

impl Outgoing {
    fn new(headers: HeaderMap, path: String, query: Option<String>) -> Outgoing {
        Outgoing {
            headers,
            path,
            query,
            host: None,
            response_headers: HeaderModifier::default(),
            mirrors: Vec::new(),
        }
    }

    /// URLRewrite hostname: both `Forward::host` and the `host` header.
    fn set_host(&mut self, host: &str) {
        self.headers.remove(HOST);
        if let Ok(value) = HeaderValue::from_str(host) {
            self.headers.insert(HOST, value);
        }
        self.host = Some(host.into());
    }

    fn host_header(&self) -> Option<&str> {
        let value = self.headers.get(HOST)?;
        std::str::from_utf8(value.as_bytes()).ok()
    }

    fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Spec (HTTPRequestRedirectFilter): scheme, hostname and path default to
/// the request's (the waypoint serves plain HTTP; the hostname is the Host
/// header's, without port); the port defaults to the scheme's well-known
/// port when the scheme is set, else to the listener port, here the
/// Service port the client dialled; the status code defaults to 302.
fn redirect_response(
    redirect: &RequestRedirect,
    outgoing: &Outgoing,
    context: &RuleContext,
) -> Response {
    let destination_host = match context.destination.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let host = redirect
        .hostname
        .as_deref()
        .or_else(|| outgoing.host_header().map(host_without_port))
        .unwrap_or(&destination_host);
    let port = match (redirect.port, redirect.scheme.as_deref()) {
        (Some(port), _) => port,
        (None, Some("https")) => 443,
        (None, Some(_)) => 80,
        (None, None) => context.destination.port(),
    };
    let path = match &redirect.path {
        Some(modifier) => rewrite_path(&outgoing.path, modifier, context.matched.prefix()),
        None => outgoing.path.clone(),
    };
    let location = Location {
        scheme: redirect.scheme.as_deref().unwrap_or("http"),
        host,
        port,
        path: &path,
        query: outgoing.query.as_deref(),
    };
    Response {
        status: redirect.status_code.unwrap_or(302),
        headers: vec![("location".into(), location.render())],
        reason: format!("redirected by {}", context.label),
    }
}

fn error(status: u16, reason: String) -> Response {
    Response {
        status,
        headers: Vec::new(),
        reason,
    }
}

fn respond(status: u16, reason: String) -> Decision {
    Decision::Respond(error(status, reason))
}

/// An endpoint on this node if there is one, else any.
fn pick_endpoint<'a>(
    endpoints: &'a [Endpoint],
    dice: &mut dyn FnMut(u32) -> u32,
) -> Option<&'a Endpoint> {
    // Weights of 1 for the local endpoints and 0 for the others choose
    // among the local ones without collecting them.
    if endpoints.iter().any(|e| e.local) {
        pick_weighted(endpoints, |e| u32::from(e.local), dice)
    } else {
        pick_weighted(endpoints, |_| 1, dice)
    }
}

/// An item with probability weight/total; `None` when every weight is 0.
/// Rolls the dice only when more than one item can be chosen.
fn pick_weighted<'a, T>(
    items: &'a [T],
    weight: impl Fn(&T) -> u32,
    dice: &mut dyn FnMut(u32) -> u32,
) -> Option<&'a T> {
    let total = items.iter().map(&weight).fold(0u32, u32::saturating_add);
    let choices = items.iter().filter(|item| weight(item) > 0).count();
    let mut roll = match choices {
        0 => return None,
        1 => 0,
        _ => dice(total).min(total - 1),
    };
    items.iter().find(|item| {
        let w = weight(item);
        if roll < w {
            return true;
        }
        roll -= w;
        false
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        model::{HttpRoute, ReferenceGrant},
        testing::*,
    };

    const WEB: &str = "10.0.0.10:80";
    const V1_POD: &str = "10.2.0.1:8080";
    const V2_POD: &str = "10.2.0.2:8080";
    const MIRROR_POD: &str = "10.2.0.4:80";
    const EXT_POD: &str = "10.2.0.5:80";
    /// Clients by namespace.
    const SHOP_CLIENT: &str = "10.1.0.1";
    const TEAM_A_CLIENT: &str = "10.1.0.2";
    const TEAM_B_CLIENT: &str = "10.1.0.3";
    const UNKNOWN_CLIENT: &str = "10.9.9.9";

    fn config<R: Into<Route>>(routes: Vec<R>, grants: Vec<ReferenceGrant>) -> WaypointConfig {
        WaypointConfig {
            services: vec![
                service("shop", "web", "10.0.0.10", &[80, 8080]),
                service("shop", "v1", "10.0.0.11", &[80]),
                service("shop", "v2", "10.0.0.12", &[80]),
                service("shop", "mirror", "10.0.0.13", &[80]),
                service("shop", "empty", "10.0.0.14", &[80]),
                service("other", "ext", "10.0.0.20", &[80]),
            ],
            routes: routes.into_iter().map(Into::into).collect(),
            grants,
            require_reference_grants: false,
            endpoints: vec![
                endpoints("shop", "web", 80, &[("10.2.0.3:80", true)]),
                endpoints("shop", "v1", 80, &[(V1_POD, true)]),
                endpoints("shop", "v2", 80, &[(V2_POD, false)]),
                endpoints("shop", "mirror", 80, &[(MIRROR_POD, false)]),
                endpoints("other", "ext", 80, &[(EXT_POD, false)]),
            ],
            clients: [
                (SHOP_CLIENT, "shop"),
                (TEAM_A_CLIENT, "team-a"),
                (TEAM_B_CLIENT, "team-b"),
            ]
            .into_iter()
            .map(|(client, ns)| (ip(client), ns.to_string()))
            .collect(),
        }
    }

    fn router<R: Into<Route>>(routes: Vec<R>) -> Router {
        Router::new(&config(routes, Vec::new()))
    }

    /// A producer route on shop/web.
    fn web_route(name: &str, rules: serde_json::Value) -> HttpRoute {
        service_route("shop", name, "web", rules)
    }

    fn to(service: &str) -> serde_json::Value {
        json!([{"name": service, "port": 80}])
    }

    fn no_dice(n: u32) -> u32 {
        panic!("dice({n}) rolled without a choice to make")
    }

    /// Also checks that [`Router::decide_owned`] decides alike.
    #[track_caller]
    fn decide(router: &Router, client: &str, request: &RequestHead) -> Decision {
        let decision = router.decide(addr(WEB), ip(client), request, &mut no_dice);
        let owned = router.decide_owned(addr(WEB), ip(client), request.clone(), &mut no_dice);
        assert_eq!(owned, decision, "decide_owned differs from decide");
        decision
    }

    fn get(router: &Router, path: &str) -> Decision {
        decide(
            router,
            SHOP_CLIENT,
            &request("GET", path, &[("host", "web.shop")]),
        )
    }

    #[track_caller]
    fn forward(decision: Decision) -> Forward {
        match decision {
            Decision::Forward(forward) => *forward,
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    #[track_caller]
    fn response(decision: Decision) -> Response {
        match decision {
            Decision::Respond(response) => response,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    #[track_caller]
    fn upstream(decision: Decision) -> SocketAddr {
        forward(decision).upstream.addr
    }

    #[track_caller]
    fn status(decision: Decision) -> u16 {
        response(decision).status
    }

    fn grpc_call(router: &Router, path: &str, headers: &[(&str, &str)]) -> Decision {
        let mut all = vec![("content-type", "application/grpc")];
        all.extend_from_slice(headers);
        decide(router, SHOP_CLIENT, &request("POST", path, &all))
    }

    #[test]
    fn grpc_routes_pick_rules_by_service_method_and_headers() {
        let router = router(vec![service_grpc_route(
            "shop",
            "grpc",
            "web",
            json!([
                {"matches": [{"method": {"service": "pkg.Echo"}}], "backendRefs": to("v1")},
                {"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}], "backendRefs": to("v2")},
                {"matches": [{"method": {"service": "pkg.Echo"}, "headers": [{"name": "x-canary", "value": "1"}]}],
                 "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-seen", "value": "canary"}]}},
                             {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-route", "value": "canary"}]}}],
                 "backendRefs": to("mirror")}
            ]),
        )]);
        assert_eq!(
            upstream(grpc_call(&router, "/pkg.Echo/Say", &[])),
            addr(V2_POD)
        );
        assert_eq!(
            upstream(grpc_call(&router, "/pkg.Echo/Other", &[])),
            addr(V1_POD)
        );
        let canary = forward(grpc_call(&router, "/pkg.Echo/Other", &[("x-canary", "1")]));
        assert_eq!(canary.upstream.addr, addr(MIRROR_POD));
        assert_eq!(canary.request_headers["x-seen"], "canary");
        assert_eq!(canary.response_headers.set[0].value, "canary");
        assert_eq!(canary.path_and_query, "/pkg.Echo/Other");
        assert_eq!(
            upstream(grpc_call(&router, "/pkg.Echo/Say", &[("x-canary", "1")])),
            addr(V2_POD),
            "service and method before headers"
        );
        assert_eq!(status(grpc_call(&router, "/pkg.Other/Say", &[])), 404);
    }

    #[test]
    fn grpc_route_weights_split_calls() {
        let router = router(vec![service_grpc_route(
            "shop",
            "grpc",
            "web",
            json!([{"backendRefs": [
                {"name": "v1", "port": 80, "weight": 70},
                {"name": "v2", "port": 80, "weight": 30},
                {"name": "mirror", "port": 80, "weight": 0}
            ]}]),
        )]);
        let with_roll = |roll| {
            upstream(router.decide(
                addr(WEB),
                ip(SHOP_CLIENT),
                &request("POST", "/pkg.Echo/Say", &[]),
                &mut |total| {
                    assert_eq!(total, 100);
                    roll
                },
            ))
        };
        assert_eq!(with_roll(0), addr(V1_POD));
        assert_eq!(with_roll(69), addr(V1_POD));
        assert_eq!(with_roll(70), addr(V2_POD));
        assert_eq!(with_roll(99), addr(V2_POD));
    }

    #[test]
    fn only_accepted_service_parents_are_l7_services() {
        let router = router(vec![
            web_route("web", json!([{"backendRefs": to("v1")}])),
            service_route(
                "shop",
                "only-port-80",
                "v1",
                json!([{"backendRefs": to("v1")}]),
            ),
            route(
                json!({"metadata": {"namespace": "shop", "name": "gateway-route"},
                "spec": {"parentRefs": [{"name": "v2"}], "rules": [{"backendRefs": to("v2")}]}}),
            ),
            service_route(
                "shop",
                "missing-parent",
                "nope",
                json!([{"backendRefs": to("v1")}]),
            ),
        ]);
        for (address, service, why) in [
            ("10.0.0.10:80", Some("shop/web"), "a Service parent"),
            ("10.0.0.10:8080", Some("shop/web"), "its other port"),
            ("[::ffff:10.0.0.10]:80", Some("shop/web"), "IPv4-mapped"),
            ("10.0.0.11:80", Some("shop/v1"), "another Service parent"),
            ("10.0.0.10:81", None, "not a port of the Service"),
            ("10.0.0.12:80", None, "a Gateway parent is not ours"),
            ("10.2.0.1:8080", None, "an endpoint, no ClusterIP"),
        ] {
            assert_eq!(
                router.service_at(addr(address)).as_deref(),
                service,
                "{address}: {why}"
            );
        }
        let request = request("GET", "/", &[]);
        assert_eq!(
            router.decide(
                addr("10.0.0.12:80"),
                ip(SHOP_CLIENT),
                &request,
                &mut no_dice
            ),
            Decision::UnknownService
        );
    }

    #[test]
    fn a_parent_port_limits_the_route_to_that_service_port() {
        let mut route = web_route("web", json!([{"backendRefs": to("v1")}]));
        route.spec.parent_refs[0].port = Some(8080);
        let router = router(vec![route]);
        assert_eq!(
            router.service_at(addr("10.0.0.10:8080")).as_deref(),
            Some("shop/web")
        );
        assert_eq!(router.service_at(addr("10.0.0.10:80")), None);
    }

    #[test]
    fn a_rule_without_matches_matches_everything() {
        let router = router(vec![web_route("web", json!([{"backendRefs": to("v1")}]))]);
        assert_eq!(upstream(get(&router, "/")), addr(V1_POD));
        assert_eq!(upstream(get(&router, "/any/path?x=1")), addr(V1_POD));
    }

    #[test]
    fn no_matching_rule_is_404() {
        let router = router(vec![web_route(
            "web",
            json!([{"matches": [{"path": {"value": "/api"}}], "backendRefs": to("v1")}]),
        )]);
        assert_eq!(upstream(get(&router, "/api/users")), addr(V1_POD));
        assert_eq!(status(get(&router, "/apiary")), 404);
        assert_eq!(status(get(&router, "/")), 404);
    }

    #[test]
    fn exact_path_beats_a_longer_prefix() {
        let router = router(vec![web_route(
            "web",
            json!([
                {"matches": [{"path": {"value": "/api/v1/users"}}], "backendRefs": to("v2")},
                {"matches": [{"path": {"type": "Exact", "value": "/api/v1/users"}}], "backendRefs": to("v1")},
            ]),
        )]);
        assert_eq!(upstream(get(&router, "/api/v1/users")), addr(V1_POD));
        assert_eq!(upstream(get(&router, "/api/v1/users/7")), addr(V2_POD));
    }

    #[test]
    fn the_longest_prefix_or_regex_wins() {
        let router = router(vec![web_route(
            "web",
            json!([
                {"matches": [{"path": {"value": "/"}}], "backendRefs": to("web")},
                {"matches": [{"path": {"value": "/api"}}], "backendRefs": to("v2")},
                {"matches": [{"path": {"value": "/api/v1"}}], "backendRefs": to("v1")},
                {"matches": [{"path": {"type": "RegularExpression", "value": "/api/v1/items/[0-9]+"}}], "backendRefs": to("mirror")},
            ]),
        )]);
        assert_eq!(upstream(get(&router, "/api/v1/users")), addr(V1_POD));
        assert_eq!(upstream(get(&router, "/api/v2")), addr(V2_POD));
        assert_eq!(upstream(get(&router, "/api/v1/items/12")), addr(MIRROR_POD));
        assert_eq!(upstream(get(&router, "/apiv1")), addr("10.2.0.3:80"));
    }

    #[test]
    fn then_method_then_more_headers_then_more_query_params() {
        let router = router(vec![web_route(
            "web",
            json!([
                {"matches": [{"path": {"value": "/p"}, "queryParams": [{"name": "q", "value": "1"}, {"name": "r", "value": "2"}]}], "backendRefs": to("mirror")},
                {"matches": [{"path": {"value": "/p"}, "headers": [{"name": "x-a", "value": "1"}]}], "backendRefs": to("v2")},
                {"matches": [{"path": {"value": "/p"}, "headers": [{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "1"}]}], "backendRefs": to("web")},
                {"matches": [{"path": {"value": "/p"}, "method": "POST"}], "backendRefs": to("v1")},
            ]),
        )]);
        let send = |method, path, headers: &[(&str, &str)]| {
            decide(&router, SHOP_CLIENT, &request(method, path, headers))
        };
        let all_headers = [("x-a", "1"), ("x-b", "1")];
        assert_eq!(
            upstream(send("POST", "/p?q=1&r=2", &all_headers)),
            addr(V1_POD),
            "method first"
        );
        assert_eq!(
            upstream(send("GET", "/p?q=1&r=2", &all_headers)),
            addr("10.2.0.3:80"),
            "two headers"
        );
        assert_eq!(
            upstream(send("GET", "/p?q=1&r=2", &[("x-a", "1")])),
            addr(V2_POD),
            "one header"
        );
        assert_eq!(
            upstream(send("GET", "/p?q=1&r=2", &[])),
            addr(MIRROR_POD),
            "query params"
        );
        assert_eq!(status(send("GET", "/p?q=1", &[])), 404);
    }

    #[test]
    fn ties_go_to_the_oldest_route_then_by_name_then_rule_order() {
        let rules = |backend: &str| json!([{"matches": [{"path": {"value": "/same"}}], "backendRefs": to(backend)}]);
        let mut newer = web_route("a-newer", rules("v2"));
        newer.metadata.creation_timestamp = Some("2024-06-01T00:00:00Z".into());
        let older = web_route("z-older", rules("v1"));
        assert_eq!(
            upstream(get(&router(vec![newer.clone(), older.clone()]), "/same")),
            addr(V1_POD)
        );

        let mut same_age = newer.clone();
        same_age.metadata.creation_timestamp = older.metadata.creation_timestamp.clone();
        assert_eq!(
            upstream(get(&router(vec![older.clone(), same_age]), "/same")),
            addr(V2_POD),
            "a-newer < z-older"
        );

        let two_rules = web_route(
            "web",
            json!([
                {"matches": [{"path": {"value": "/same"}}], "backendRefs": to("v2")},
                {"matches": [{"path": {"value": "/same"}}], "backendRefs": to("v1")},
            ]),
        );
        assert_eq!(
            upstream(get(&router(vec![two_rules]), "/same")),
            addr(V2_POD)
        );
    }

    #[test]
    fn any_one_match_of_a_rule_selects_it() {
        let router = router(vec![web_route(
            "web",
            json!([{"matches": [
            {"path": {"value": "/foo"}, "headers": [{"name": "version", "value": "v2"}]},
            {"path": {"value": "/v2/foo"}},
        ], "backendRefs": to("v2")}]),
        )]);
        let with_version = request("GET", "/foo", &[("version", "v2")]);
        assert_eq!(
            upstream(decide(&router, SHOP_CLIENT, &with_version)),
            addr(V2_POD)
        );
        assert_eq!(upstream(get(&router, "/v2/foo/bar")), addr(V2_POD));
        assert_eq!(status(get(&router, "/foo")), 404);
    }

    #[test]
    fn consumer_routes_apply_only_to_their_namespace_and_replace_producer_routes() {
        let producer = web_route("producer", json!([{"backendRefs": to("v1")}]));
        let consumer = route(json!({
            "metadata": {"namespace": "team-a", "name": "consumer"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "namespace": "shop", "name": "web"}],
                     "rules": [{"matches": [{"path": {"value": "/only"}}],
                                "backendRefs": [{"name": "v2", "namespace": "shop", "port": 80}]}]}
        }));
        let grants = vec![grant("shop", "team-a", None)];
        let router = Router::new(&config(vec![producer, consumer], grants));
        let send = |client, path| {
            router.decide(
                addr(WEB),
                ip(client),
                &request("GET", path, &[]),
                &mut no_dice,
            )
        };
        assert_eq!(upstream(send(TEAM_A_CLIENT, "/only")), addr(V2_POD));
        assert_eq!(
            status(send(TEAM_A_CLIENT, "/other")),
            404,
            "the producer route no longer applies to team-a"
        );
        assert_eq!(upstream(send(TEAM_B_CLIENT, "/only")), addr(V1_POD));
        assert_eq!(upstream(send(SHOP_CLIENT, "/only")), addr(V1_POD));
        assert_eq!(upstream(send(UNKNOWN_CLIENT, "/only")), addr(V1_POD));
    }

    #[test]
    fn without_a_route_for_the_client_requests_go_to_the_service() {
        let consumer = service_route(
            "team-a",
            "consumer",
            "shop/web",
            json!([{"matches": [{"path": {"value": "/only"}}],
            "backendRefs": [{"name": "v2", "namespace": "shop", "port": 80}]}]),
        );
        let router = Router::new(&config(vec![consumer], vec![grant("shop", "team-a", None)]));
        let forward = forward(router.decide(
            addr(WEB),
            ip(TEAM_B_CLIENT),
            &request("GET", "/x?y=1", &[]),
            &mut no_dice,
        ));
        assert_eq!(forward.upstream.addr, addr("10.2.0.3:80"));
        assert_eq!(forward.path_and_query, "/x?y=1");
        let team_a = |path| {
            router.decide(
                addr(WEB),
                ip(TEAM_A_CLIENT),
                &request("GET", path, &[]),
                &mut no_dice,
            )
        };
        assert_eq!(upstream(team_a("/only")), addr(V2_POD));
        assert_eq!(status(team_a("/x")), 404);
    }

    #[test]
    fn request_header_modifier_sets_adds_and_removes() {
        let router = router(vec![web_route(
            "web",
            json!([{
                "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-Env", "value": "prod"}],
                    "add": [{"name": "X-Trace", "value": "waypoint"}],
                    "remove": ["X-Debug"]}}],
                "backendRefs": [{"name": "v1", "port": 80, "filters": [{"type": "RequestHeaderModifier",
                    "requestHeaderModifier": {"add": [{"name": "x-backend", "value": "v1"}]}}]}]
            }]),
        )]);
        let request = request(
            "GET",
            "/",
            &[
                ("host", "web"),
                ("x-env", "dev"),
                ("x-trace", "client"),
                ("x-debug", "1"),
            ],
        );
        let forward = forward(decide(&router, SHOP_CLIENT, &request));
        let expected = header_map(&[
            ("host", "web"),
            ("x-env", "prod"),
            ("x-trace", "client"),
            ("x-trace", "waypoint"),
            ("x-backend", "v1"),
        ]);
        assert_eq!(
            header_pairs(&forward.request_headers),
            header_pairs(&expected)
        );
    }

    #[test]
    fn response_header_modifiers_of_rule_and_backend_are_returned() {
        let router = router(vec![web_route(
            "web",
            json!([{
                "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-rule", "value": "1"}]}}],
                "backendRefs": [{"name": "v1", "port": 80, "filters": [{"type": "ResponseHeaderModifier",
                    "responseHeaderModifier": {"remove": ["server"]}}]}]
            }]),
        )]);
        let modifier = forward(get(&router, "/")).response_headers;
        assert_eq!(modifier.set.len(), 1);
        assert_eq!(modifier.set[0].name, "x-rule");
        assert_eq!(modifier.remove, vec!["server".to_string()]);
    }

    #[test]
    fn redirect_defaults_to_302_the_host_header_and_the_service_port() {
        let router = router(vec![web_route(
            "web",
            json!([
                {"matches": [{"path": {"value": "/old"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
                {"matches": [{"path": {"value": "/secure"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]},
                {"matches": [{"path": {"value": "/elsewhere"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "other.example", "port": 8443,
                     "path": {"type": "ReplaceFullPath", "replaceFullPath": "/landing"}}}]},
            ]),
        )]);
        let redirect = |path: &str, port: u16| {
            let request = request("GET", path, &[("host", "web.shop:8080")]);
            let response = response(router.decide(
                SocketAddr::new(ip("10.0.0.10"), port),
                ip(SHOP_CLIENT),
                &request,
                &mut no_dice,
            ));
            assert_eq!(response.headers[0].0, "location");
            (response.status, response.headers[0].1.clone())
        };
        assert_eq!(
            redirect("/old/page?a=1", 8080),
            (302, "http://web.shop:8080/new/page?a=1".into())
        );
        assert_eq!(redirect("/old", 80), (302, "http://web.shop/new".into()));
        assert_eq!(
            redirect("/secure/x", 8080),
            (301, "https://web.shop/secure/x".into())
        );
        assert_eq!(
            redirect("/elsewhere/x", 80),
            (302, "http://other.example:8443/landing".into())
        );
    }

    #[test]
    fn redirect_without_host_header_uses_the_dialled_address() {
        let router = router(vec![web_route(
            "web",
            json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {}}]}]),
        )]);
        let response = response(decide(&router, SHOP_CLIENT, &request("GET", "/p", &[])));
        assert_eq!(
            response.headers,
            vec![("location".to_string(), "http://10.0.0.10/p".to_string())]
        );
    }

    #[test]
    fn url_rewrite_replaces_host_and_path_prefix_and_keeps_the_query() {
        let router = router(vec![web_route(
            "web",
            json!([
                {"matches": [{"path": {"value": "/api/v1"}}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "v1.internal",
                     "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
                 "backendRefs": to("v1")},
                {"matches": [{"path": {"value": "/legacy"}}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/index.html"}}}],
                 "backendRefs": to("v1")},
            ]),
        )]);
        let forward_of = |path| forward(get(&router, path));
        let rewritten = forward_of("/api/v1/users?page=2");
        assert_eq!(rewritten.path_and_query, "/users?page=2");
        assert_eq!(rewritten.host.as_deref(), Some("v1.internal"));
        assert_eq!(rewritten.request_headers["host"], "v1.internal");
        assert_eq!(forward_of("/api/v1").path_and_query, "/");
        let full = forward_of("/legacy/a/b?x");
        assert_eq!(
            (full.path_and_query.as_str(), full.host),
            ("/index.html?x", None)
        );
    }

    /// A RequestMirror filter to Service `mirror` with these share fields.
    fn mirror_of(share: serde_json::Value) -> serde_json::Value {
        let mut filter = json!({"backendRef": {"name": "mirror", "port": 80}});
        let fields = share.as_object().cloned().unwrap_or_default();
        filter.as_object_mut().unwrap().extend(fields);
        filter
    }

    #[test]
    fn a_mirror_percent_or_fraction_mirrors_that_share_of_requests() {
        let with = |share: serde_json::Value, roll: u32| {
            let filter = mirror_of(share);
            let router = router(vec![web_route(
                "web",
                json!([{"filters": [{"type": "RequestMirror", "requestMirror": filter}],
                        "backendRefs": to("v1")}]),
            )]);
            let mut rolls = Vec::new();
            let decision = router.decide(
                addr(WEB),
                ip(SHOP_CLIENT),
                &request("GET", "/", &[]),
                &mut |n| {
                    rolls.push(n);
                    roll
                },
            );
            (forward(decision).mirrors.len(), rolls)
        };
        assert_eq!(with(json!({"percent": 30}), 29), (1, vec![100]));
        assert_eq!(with(json!({"percent": 30}), 30), (0, vec![100]));
        assert_eq!(
            with(json!({"percent": 0}), 0),
            (0, vec![]),
            "no roll for none"
        );
        assert_eq!(
            with(json!({"percent": 100}), 0),
            (1, vec![]),
            "no roll for all"
        );
        assert_eq!(with(json!({}), 0), (1, vec![]), "every request by default");
        assert_eq!(
            with(json!({"fraction": {"numerator": 1, "denominator": 3}}), 0),
            (1, vec![3])
        );
        assert_eq!(
            with(json!({"fraction": {"numerator": 1, "denominator": 3}}), 1),
            (0, vec![3])
        );
        assert_eq!(
            with(json!({"fraction": {"numerator": 5}}), 4),
            (1, vec![100])
        );
    }

    #[test]
    fn an_impossible_mirror_share_drops_its_rule() {
        for mirror in [
            json!({"percent": 101}),
            json!({"percent": 10, "fraction": {"numerator": 1}}),
            json!({"fraction": {"numerator": 4, "denominator": 3}}),
            json!({"fraction": {"numerator": 0, "denominator": 0}}),
        ] {
            let filter = mirror_of(mirror.clone());
            let router = router(vec![web_route(
                "web",
                json!([{"matches": [{"path": {"value": "/m"}}],
                        "filters": [{"type": "RequestMirror", "requestMirror": filter}],
                        "backendRefs": to("v1")},
                       {"backendRefs": to("v2")}]),
            )]);
            assert_eq!(upstream(get(&router, "/m")), addr(V2_POD), "{mirror}");
        }
    }

    #[test]
    fn mirror_sends_a_copy_to_one_endpoint_and_skips_invalid_mirrors() {
        let router = router(vec![web_route(
            "web",
            json!([{"filters": [
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "mirror", "port": 80}}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "ext", "namespace": "other", "port": 80}}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "gone", "port": 80}}},
        ], "backendRefs": to("v1")}]),
        )]);
        let forward = forward(get(&router, "/"));
        assert_eq!(forward.upstream.addr, addr(V1_POD));
        assert_eq!(
            forward.mirrors.iter().map(|m| m.addr).collect::<Vec<_>>(),
            vec![addr(MIRROR_POD), addr(EXT_POD)],
            "the missing Service is not mirrored to"
        );
    }

    #[test]
    fn weights_split_requests_with_the_dice() {
        let router = router(vec![web_route(
            "web",
            json!([{"backendRefs": [
                {"name": "v1", "port": 80, "weight": 1},
                {"name": "ext", "namespace": "shop", "port": 80, "weight": 0},
                {"name": "v2", "port": 80, "weight": 3},
            ]}]),
        )]);
        let with_roll = |roll: u32| {
            let mut dice = |n: u32| {
                assert_eq!(n, 4, "total weight");
                roll
            };
            router.decide(
                addr(WEB),
                ip(SHOP_CLIENT),
                &request("GET", "/", &[]),
                &mut dice,
            )
        };
        assert_eq!(upstream(with_roll(0)), addr(V1_POD));
        for roll in 1..4 {
            assert_eq!(upstream(with_roll(roll)), addr(V2_POD));
        }
    }

    #[test]
    fn weight_defaults_to_one() {
        let router = router(vec![web_route(
            "web",
            json!([{"backendRefs": [{"name": "v1", "port": 80}, {"name": "v2", "port": 80}]}]),
        )]);
        let mut rolls = Vec::new();
        let mut dice = |n: u32| {
            rolls.push(n);
            1
        };
        assert_eq!(
            upstream(router.decide(
                addr(WEB),
                ip(SHOP_CLIENT),
                &request("GET", "/", &[]),
                &mut dice
            )),
            addr(V2_POD)
        );
        assert_eq!(rolls, vec![2]);
    }

    #[test]
    fn all_weights_zero_is_500() {
        let router = router(vec![web_route(
            "web",
            json!([{"backendRefs": [{"name": "v1", "port": 80, "weight": 0}]}]),
        )]);
        assert_eq!(status(get(&router, "/")), 500);
    }

    /// Each upstream, mirrors included, carries the HTTP version of its
    /// Service port.
    #[test]
    fn upstreams_carry_their_ports_http_version() {
        let mut config = config(
            vec![web_route(
                "web",
                json!([{
                    "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "mirror", "port": 80}}}],
                    "backendRefs": to("v1"),
                }]),
            )],
            Vec::new(),
        );
        let mut v1 = endpoints("shop", "v1", 80, &[(V1_POD, true)]);
        v1.http = UpstreamHttp::H2c;
        let mut mirror = endpoints("shop", "mirror", 80, &[(MIRROR_POD, true)]);
        mirror.http = UpstreamHttp::Http1;
        config.endpoints = vec![v1, mirror];
        let forward = forward(Router::new(&config).decide(
            addr(WEB),
            ip(SHOP_CLIENT),
            &request("GET", "/", &[]),
            &mut |_| 0,
        ));
        assert_eq!(
            forward.upstream,
            Upstream {
                addr: addr(V1_POD),
                http: UpstreamHttp::H2c
            }
        );
        assert_eq!(
            forward.mirrors,
            [Upstream {
                addr: addr(MIRROR_POD),
                http: UpstreamHttp::Http1
            }]
        );
    }

    #[test]
    fn a_connection_that_is_not_http_passes_to_an_endpoint_of_the_dialled_port() {
        let mut config = config(
            vec![web_route("web", json!([{"backendRefs": to("v1")}]))],
            Vec::new(),
        );
        let mut web = endpoints(
            "shop",
            "web",
            80,
            &[("10.3.0.1:8080", false), ("10.3.0.2:8080", true)],
        );
        web.http = UpstreamHttp::H2c;
        config.endpoints = vec![web, endpoints("shop", "v1", 80, &[(V1_POD, true)])];
        let router = Router::new(&config);
        let mut no_dice = |_| panic!("one local endpoint: no choice to make");
        assert_eq!(
            router.passthrough(addr(WEB), &mut no_dice),
            Some(addr("10.3.0.2:8080")),
            "the dialled Service's own endpoint on this node, not the route's backend"
        );
        assert_eq!(router.port_http(addr(WEB)), UpstreamHttp::H2c);
        let elsewhere = addr("10.96.9.9:80");
        assert_eq!(router.passthrough(elsewhere, &mut no_dice), None);
        assert_eq!(router.port_http(elsewhere), UpstreamHttp::AsClient);
    }

    #[test]
    fn local_endpoints_are_preferred() {
        let mut config = config(
            vec![web_route("web", json!([{"backendRefs": to("v1")}]))],
            Vec::new(),
        );
        config.endpoints = vec![endpoints(
            "shop",
            "v1",
            80,
            &[
                ("10.3.0.1:80", false),
                ("10.3.0.2:80", true),
                ("10.3.0.3:80", false),
                ("10.3.0.4:80", true),
            ],
        )];
        let router = Router::new(&config);
        let with_roll = |roll: u32| {
            let mut dice = |n: u32| {
                assert_eq!(n, 2, "chooses among the two local endpoints");
                roll
            };
            upstream(router.decide(
                addr(WEB),
                ip(SHOP_CLIENT),
                &request("GET", "/", &[]),
                &mut dice,
            ))
        };
        assert_eq!(with_roll(0), addr("10.3.0.2:80"));
        assert_eq!(with_roll(1), addr("10.3.0.4:80"));

        config.endpoints = vec![endpoints(
            "shop",
            "v1",
            80,
            &[("10.3.0.1:80", false), ("10.3.0.3:80", false)],
        )];
        let router = Router::new(&config);
        let mut dice = |n: u32| {
            assert_eq!(n, 2, "no local endpoint: chooses among all");
            1
        };
        assert_eq!(
            upstream(router.decide(
                addr(WEB),
                ip(SHOP_CLIENT),
                &request("GET", "/", &[]),
                &mut dice
            )),
            addr("10.3.0.3:80")
        );
    }

    #[test]
    fn a_backend_without_ready_endpoints_is_503() {
        let router = router(vec![web_route(
            "web",
            json!([{"backendRefs": to("empty")}]),
        )]);
        assert_eq!(status(get(&router, "/")), 503);
    }

    #[test]
    fn a_rule_without_backends_is_500() {
        let router = router(vec![web_route(
            "web",
            json!([{"matches": [{"path": {"value": "/"}}]}]),
        )]);
        assert_eq!(status(get(&router, "/")), 500);
    }

    #[test]
    fn invalid_backends_get_500_for_their_share() {
        let router = router(vec![web_route(
            "web",
            json!([{"backendRefs": [
                {"name": "v1", "port": 80},
                {"name": "gone", "port": 80},
            ]}]),
        )]);
        let with_roll = |roll| {
            router.decide(
                addr(WEB),
                ip(SHOP_CLIENT),
                &request("GET", "/", &[]),
                &mut |_| roll,
            )
        };
        assert_eq!(upstream(with_roll(0)), addr(V1_POD));
        let refused = response(with_roll(1));
        assert_eq!(refused.status, 500);
        assert!(
            refused.reason.contains("shop/gone does not exist"),
            "{}",
            refused.reason
        );
    }

    #[test]
    fn a_reference_grant_permits_the_cross_namespace_backend() {
        let route = web_route(
            "web",
            json!([{"backendRefs": [{"name": "ext", "namespace": "other", "port": 80}]}]),
        );
        let required = |grants| {
            let mut config = config(vec![route.clone()], grants);
            config.require_reference_grants = true;
            Router::new(&config)
        };
        let grant_for = |name| required(vec![grant("other", "shop", name)]);
        assert_eq!(upstream(get(&grant_for(None), "/")), addr(EXT_POD));
        assert_eq!(upstream(get(&grant_for(Some("ext")), "/")), addr(EXT_POD));
        assert_eq!(status(get(&grant_for(Some("another")), "/")), 500);
        let wrong_way = required(vec![grant("shop", "other", None)]);
        assert_eq!(status(get(&wrong_way, "/")), 500);
        assert_eq!(
            upstream(get(&router(vec![route]), "/")),
            addr(EXT_POD),
            "without required grants, none is needed (GEP-1294)"
        );
    }

    #[test]
    fn missing_services_ports_and_other_kinds_are_invalid_backends() {
        for backend in [
            json!({"name": "nope", "port": 80}),
            json!({"name": "v1"}),
            json!({"name": "v1", "port": 81}),
            json!({"name": "v1", "port": 80, "group": "example.com", "kind": "Bucket"}),
        ] {
            let router = router(vec![web_route(
                "web",
                json!([{"backendRefs": [backend.clone()]}]),
            )]);
            assert_eq!(status(get(&router, "/")), 500, "{backend}");
        }
    }

    #[test]
    fn an_unsupported_filter_drops_its_rule() {
        let unsupported = json!({"matches": [{"path": {"value": "/magic"}}],
            "filters": [{"type": "TeleportRequest"}], "backendRefs": to("v2")});
        let alone = router(vec![web_route("web", json!([unsupported]))]);
        assert_eq!(
            alone.service_at(addr(WEB)),
            None,
            "a route whose only rule is dropped is not accepted"
        );
        assert_eq!(get(&alone, "/magic"), Decision::UnknownService);

        let with_a_valid_rule = router(vec![web_route(
            "web",
            json!([unsupported, {"backendRefs": to("v1")}]),
        )]);
        assert_eq!(
            upstream(get(&with_a_valid_rule, "/magic")),
            addr(V1_POD),
            "the dropped rule matches nothing"
        );
    }

    #[test]
    fn a_regex_that_does_not_compile_drops_its_rule() {
        let router = router(vec![web_route(
            "web",
            json!([
                {"matches": [{"path": {"type": "RegularExpression", "value": "/items/([0-9]+"}}], "backendRefs": to("v2")},
                {"matches": [{"headers": [{"name": "x", "type": "RegularExpression", "value": "(?<bad"}]}], "backendRefs": to("v2")},
                {"backendRefs": to("v1")},
            ]),
        )]);
        assert_eq!(
            upstream(decide(
                &router,
                SHOP_CLIENT,
                &request("GET", "/items/1", &[("x", "(?<bad")])
            )),
            addr(V1_POD)
        );
    }

    #[test]
    fn an_extension_ref_filter_is_never_skipped() {
        let router = router(vec![web_route(
            "web",
            json!([
                {"matches": [{"path": {"value": "/auth"}}],
                 "filters": [{"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Auth", "name": "a"}}],
                 "backendRefs": to("v2")},
                {"backendRefs": to("v1")},
            ]),
        )]);
        assert_eq!(status(get(&router, "/auth/x")), 500);
        assert_eq!(upstream(get(&router, "/other")), addr(V1_POD));
    }

    #[test]
    fn timeouts_are_forwarded_and_zero_disables() {
        let router = router(vec![web_route(
            "web",
            json!([
                {"matches": [{"path": {"value": "/slow"}}], "timeouts": {"request": "1m30s", "backendRequest": "500ms"}, "backendRefs": to("v1")},
                {"matches": [{"path": {"value": "/forever"}}], "timeouts": {"request": "0s"}, "backendRefs": to("v1")},
                {"backendRefs": to("v1")},
            ]),
        )]);
        let slow = forward(get(&router, "/slow"));
        assert_eq!(
            (slow.request_timeout, slow.backend_timeout),
            (
                Some(Duration::from_secs(90)),
                Some(Duration::from_millis(500))
            )
        );
        let forever = forward(get(&router, "/forever"));
        assert_eq!(
            (forever.request_timeout, forever.backend_timeout),
            (None, None)
        );
        assert_eq!(forward(get(&router, "/")).request_timeout, None);
    }

    #[test]
    fn a_rule_with_retry_forwards_its_policy_and_one_without_none() {
        let router = router(vec![web_route(
            "web",
            json!([
                {"matches": [{"path": {"value": "/flaky"}}], "retry": {"codes": [503], "attempts": 3, "backoff": "50ms"}, "backendRefs": to("v1")},
                {"matches": [{"path": {"value": "/bad"}}], "retry": {"codes": [200]}, "backendRefs": to("v1")},
                {"backendRefs": to("v1")},
            ]),
        )]);
        let flaky = forward(get(&router, "/flaky"));
        let policy = flaky.retry.expect("a retry policy").policy;
        assert!(policy.retries_status(503) && !policy.retries_status(500));
        assert_eq!(
            (policy.attempts, policy.backoff),
            (3, Duration::from_millis(50))
        );
        assert_eq!(forward(get(&router, "/")).retry, None);
        // An invalid retry drops its rule: /bad falls to the catch-all.
        assert_eq!(&*forward(get(&router, "/bad")).route, "shop/web#2");
    }

    /// A retry goes to an endpoint not tried yet, on this node first, and
    /// to one already tried only when none is left.
    #[test]
    fn retries_go_to_endpoints_not_tried_yet() {
        let mut config = config(
            vec![web_route(
                "web",
                json!([{"retry": {"codes": [503], "attempts": 5}, "backendRefs": to("v1")}]),
            )],
            Vec::new(),
        );
        let (local_a, local_b, remote) = ("10.2.1.1:8080", "10.2.1.2:8080", "10.2.1.3:8080");
        config.endpoints = vec![endpoints(
            "shop",
            "v1",
            80,
            &[(remote, false), (local_a, true), (local_b, true)],
        )];
        let router = Router::new(&config);
        let decision = router.decide(
            addr(WEB),
            ip(SHOP_CLIENT),
            &request("GET", "/", &[]),
            &mut |_| 0,
        );
        let forward = forward(decision);
        assert_eq!(forward.upstream.addr, addr(local_a));
        let retry = forward.retry.unwrap();
        let mut tried = vec![forward.upstream.addr];
        for expected in [local_b, remote] {
            let next = retry.next_upstream(&tried, &mut no_dice).unwrap();
            assert_eq!(next.addr, addr(expected), "after {tried:?}");
            tried.push(next.addr);
        }
        // All tried: any again, on this node first.
        let again = retry.next_upstream(&tried, &mut |n| n - 1).unwrap();
        assert_eq!(again.addr, addr(local_b));
    }

    #[test]
    fn forward_names_the_route_rule_and_backend() {
        let router = router(vec![web_route(
            "web",
            json!([{"matches": [{"path": {"value": "/a"}}], "backendRefs": to("v2")}, {"backendRefs": to("v1")}]),
        )]);
        let forward = forward(get(&router, "/b"));
        assert_eq!(
            (&*forward.route, &*forward.backend),
            ("shop/web#1", "shop/v1")
        );
    }

    #[test]
    fn the_waypoint_config_is_json() {
        let config = config(
            vec![web_route("web", json!([{"backendRefs": to("v1")}]))],
            vec![grant("other", "shop", None)],
        );
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<WaypointConfig>(&text).unwrap(),
            config
        );
    }
}
