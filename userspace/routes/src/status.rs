//! Validation of an HTTPRoute against the cluster, as the per-parent status
//! zerohop writes for its Service parents (Gateway parents belong to other
//! controllers and are left out).
//!
//! How zerohop reads the spec for routes it cannot fully implement:
//!
//! - a rule zerohop cannot implement (an unknown or unimplemented filter
//!   type, a regular expression that does not compile, an unknown match
//!   type or method, RequestRedirect with URLRewrite, ...) is dropped, and
//!   no request ever matches it; while another rule is valid the parent is
//!   Accepted with `PartiallyInvalid` ("Dropped Rule ..."), when none is the
//!   parent is not Accepted (`UnsupportedValue`, or `IncompatibleFilters`);
//! - a backendRef that does not resolve (missing Service or port, another
//!   namespace without ReferenceGrant, not a Service) makes ResolvedRefs
//!   False; the route stays accepted and that backend's share of requests
//!   gets 500; an invalid mirror backend is not mirrored to;
//! - an ExtensionRef filter cannot be resolved (zerohop has none): the rule
//!   stays, ResolvedRefs is False (`InvalidKind`) and its requests get 500.
//!
//! A parent whose Accepted is True makes that Service an L7 Service: its
//! ClusterIP ports (only the parentRef's port, when given) go through the
//! waypoint.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{
    conditions::{reason, Condition, StatusCondition, ACCEPTED, PARTIALLY_INVALID, RESOLVED_REFS},
    contract::ServiceInfo,
    model::{HttpRoute, ParentRef, ReferenceGrant},
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

/// Validates `route` against the cluster's Services and ReferenceGrants.
pub fn evaluate(
    route: &HttpRoute,
    services: &[ServiceInfo],
    grants: &[ReferenceGrant],
) -> RouteEvaluation {
    assess(route, &Cluster { services, grants }).0
}

/// [`evaluate`], plus the compiled valid rules for the router.
pub(crate) fn assess(route: &HttpRoute, cluster: &Cluster) -> (RouteEvaluation, Vec<CompiledRule>) {
    let (rules, dropped) = compile_rules(route, cluster);
    let ref_problems: Vec<&RuleProblem> =
        rules.iter().flat_map(CompiledRule::ref_problems).collect();
    let all_dropped = !dropped.is_empty() && rules.is_empty();
    let parents: Vec<ParentStatus> = route
        .spec
        .parent_refs
        .iter()
        .filter(|p| p.is_service())
        .map(|parent_ref| {
            let namespace = parent_ref
                .namespace
                .clone()
                .unwrap_or_else(|| route.metadata.namespace.clone());
            let consumer = namespace != route.metadata.namespace;
            let accepted = match parent_problem(parent_ref, &namespace, cluster) {
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
                        "Accepted as a consumer route: applies to clients in namespace {}",
                        route.metadata.namespace
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
pub fn l7_service_ports(
    routes: &[HttpRoute],
    services: &[ServiceInfo],
    grants: &[ReferenceGrant],
) -> BTreeSet<(String, String, u16)> {
    let cluster = Cluster { services, grants };
    let mut ports = BTreeSet::new();
    for route in routes {
        for parent in evaluate(route, services, grants)
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
pub fn l7_services(
    routes: &[HttpRoute],
    services: &[ServiceInfo],
    grants: &[ReferenceGrant],
) -> BTreeSet<(String, String)> {
    l7_service_ports(routes, services, grants)
        .into_iter()
        .map(|(namespace, name, _)| (namespace, name))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::*;

    fn services() -> Vec<ServiceInfo> {
        vec![
            service("shop", "web", "10.0.0.10", &[80, 8080]),
            service("shop", "v1", "10.0.0.11", &[80]),
            service("other", "ext", "10.0.0.20", &[80]),
        ]
    }

    fn evaluate_rules(rules: serde_json::Value) -> RouteEvaluation {
        evaluate(
            &service_route("shop", "web", "web", rules),
            &services(),
            &[],
        )
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
        let evaluation = evaluate(&route, &services(), &[grant("shop", "team-a", Some("v1"))]);
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
        let evaluation = evaluate(&route, &services(), &[]);
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
        let evaluation = evaluate(&missing, &services(), &[]);
        assert_eq!(
            verdict(&only_parent(&evaluation).accepted),
            (false, reason::NO_MATCHING_PARENT)
        );
        assert!(!evaluation.problems.is_empty());

        missing.spec.parent_refs[0].name = "web".into();
        missing.spec.parent_refs[0].port = Some(81);
        let evaluation = evaluate(&missing, &services(), &[]);
        assert_eq!(
            verdict(&only_parent(&evaluation).accepted),
            (false, reason::NO_MATCHING_PARENT)
        );

        missing.spec.parent_refs[0].port = None;
        missing.spec.parent_refs[0].section_name = Some("http".into());
        let evaluation = evaluate(&missing, &services(), &[]);
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
    fn a_cross_namespace_backend_needs_a_reference_grant() {
        let route = service_route(
            "shop",
            "web",
            "web",
            json!([{"backendRefs": [{"name": "ext", "namespace": "other", "port": 80}]}]),
        );
        let without = evaluate(&route, &services(), &[]);
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
            let with = evaluate(&route, &services(), &[grant]);
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
            let with = evaluate(&route, &services(), &[useless]);
            assert_eq!(
                verdict(&only_parent(&with).resolved_refs),
                (false, reason::REF_NOT_PERMITTED)
            );
        }
    }

    #[test]
    fn a_cross_namespace_mirror_needs_a_reference_grant_too() {
        let evaluation = evaluate_rules(
            json!([{"filters": [{"type": "RequestMirror", "requestMirror":
            {"backendRef": {"name": "ext", "namespace": "other", "port": 80}}}], "backendRefs": [{"name": "v1", "port": 80}]}]),
        );
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
        let evaluation = evaluate(&route, &services(), &[]);
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
        let expected_ports: BTreeSet<_> = [("shop", "v1", 80), ("shop", "web", 8080)]
            .into_iter()
            .map(|(ns, name, port)| (ns.to_string(), name.to_string(), port))
            .collect();
        assert_eq!(l7_service_ports(&routes, &services(), &[]), expected_ports);
        let expected: BTreeSet<_> = [("shop", "v1"), ("shop", "web")]
            .into_iter()
            .map(|(ns, n)| (ns.to_string(), n.to_string()))
            .collect();
        assert_eq!(l7_services(&routes, &services(), &[]), expected);
    }
}
