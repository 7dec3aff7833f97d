//! Validation of HTTPRoutes and GRPCRoutes against the cluster, as the
//! per-parent status zerohop writes for their Service parents (Gateway
//! parents belong to other controllers and are left out).
//!
//! How zerohop reads the spec for routes it cannot fully implement:
//!
//! - a rule zerohop cannot implement (an unknown or unimplemented filter
//!   type, a regular expression that does not compile, an unknown match
//!   type or method, RequestRedirect with URLRewrite, ...) is dropped, and
//!   no request ever matches it; while another rule is valid the parent is
//!   Accepted with `PartiallyInvalid` ("Dropped Rule ..."), when none is the
//!   parent is not Accepted (`UnsupportedValue`, or `IncompatibleFilters`);
//! - a backendRef that does not resolve (missing Service or port, not a
//!   Service, another namespace without ReferenceGrant when grants are
//!   required) makes ResolvedRefs False; the route stays accepted and that
//!   backend's share of requests gets 500 (UNAVAILABLE for gRPC clients);
//!   an invalid mirror backend is not mirrored to;
//! - an ExtensionRef filter cannot be resolved (zerohop has none): the rule
//!   stays, ResolvedRefs is False (`InvalidKind`) and its requests get 500.
//!
//! - HTTPRoutes and GRPCRoutes are never merged: where both kinds attach to
//!   one Service from one namespace, the oldest route's kind is accepted
//!   and the other kind's routes are not.
//!
//! A parent whose Accepted is True makes that Service an L7 Service: its
//! ClusterIP ports (only the parentRef's port, when given) go through the
//! waypoint.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    conditions::{reason, Condition, StatusCondition, ACCEPTED, PARTIALLY_INVALID, RESOLVED_REFS},
    contract::ServiceInfo,
    model::{ParentRef, ReferenceGrant, Route, RouteKind, Seniority},
    rules::{compile_rules, Cluster, CompiledRule, RuleProblem},
};

/// The `controllerName` of zerohop's status entries.
pub const CONTROLLER_NAME: &str = "zerohop.io/waypoint";

/// A Gateway API `RouteParentStatus`: one entry of a route's
/// `status.parents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<StatusCondition>,
}

/// The route's status for one Service parentRef.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentStatus {
    /// As written in the route.
    pub parent_ref: ParentRef,
    /// The Service, namespace defaulted to the route's.
    pub namespace: String,
    pub name: String,
    /// The route is in another namespace than the Service: it applies only
    /// to clients in the route's namespace (GEP-1294 consumer route).
    pub consumer: bool,
    pub accepted: Condition,
    pub resolved_refs: Condition,
    /// Set only when True (spec): some rules were dropped.
    pub partially_invalid: Option<Condition>,
}

impl ParentStatus {
    pub fn is_accepted(&self) -> bool {
        self.accepted.status
    }

    /// In status order.
    pub fn conditions(&self) -> impl Iterator<Item = &Condition> {
        [&self.accepted, &self.resolved_refs]
            .into_iter()
            .chain(&self.partially_invalid)
    }
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEvaluation {
    /// `namespace/name` of the route.
    pub route: String,
    /// One entry per Service parentRef, in spec order.
    pub parents: Vec<ParentStatus>,
    /// Indexes of the rules dropped as invalid; the router skips them.
    pub dropped_rules: Vec<usize>,
    /// Everything wrong, one sentence each, for the agent's log (which
    /// names the route).
    pub problems: Vec<String>,
}

/// What routes are validated against: the cluster's Services and
/// ReferenceGrants, and whether grants are required for backends in
/// another namespace.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub services: &'a [ServiceInfo],
    pub grants: &'a [ReferenceGrant],
    pub require_reference_grants: bool,
}

impl<'a> Inputs<'a> {
    pub(crate) fn cluster(&self) -> Cluster<'a> {
        Cluster {
            services: self.services,
            grants: self.grants,
            require_grants: self.require_reference_grants,
        }
    }
}

/// Validates every route, each against the cluster and the others (an
/// HTTPRoute and a GRPCRoute may compete for a Service); one evaluation
/// per route, in order.
pub fn evaluate(routes: &[Route], inputs: Inputs) -> Vec<RouteEvaluation> {
    let claims = Claims::new(routes);
    let cluster = inputs.cluster();
    routes
        .iter()
        .map(|route| assess(route, &cluster, &claims).0)
        .collect()
}

/// Which route kind holds each Service parent, for the routes of each
/// namespace. Spec (GRPCRoute hostnames): where an HTTPRoute and a
/// GRPCRoute attach to one listener, exactly one of them is accepted, the
/// older (then the first by `namespace/name`); the two kinds are never
/// merged. For a Service parent zerohop applies this per route namespace
/// (the producer routes, and each namespace's consumer routes, are
/// separate sets, GEP-1294): the senior route's kind is accepted there,
/// and every route of the other kind is not.
#[derive(Debug, Default)]
pub(crate) struct Claims(BTreeMap<ClaimKey, (Seniority, RouteKind, String)>);

/// Parent Service namespace and name, route namespace.
type ClaimKey = (String, String, String);

impl Claims {
    pub fn new(routes: &[Route]) -> Claims {
        let mut claims: BTreeMap<ClaimKey, (Seniority, RouteKind, String)> = BTreeMap::new();
        for route in routes {
            for key in claim_keys(route) {
                let holder = (route.seniority(), route.kind(), route.key());
                match claims.get(&key) {
                    Some(current) if current.0 <= holder.0 => {}
                    _ => _ = claims.insert(key, holder),
                }
            }
        }
        Claims(claims)
    }

    /// Why `route` cannot have its parent `namespace/name`: a senior route
    /// of the other kind holds it.
    fn conflict(&self, route: &Route, namespace: &str, name: &str) -> Option<RuleProblem> {
        let route_namespace = &route.metadata().namespace;
        let key = (
            namespace.to_owned(),
            name.to_owned(),
            route_namespace.clone(),
        );
        let (_, kind, holder) = self.0.get(&key)?;
        (*kind != route.kind()).then(|| RuleProblem {
            reason: reason::CONFLICTED,
            message: format!(
                "Service {namespace}/{name} already has the older {} {holder} from namespace {route_namespace}: HTTPRoutes and GRPCRoutes are never merged, the oldest route's kind is accepted",
                kind.name()
            ),
        })
    }
}

fn claim_keys(route: &Route) -> impl Iterator<Item = ClaimKey> + '_ {
    let route_namespace = &route.metadata().namespace;
    route
        .parent_refs()
        .iter()
        .filter(|p| p.is_service())
        .map(move |p| {
            let namespace = p.namespace.as_ref().unwrap_or(route_namespace);
            (namespace.clone(), p.name.clone(), route_namespace.clone())
        })
}

/// [`evaluate`] of one route, plus its compiled valid rules for the router.
pub(crate) fn assess(
    route: &Route,
    cluster: &Cluster,
    claims: &Claims,
) -> (RouteEvaluation, Vec<CompiledRule>) {
    let route_namespace = &route.metadata().namespace;
    let (rules, dropped) = compile_rules(route, cluster);
    let ref_problems: Vec<&RuleProblem> =
        rules.iter().flat_map(CompiledRule::ref_problems).collect();
    let all_dropped = !dropped.is_empty() && rules.is_empty();
    let parents: Vec<ParentStatus> = route
        .parent_refs()
        .iter()
        .filter(|p| p.is_service())
        .map(|parent_ref| {
            let namespace = parent_ref
                .namespace
                .clone()
                .unwrap_or_else(|| route_namespace.clone());
            let consumer = namespace != *route_namespace;
            let refusal = parent_problem(parent_ref, &namespace, cluster)
                .or_else(|| claims.conflict(route, &namespace, &parent_ref.name));
            let accepted = match refusal {
                Some(problem) => Condition::new(ACCEPTED, false, problem.reason, problem.message),
                None if all_dropped => Condition::new(
                    ACCEPTED,
                    false,
                    dropped[0].1.reason,
                    dropped_message("All rules are invalid", &dropped),
                ),
                None if consumer => Condition::new(
                    ACCEPTED,
                    true,
                    reason::ACCEPTED,
                    format!(
                        "Accepted as a consumer route: applies to clients in namespace {route_namespace}"
                    ),
                ),
                None => Condition::new(ACCEPTED, true, reason::ACCEPTED, "Accepted"),
            };
            let partially_invalid = (accepted.status && !dropped.is_empty()).then(|| {
                Condition::new(
                    PARTIALLY_INVALID,
                    true,
                    dropped[0].1.reason,
                    dropped_message("Dropped Rule", &dropped),
                )
            });
            ParentStatus {
                parent_ref: parent_ref.clone(),
                name: parent_ref.name.clone(),
                namespace,
                consumer,
                accepted,
                resolved_refs: resolved_refs(&ref_problems),
                partially_invalid,
            }
        })
        .collect();
    let problems = problems(&parents, &dropped, &ref_problems);
    let evaluation = RouteEvaluation {
        route: route.key(),
        parents,
        dropped_rules: dropped.iter().map(|(index, _)| *index).collect(),
        problems,
    };
    (evaluation, rules)
}

/// Why the parent Service cannot take the route, if it cannot.
fn parent_problem(
    parent_ref: &ParentRef,
    namespace: &str,
    cluster: &Cluster,
) -> Option<RuleProblem> {
    let name = &parent_ref.name;
    let problem = |reason, message: String| Some(RuleProblem { reason, message });
    let Some(service) = cluster.service(namespace, name) else {
        return problem(
            reason::NO_MATCHING_PARENT,
            format!("Service {namespace}/{name} does not exist"),
        );
    };
    if service.cluster_ips.is_empty() {
        // Spec (ParentReference): Service parents are ClusterIP Services only.
        return problem(
            reason::NO_MATCHING_PARENT,
            format!("Service {namespace}/{name} has no ClusterIP"),
        );
    }
    if let Some(section) = &parent_ref.section_name {
        return problem(
            reason::UNSUPPORTED_VALUE,
            format!(
                "sectionName {section:?}: zerohop does not attach by Service port name, use port"
            ),
        );
    }
    match parent_ref.port {
        Some(port) if !service.ports.contains(&port) => problem(
            reason::NO_MATCHING_PARENT,
            format!("Service {namespace}/{name} has no TCP port {port}"),
        ),
        _ => None,
    }
}

fn dropped_message(lead: &str, dropped: &[(usize, RuleProblem)]) -> String {
    let rules: Vec<String> = dropped
        .iter()
        .map(|(index, p)| format!("rule {index}: {}", p.message))
        .collect();
    format!("{lead}: {}", rules.join("; "))
}

fn resolved_refs(problems: &[&RuleProblem]) -> Condition {
    match problems.first() {
        None => Condition::new(
            RESOLVED_REFS,
            true,
            reason::RESOLVED_REFS,
            "All references resolved",
        ),
        Some(first) => {
            let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
            Condition::new(RESOLVED_REFS, false, first.reason, messages.join("; "))
        }
    }
}

/// One sentence per problem; the caller names the route.
fn problems(
    parents: &[ParentStatus],
    dropped: &[(usize, RuleProblem)],
    refs: &[&RuleProblem],
) -> Vec<String> {
    let rejected = parents.iter().filter(|p| !p.is_accepted()).map(|p| {
        format!(
            "not accepted by Service {}/{}: {}",
            p.namespace, p.name, p.accepted.message
        )
    });
    let dropped = dropped
        .iter()
        .map(|(index, p)| format!("rule {index} dropped: {}", p.message));
    let refs = refs.iter().map(|p| p.message.clone());
    rejected.chain(dropped).chain(refs).collect()
}

/// Our `status.parents` entries. The caller gives the route's
/// `metadata.generation` and the transition time.
pub fn status_parents(
    evaluation: &RouteEvaluation,
    observed_generation: i64,
    last_transition_time: &str,
) -> Vec<RouteParentStatus> {
    evaluation
        .parents
        .iter()
        .map(|parent| RouteParentStatus {
            parent_ref: parent.parent_ref.clone(),
            controller_name: CONTROLLER_NAME.to_string(),
            conditions: parent
                .conditions()
                .map(|c| c.written(observed_generation, last_transition_time))
                .collect(),
        })
        .collect()
}

/// The Service ports a parentRef covers: its `port`, else every port.
pub(crate) fn parent_ports(parent_ref: &ParentRef, service: &ServiceInfo) -> Vec<u16> {
    match parent_ref.port {
        Some(port) => vec![port],
        None => service.ports.clone(),
    }
}

/// `(namespace, name, port)` of every Service port some route is accepted
/// for: what the agent sends through the waypoint.
pub fn l7_service_ports(routes: &[Route], inputs: Inputs) -> BTreeSet<(String, String, u16)> {
    let cluster = inputs.cluster();
    let mut ports = BTreeSet::new();
    for evaluation in evaluate(routes, inputs) {
        for parent in evaluation
            .parents
            .into_iter()
            .filter(ParentStatus::is_accepted)
        {
            let service = cluster
                .service(&parent.namespace, &parent.name)
                .expect("an accepted parent exists");
            for port in parent_ports(&parent.parent_ref, service) {
                ports.insert((parent.namespace.clone(), parent.name.clone(), port));
            }
        }
    }
    ports
}

/// `(namespace, name)` of every L7 Service.
pub fn l7_services(routes: &[Route], inputs: Inputs) -> BTreeSet<(String, String)> {
    l7_service_ports(routes, inputs)
        .into_iter()
        .map(|(namespace, name, _)| (namespace, name))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{model::HttpRoute, testing::*};

    fn services() -> Vec<ServiceInfo> {
        vec![
            service("shop", "web", "10.0.0.10", &[80, 8080]),
            service("shop", "v1", "10.0.0.11", &[80]),
            service("other", "ext", "10.0.0.20", &[80]),
        ]
    }

    fn evaluate_rules(rules: serde_json::Value) -> RouteEvaluation {
        evaluate_one(&service_route("shop", "web", "web", rules), &[])
    }

    /// One route alone, backends in other namespaces without grants.
    fn evaluate_one(route: &HttpRoute, grants: &[ReferenceGrant]) -> RouteEvaluation {
        evaluate_all(&[route.clone().into()], grants, false).remove(0)
    }

    fn evaluate_all(
        routes: &[Route],
        grants: &[ReferenceGrant],
        require_reference_grants: bool,
    ) -> Vec<RouteEvaluation> {
        let inputs = Inputs {
            services: &services(),
            grants,
            require_reference_grants,
        };
        evaluate(routes, inputs)
    }

    /// `(status, reason)` of a condition.
    fn verdict(condition: &Condition) -> (bool, &'static str) {
        (condition.status, condition.reason)
    }

    fn only_parent(evaluation: &RouteEvaluation) -> &ParentStatus {
        assert_eq!(evaluation.parents.len(), 1);
        &evaluation.parents[0]
    }

    #[test]
    fn a_valid_producer_route_is_accepted_with_resolved_refs() {
        let evaluation = evaluate_rules(json!([{"backendRefs": [{"name": "v1", "port": 80}]}]));
        let parent = only_parent(&evaluation);
        assert_eq!(
            (
                parent.namespace.as_str(),
                parent.name.as_str(),
                parent.consumer
            ),
            ("shop", "web", false)
        );
        assert_eq!(verdict(&parent.accepted), (true, reason::ACCEPTED));
        assert_eq!(
            verdict(&parent.resolved_refs),
            (true, reason::RESOLVED_REFS)
        );
        assert_eq!(parent.partially_invalid, None);
        assert!(evaluation.problems.is_empty(), "{:?}", evaluation.problems);
        assert_eq!(evaluation.route, "shop/web");
    }

    #[test]
    fn a_route_in_another_namespace_is_an_accepted_consumer_route() {
        let route = service_route(
            "team-a",
            "mine",
            "shop/web",
            json!([{"backendRefs": [{"name": "v1", "namespace": "shop", "port": 80}]}]),
        );
        let evaluation = evaluate_one(&route, &[grant("shop", "team-a", Some("v1"))]);
        let parent = only_parent(&evaluation);
        assert!(parent.consumer && parent.is_accepted());
        assert!(
            parent.accepted.message.contains("team-a"),
            "{}",
            parent.accepted.message
        );
        assert!(parent.resolved_refs.status);
    }

    #[test]
    fn gateway_parents_are_not_ours() {
        let route = route(
            json!({"metadata": {"namespace": "shop", "name": "r"}, "spec": {"parentRefs": [
            {"name": "gw"},
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw2"},
            {"kind": "Service", "name": "web"},
            {"group": "core", "kind": "Service", "name": "web", "port": 80},
        ], "rules": [{"backendRefs": [{"name": "v1", "port": 80}]}]}}),
        );
        let evaluation = evaluate_one(&route, &[]);
        let parent = only_parent(&evaluation);
        assert_eq!(
            parent.parent_ref.port,
            Some(80),
            "only the core Service parent counts"
        );
        assert!(parent.is_accepted());
    }

    #[test]
    fn a_missing_service_or_port_is_no_matching_parent() {
        let mut missing = service_route("shop", "r", "nope", json!([]));
        let evaluation = evaluate_one(&missing, &[]);
        assert_eq!(
            verdict(&only_parent(&evaluation).accepted),
            (false, reason::NO_MATCHING_PARENT)
        );
        assert!(!evaluation.problems.is_empty());

        missing.spec.parent_refs[0].name = "web".into();
        missing.spec.parent_refs[0].port = Some(81);
        let evaluation = evaluate_one(&missing, &[]);
        assert_eq!(
            verdict(&only_parent(&evaluation).accepted),
            (false, reason::NO_MATCHING_PARENT)
        );

        missing.spec.parent_refs[0].port = None;
        missing.spec.parent_refs[0].section_name = Some("http".into());
        let evaluation = evaluate_one(&missing, &[]);
        assert_eq!(
            verdict(&only_parent(&evaluation).accepted),
            (false, reason::UNSUPPORTED_VALUE)
        );
    }

    #[test]
    fn an_unknown_filter_type_is_unsupported_value() {
        let bad = json!({"matches": [{"path": {"value": "/x"}}], "filters": [{"type": "MadeUpFilter"}], "backendRefs": [{"name": "v1", "port": 80}]});
        let alone = evaluate_rules(json!([bad]));
        let parent = only_parent(&alone);
        assert_eq!(
            verdict(&parent.accepted),
            (false, reason::UNSUPPORTED_VALUE)
        );
        assert!(
            parent.accepted.message.contains("MadeUpFilter"),
            "{}",
            parent.accepted.message
        );
        assert_eq!(
            parent.partially_invalid, None,
            "never set on a route that is not accepted"
        );
        assert_eq!(alone.dropped_rules, vec![0]);

        let with_valid_rule =
            evaluate_rules(json!([{"backendRefs": [{"name": "v1", "port": 80}]}, bad]));
        let parent = only_parent(&with_valid_rule);
        assert_eq!(verdict(&parent.accepted), (true, reason::ACCEPTED));
        let partially = parent.partially_invalid.as_ref().expect("PartiallyInvalid");
        assert_eq!(verdict(partially), (true, reason::UNSUPPORTED_VALUE));
        assert!(
            partially.message.starts_with("Dropped Rule"),
            "{}",
            partially.message
        );
        assert_eq!(with_valid_rule.dropped_rules, vec![1]);
        assert!(
            with_valid_rule
                .problems
                .iter()
                .any(|p| p.contains("rule 1 dropped")),
            "{:?}",
            with_valid_rule.problems
        );
    }

    #[test]
    fn unimplemented_core_types_are_unsupported_too() {
        let evaluation = evaluate_rules(
            json!([{"filters": [{"type": "CORS", "cors": {"allowOrigins": ["*"]}}], "backendRefs": [{"name": "v1", "port": 80}]}]),
        );
        assert_eq!(
            verdict(&only_parent(&evaluation).accepted),
            (false, reason::UNSUPPORTED_VALUE)
        );
    }

    #[test]
    fn a_timeout_that_is_no_duration_is_unsupported_value() {
        let evaluation = evaluate_rules(
            json!([{"timeouts": {"request": "1.5s"}, "backendRefs": [{"name": "v1", "port": 80}]}]),
        );
        assert_eq!(
            verdict(&only_parent(&evaluation).accepted),
            (false, reason::UNSUPPORTED_VALUE)
        );
    }

    #[test]
    fn a_regex_that_does_not_compile_is_unsupported_value() {
        for matches in [
            json!([{"path": {"type": "RegularExpression", "value": "/a/(b"}}]),
            json!([{"headers": [{"name": "x", "type": "RegularExpression", "value": "a{2,1}"}]}]),
            json!([{"queryParams": [{"name": "q", "type": "RegularExpression", "value": "+"}]}]),
        ] {
            let evaluation = evaluate_rules(
                json!([{"matches": matches, "backendRefs": [{"name": "v1", "port": 80}]}]),
            );
            let parent = only_parent(&evaluation);
            assert_eq!(
                verdict(&parent.accepted),
                (false, reason::UNSUPPORTED_VALUE),
                "{matches}"
            );
            assert!(
                parent.accepted.message.contains("does not compile"),
                "{}",
                parent.accepted.message
            );
        }
    }

    #[test]
    fn redirect_with_rewrite_is_incompatible_filters() {
        let evaluation = evaluate_rules(json!([{"filters": [
            {"type": "RequestRedirect", "requestRedirect": {"hostname": "a.example"}},
            {"type": "URLRewrite", "urlRewrite": {"hostname": "b.example"}},
        ]}]));
        assert_eq!(
            verdict(&only_parent(&evaluation).accepted),
            (false, reason::INCOMPATIBLE_FILTERS)
        );
    }

    #[test]
    fn http_and_grpc_routes_on_one_service_are_never_merged() {
        let aged = |kind: RouteKind, name: &str, created: &str, namespace: &str| {
            let rules = json!([{"backendRefs": [{"name": "v1", "namespace": "shop", "port": 80}]}]);
            let mut route: Route = match kind {
                RouteKind::Http => service_route(namespace, name, "shop/web", rules).into(),
                RouteKind::Grpc => service_grpc_route(namespace, name, "shop/web", rules).into(),
            };
            route.metadata_mut().creation_timestamp = Some(created.into());
            route
        };
        let http = |name, created, namespace| aged(RouteKind::Http, name, created, namespace);
        let grpc = |name, created, namespace| aged(RouteKind::Grpc, name, created, namespace);
        let routes = [
            http("old-http", "2024-01-01T00:00:00Z", "shop"),
            grpc("grpc", "2024-02-01T00:00:00Z", "shop"),
            http("new-http", "2024-03-01T00:00:00Z", "shop"),
            // Consumer routes of team-a are a set of their own: the GRPCRoute is older there.
            grpc("a-grpc", "2024-04-01T00:00:00Z", "team-a"),
            http("a-http", "2024-05-01T00:00:00Z", "team-a"),
        ];
        let evaluations = evaluate_all(&routes, &[], false);
        let accepted: Vec<(&str, bool)> = evaluations
            .iter()
            .map(|e| (e.route.as_str(), e.parents[0].is_accepted()))
            .collect();
        assert_eq!(
            accepted,
            [
                ("shop/old-http", true),
                ("shop/grpc", false),
                ("shop/new-http", true),
                ("team-a/a-grpc", true),
                ("team-a/a-http", false),
            ]
        );
        let refused = &evaluations[1].parents[0].accepted;
        assert_eq!(verdict(refused), (false, reason::CONFLICTED));
        assert!(
            refused.message.contains("HTTPRoute shop/old-http"),
            "{}",
            refused.message
        );
        // The same name in both kinds, equally old: namespace/name ties, and the first listed is kept.
        let twins = [
            grpc("same", "2024-01-01T00:00:00Z", "shop"),
            http("same", "2024-01-01T00:00:00Z", "shop"),
        ];
        let evaluations = evaluate_all(&twins, &[], false);
        assert_eq!(
            evaluations
                .iter()
                .map(|e| e.parents[0].is_accepted())
                .collect::<Vec<_>>(),
            [true, false]
        );
    }

    #[test]
    fn grpc_routes_take_grpc_filters_only() {
        let evaluation = |filters: serde_json::Value| {
            let route = service_grpc_route(
                "shop",
                "g",
                "web",
                json!([
                    {"filters": filters, "backendRefs": [{"name": "v1", "port": 80}]},
                    {"backendRefs": [{"name": "v1", "port": 80}]}
                ]),
            );
            evaluate_all(&[route.into()], &[], false).remove(0)
        };
        let fine = evaluation(json!([
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["c"]}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "v1", "port": 80}}}
        ]));
        assert!(fine.dropped_rules.is_empty(), "{:?}", fine.problems);
        let rewrite = evaluation(json!([{"type": "URLRewrite", "urlRewrite": {"hostname": "x"}}]));
        assert_eq!(rewrite.dropped_rules, [0]);
        let parent = &rewrite.parents[0];
        assert_eq!(verdict(&parent.accepted), (true, reason::ACCEPTED));
        assert_eq!(
            verdict(parent.partially_invalid.as_ref().unwrap()),
            (true, reason::UNSUPPORTED_VALUE)
        );
    }

    #[test]
    fn a_cross_namespace_backend_needs_no_grant_by_default() {
        let route = service_route(
            "shop",
            "web",
            "web",
            json!([{"backendRefs": [{"name": "ext", "namespace": "other", "port": 80}]}]),
        );
        let consumer = service_route(
            "team-a",
            "consumer",
            "shop/web",
            json!([{"backendRefs": [{"name": "web", "namespace": "shop", "port": 80}]}]),
        );
        for route in [route, consumer] {
            let parent = evaluate_one(&route, &[]).parents.remove(0);
            assert_eq!(verdict(&parent.accepted), (true, reason::ACCEPTED));
            assert_eq!(
                verdict(&parent.resolved_refs),
                (true, reason::RESOLVED_REFS),
                "GEP-1294: {}",
                route.metadata.name
            );
        }
    }

    #[test]
    fn a_cross_namespace_backend_needs_a_reference_grant_when_required() {
        let route = service_route(
            "shop",
            "web",
            "web",
            json!([{"backendRefs": [{"name": "ext", "namespace": "other", "port": 80}]}]),
        );
        let required = |grants: &[ReferenceGrant]| {
            evaluate_all(&[route.clone().into()], grants, true).remove(0)
        };
        let without = required(&[]);
        let parent = only_parent(&without);
        assert_eq!(
            verdict(&parent.accepted),
            (true, reason::ACCEPTED),
            "the route stays accepted; the backend gets 500"
        );
        assert_eq!(
            verdict(&parent.resolved_refs),
            (false, reason::REF_NOT_PERMITTED)
        );
        assert!(
            parent.resolved_refs.message.contains("other/ext"),
            "{}",
            parent.resolved_refs.message
        );
        assert!(!without.problems.is_empty());

        for grant in [
            grant("other", "shop", None),
            grant("other", "shop", Some("ext")),
        ] {
            let with = required(&[grant]);
            assert_eq!(
                verdict(&only_parent(&with).resolved_refs),
                (true, reason::RESOLVED_REFS)
            );
        }
        for useless in [
            grant("other", "shop", Some("other-name")),
            grant("other", "elsewhere", None),
            grant("shop", "shop", None),
        ] {
            let with = required(&[useless]);
            assert_eq!(
                verdict(&only_parent(&with).resolved_refs),
                (false, reason::REF_NOT_PERMITTED)
            );
        }
    }

    #[test]
    fn a_cross_namespace_mirror_needs_a_reference_grant_too() {
        let route = service_route(
            "shop",
            "web",
            "web",
            json!([{"filters": [{"type": "RequestMirror", "requestMirror":
            {"backendRef": {"name": "ext", "namespace": "other", "port": 80}}}], "backendRefs": [{"name": "v1", "port": 80}]}]),
        );
        let evaluation = evaluate_all(&[route.into()], &[], true).remove(0);
        assert_eq!(
            verdict(&only_parent(&evaluation).resolved_refs),
            (false, reason::REF_NOT_PERMITTED)
        );
    }

    #[test]
    fn missing_backends_and_other_kinds_do_not_resolve() {
        let cases = [
            (
                json!({"name": "nope", "port": 80}),
                reason::BACKEND_NOT_FOUND,
            ),
            (
                json!({"name": "v1", "port": 9999}),
                reason::BACKEND_NOT_FOUND,
            ),
            (json!({"name": "v1"}), reason::BACKEND_NOT_FOUND),
            (
                json!({"group": "example.com", "kind": "Bucket", "name": "b"}),
                reason::INVALID_KIND,
            ),
        ];
        for (backend, expected) in cases {
            let evaluation = evaluate_rules(json!([{"backendRefs": [backend.clone()]}]));
            let parent = only_parent(&evaluation);
            assert!(parent.is_accepted(), "{backend}");
            assert_eq!(
                verdict(&parent.resolved_refs),
                (false, expected),
                "{backend}"
            );
        }
    }

    #[test]
    fn an_extension_ref_filter_is_an_unresolved_reference() {
        let evaluation = evaluate_rules(
            json!([{"filters": [{"type": "ExtensionRef", "extensionRef":
            {"group": "example.com", "kind": "Auth", "name": "a"}}], "backendRefs": [{"name": "v1", "port": 80}]}]),
        );
        let parent = only_parent(&evaluation);
        assert_eq!(verdict(&parent.accepted), (true, reason::ACCEPTED));
        assert_eq!(
            verdict(&parent.resolved_refs),
            (false, reason::INVALID_KIND)
        );
    }

    #[test]
    fn status_parents_have_the_route_parent_status_shape() {
        let mut route = service_route(
            "shop",
            "web",
            "web",
            json!([{"backendRefs": [{"name": "nope", "port": 80}]}]),
        );
        route.spec.parent_refs[0].port = Some(8080);
        let evaluation = evaluate_one(&route, &[]);
        let parents = status_parents(&evaluation, 7, "2024-05-06T07:08:09Z");
        assert_eq!(
            serde_json::to_value(parents).unwrap(),
            json!([{
                "parentRef": {"group": "", "kind": "Service", "name": "web", "port": 8080},
                "controllerName": "zerohop.io/waypoint",
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Accepted",
                     "observedGeneration": 7, "lastTransitionTime": "2024-05-06T07:08:09Z"},
                    {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
                     "message": "backend Service shop/nope does not exist",
                     "observedGeneration": 7, "lastTransitionTime": "2024-05-06T07:08:09Z"},
                ]
            }])
        );
    }

    #[test]
    fn l7_services_are_those_with_an_accepted_parent() {
        let mut on_port = service_route(
            "shop",
            "a",
            "web",
            json!([{"backendRefs": [{"name": "v1", "port": 80}]}]),
        );
        on_port.spec.parent_refs[0].port = Some(8080);
        let routes = vec![
            on_port,
            service_route(
                "team-a",
                "b",
                "shop/v1",
                json!([{"backendRefs": [{"name": "v1", "namespace": "shop", "port": 80}]}]),
            ),
            service_route(
                "other",
                "c",
                "ext",
                json!([{"filters": [{"type": "Unknown"}]}]),
            ),
            service_route("other", "d", "missing", json!([])),
        ];
        let routes: Vec<Route> = routes.into_iter().map(Route::from).collect();
        let services = services();
        let inputs = Inputs {
            services: &services,
            grants: &[],
            require_reference_grants: false,
        };
        let expected_ports: BTreeSet<_> = [("shop", "v1", 80), ("shop", "web", 8080)]
            .into_iter()
            .map(|(ns, name, port)| (ns.to_string(), name.to_string(), port))
            .collect();
        assert_eq!(l7_service_ports(&routes, inputs), expected_ports);
        let expected: BTreeSet<_> = [("shop", "v1"), ("shop", "web")]
            .into_iter()
            .map(|(ns, n)| (ns.to_string(), n.to_string()))
            .collect();
        assert_eq!(l7_services(&routes, inputs), expected);
    }
}
