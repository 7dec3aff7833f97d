//! deploy/ parses as the Kubernetes types it claims to be, grants the agent
//! exactly what it reads, and runs it the way the agent expects.

use std::collections::BTreeSet;

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    rbac::v1::{ClusterRole, Role, RoleBinding},
};
use serde::de::DeserializeOwned;
use zerohop::route_status::RouteKind;

fn documents(file: &str) -> Vec<serde_yaml_ng::Value> {
    let path = format!("{}/../../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .collect()
}

fn the<T: DeserializeOwned>(file: &str, kind: &str) -> T {
    let document = documents(file)
        .into_iter()
        .find(|document| document["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in {file}"));
    serde_yaml_ng::from_value(document).unwrap_or_else(|e| panic!("{kind} in {file}: {e}"))
}

#[test]
fn every_manifest_parses_as_its_kind() {
    use k8s_openapi::api::{
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::ClusterRoleBinding,
    };
    let _: Namespace = the("namespace.yaml", "Namespace");
    let _: ServiceAccount = the("rbac.yaml", "ServiceAccount");
    let _: ClusterRole = the("rbac.yaml", "ClusterRole");
    let _: ClusterRoleBinding = the("rbac.yaml", "ClusterRoleBinding");
    let _: Role = the("rbac.yaml", "Role");
    let _: RoleBinding = the("rbac.yaml", "RoleBinding");
    let _: DaemonSet = the("daemonset.yaml", "DaemonSet");
    let kustomization = &documents("kustomization.yaml")[0];
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from(["namespace.yaml", "rbac.yaml", "daemonset.yaml"])
    );
}

#[test]
fn the_cluster_role_grants_exactly_what_the_agent_watches() {
    let role: ClusterRole = the("rbac.yaml", "ClusterRole");
    let mut read = BTreeSet::new();
    let mut patched = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        let granted = if verbs == BTreeSet::from(["get", "list", "watch"]) {
            &mut read
        } else if verbs == BTreeSet::from(["patch"]) {
            &mut patched
        } else {
            panic!("unexpected verbs {verbs:?}: read rules grant get, list and watch; write rules patch only");
        };
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                granted.insert((group.clone(), resource));
            }
        }
    }
    let watched: BTreeSet<(String, String)> = zerohop::source::kube::watched_resources()
        .into_iter()
        .collect();
    assert_eq!(read, watched);
    let route_statuses: BTreeSet<(String, String)> = RouteKind::ALL
        .iter()
        .map(|kind| {
            let group = "gateway.networking.k8s.io".to_string();
            (group, format!("{}/status", kind.plural()))
        })
        .collect();
    assert_eq!(
        patched, route_statuses,
        "the agent writes the status of routes of every kind, and nothing else"
    );
}

#[test]
fn the_agents_may_hold_the_status_lease_their_daemon_set_names() {
    let daemon_set: DaemonSet = the("daemonset.yaml", "DaemonSet");
    let pod = daemon_set.spec.template.spec.unwrap();
    let agent = &pod.containers[0];
    let lease = agent
        .args
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|arg| arg.strip_prefix("--status-lease="))
        .expect("--status-lease");
    assert_eq!(lease, "$(POD_NAMESPACE)/zerohop-route-status");
    let namespace = agent
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|env| env.name == "POD_NAMESPACE")
        .and_then(|env| env.value_from.as_ref()?.field_ref.as_ref())
        .map(|field| field.field_path.as_str());
    assert_eq!(namespace, Some("metadata.namespace"));

    // The Role, in the pod's namespace, grants what the election does to
    // that Lease, and nothing else.
    let role: Role = the("rbac.yaml", "Role");
    assert_eq!(
        role.metadata.namespace, daemon_set.metadata.namespace,
        "the Lease lives in the agents' namespace"
    );
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert_eq!(
            rule.api_groups.as_deref(),
            Some(&["coordination.k8s.io".to_string()][..])
        );
        assert_eq!(rule.resources.as_deref(), Some(&["leases".to_string()][..]));
        let names = rule.resource_names.clone().unwrap_or_default();
        for verb in &rule.verbs {
            if verb == "create" {
                assert!(names.is_empty(), "create cannot be limited by name");
            } else {
                assert_eq!(names, ["zerohop-route-status"], "{verb} of that Lease only");
            }
            granted.insert(verb.clone());
        }
    }
    let used: BTreeSet<String> = zerohop::election::LEASE_VERBS
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(granted, used);
    let binding: RoleBinding = the("rbac.yaml", "RoleBinding");
    assert_eq!(binding.role_ref.name, "zerohop-agent");
    assert_eq!(binding.role_ref.kind, "Role");
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, pod.service_account_name.unwrap());
}

#[test]
fn the_daemon_set_runs_the_agent_as_it_expects() {
    let daemon_set: DaemonSet = the("daemonset.yaml", "DaemonSet");
    let pod = daemon_set.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("zerohop-agent"));
    assert!(
        pod.tolerations
            .unwrap()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")),
        "every node"
    );
    let agent = &pod.containers[0];
    let args = agent.args.clone().unwrap();
    assert_eq!(args[0], "agent");
    for expected in [
        "--source=kube",
        "--cgroup=/host/cgroup",
        "--pin-dir=/sys/fs/bpf/zerohop",
    ] {
        assert!(
            args.iter().any(|arg| arg == expected),
            "{expected} in {args:?}"
        );
    }
    let node_name = agent
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|env| env.name == "NODE_NAME")
        .unwrap();
    let field = node_name
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|get| get.path.clone())
    };
    assert_eq!(
        probe_path(&agent.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&agent.readiness_probe).as_deref(),
        Some("/readyz")
    );
    let security = agent.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, Some(false));
    let added: BTreeSet<&str> = security
        .capabilities
        .as_ref()
        .unwrap()
        .add
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    for needed in ["BPF", "NET_ADMIN", "SYS_ADMIN"] {
        assert!(added.contains(needed), "{needed} in {added:?}");
    }
    let host_paths: BTreeSet<String> = pod
        .volumes
        .unwrap()
        .iter()
        .filter_map(|volume| volume.host_path.as_ref().map(|host| host.path.clone()))
        .collect();
    assert_eq!(
        host_paths,
        BTreeSet::from(["/sys/fs/bpf".to_owned(), "/sys/fs/cgroup".to_owned()])
    );
    assert!(
        agent
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some(),
        "limits set"
    );
}

#[test]
fn the_waypoint_listens_where_the_agent_sends_l7_connections_and_reads_its_config() {
    let daemon_set: DaemonSet = the("daemonset.yaml", "DaemonSet");
    let pod = daemon_set.spec.template.spec.unwrap();
    let container = |name: &str| {
        pod.containers
            .iter()
            .find(|container| container.name == name)
            .unwrap_or_else(|| panic!("container {name}"))
    };
    let flag = |name: &str, flag: &str| -> String {
        let container = container(name);
        container
            .args
            .iter()
            .flatten()
            .find_map(|arg| arg.strip_prefix(&format!("{flag}=")))
            .unwrap_or_else(|| panic!("{flag} of {name}"))
            .to_string()
    };
    let port = |addr: &str| addr.rsplit_once(':').unwrap().1.to_string();
    assert_eq!(
        port(&flag("agent", "--waypoint")),
        port(&flag("waypoint", "--listen"))
    );
    let config = flag("agent", "--waypoint-config");
    assert_eq!(config, flag("waypoint", "--config"));
    let mount_of = |name: &str| {
        container(name)
            .volume_mounts
            .iter()
            .flatten()
            .find(|mount| config.starts_with(&mount.mount_path))
            .map(|mount| mount.name.clone())
            .unwrap_or_else(|| panic!("{name} mounts no volume holding {config}"))
    };
    assert_eq!(mount_of("agent"), mount_of("waypoint"), "one shared volume");
    let added = container("waypoint")
        .security_context
        .as_ref()
        .and_then(|security| security.capabilities.as_ref())
        .and_then(|capabilities| capabilities.add.clone())
        .unwrap_or_default();
    assert!(
        added.iter().any(|capability| capability == "NET_ADMIN"),
        "SO_MARK needs NET_ADMIN"
    );
}
