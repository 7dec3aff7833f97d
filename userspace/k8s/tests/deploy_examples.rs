//! The manifests in `deploy/examples`, used by the demo, plan as the demo
//! expects on node1.

use std::net::SocketAddr;

use zerohop_abi::BackendKey;

use zerohop_k8s::{build_view, Built};
use zerohop_planner::{
    addr,
    model::{Protocol, ServicePort},
    plan::{frontend_key, port_frontend_key},
    plan_with, MapEntries, Waypoints,
};

fn example_files() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml" || ext == "json")
        })
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Backends of a frontend in slot order, as (`address:port`, local).
fn backends(desired: &MapEntries, cluster_ip: &str, port: u16) -> Vec<(String, bool)> {
    slots(desired, frontend_key(cluster_ip.parse().unwrap(), port))
}

fn slots(desired: &MapEntries, key: zerohop_abi::FrontendKey) -> Vec<(String, bool)> {
    let service = desired.services[&key];
    (0..service.endpoints)
        .map(|slot| {
            let backend = desired.backends[&BackendKey {
                frontend: key,
                slot,
            }];
            let address = addr::from_kernel(backend.addr, key.family).unwrap();
            (
                SocketAddr::new(address, backend.port).to_string(),
                backend.local == 1,
            )
        })
        .collect()
}

#[test]
fn examples_plan_a_local_a_remote_an_l7_and_a_dns_service_on_node1() {
    let files = example_files();
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    assert!(
        names.contains(&"services.yaml") && names.contains(&"endpointslices.yaml"),
        "{names:?}"
    );

    let Built { view, problems, .. } = build_view(files);
    assert_eq!(problems, vec![]);
    let waypoints = Waypoints {
        v4: true,
        v6: false,
    };
    let plan = plan_with(&view, "node1", waypoints, &Default::default());
    assert_eq!(plan.problems, vec![]);
    let desired = &plan.desired;

    assert_eq!(
        backends(desired, "10.96.0.10", 80),
        vec![("10.244.1.2:8080".to_string(), true)]
    );
    assert_eq!(
        backends(desired, "fd00:96::10", 80),
        vec![("[fd00:244:1::2]:8080".to_string(), true)]
    );
    assert_eq!(
        backends(desired, "10.96.0.20", 80),
        vec![("10.244.2.2:8080".to_string(), false)]
    );
    // The L7 Service goes to the waypoint; the others keep bypass on.
    let web = frontend_key("10.96.0.30".parse().unwrap(), 80);
    assert_eq!(desired.services[&web].flags, zerohop_abi::SERVICE_L7);
    for (cluster_ip, port) in [("10.96.0.10", 80), ("fd00:96::10", 80), ("10.96.0.20", 80)] {
        let key = frontend_key(cluster_ip.parse().unwrap(), port);
        assert_eq!(desired.services[&key].flags, 0, "{cluster_ip}");
    }
    let dns = ServicePort {
        name: "dns".into(),
        port: 53,
        protocol: Protocol::Udp,
        app_protocol: None,
    };
    let dns = port_frontend_key("10.96.0.53".parse().unwrap(), &dns).unwrap();
    assert_eq!(
        slots(desired, dns),
        vec![("10.244.1.7:5353".to_string(), true)]
    );
}
