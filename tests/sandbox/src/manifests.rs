//! Kubernetes manifests for the agent's `dir:` source, written the way a user
//! would write them: one Service or EndpointSlice per YAML file.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context, Result};

use crate::Family;

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A directory of manifests, removed on Drop.
pub struct Manifests {
    dir: PathBuf,
}

impl Manifests {
    /// A new empty directory under the system temp directory, named like the
    /// rest of a run's sandbox (`zh<pid>x<n>-manifests`), so that the sweep
    /// finds it when its run died before its Drop.
    pub fn new() -> Result<Manifests> {
        let dir = std::env::temp_dir().join(format!(
            "zh{}x{}-manifests",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Manifests { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `file` atomically (a hidden temporary file, then a rename), so
    /// the agent never reads half a file.
    pub fn write(&self, file: &str, yaml: &str) -> Result<()> {
        let temporary = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&temporary, yaml)?;
        std::fs::rename(&temporary, self.dir.join(file))?;
        Ok(())
    }

    pub fn remove(&self, file: &str) -> Result<()> {
        Ok(std::fs::remove_file(self.dir.join(file))?)
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A ClusterIP Service in namespace `default` with one TCP port named `http`.
/// `spec_extra` is appended to the spec (e.g. `internalTrafficPolicy: Local`).
pub fn service_yaml(
    name: &str,
    cluster_ip: IpAddr,
    port: u16,
    target_port: u16,
    spec_extra: &str,
) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  clusterIP: {cluster_ip}\n  ports:\n  - name: http\n    port: {port}\n    \
         targetPort: {target_port}\n    protocol: TCP\n"
    );
    for line in spec_extra.lines().filter(|line| !line.trim().is_empty()) {
        let _ = writeln!(yaml, "  {line}");
    }
    yaml
}

/// One endpoint of a slice: address, node name, ready condition.
pub struct Endpoint<'a> {
    pub ip: IpAddr,
    pub node: &'a str,
    pub ready: bool,
}

/// An EndpointSlice of Service `service` (port `http` = `target_port`); the
/// address family is that of the first endpoint (IPv4 when empty).
pub fn slice_yaml(service: &str, slice: &str, target_port: u16, endpoints: &[Endpoint]) -> String {
    let family = match endpoints.first().map(|endpoint| Family::of(endpoint.ip)) {
        Some(Family::V6) => "IPv6",
        _ => "IPv4",
    };
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\n\
         addressType: {family}\nports:\n- name: http\n  port: {target_port}\n  protocol: TCP\nendpoints:\n"
    );
    if endpoints.is_empty() {
        yaml.push_str("[]\n");
    }
    for endpoint in endpoints {
        let _ = write!(
            yaml,
            "- addresses: [\"{}\"]\n  nodeName: {}\n  conditions:\n    ready: {}\n",
            endpoint.ip, endpoint.node, endpoint.ready
        );
    }
    yaml.replace("endpoints:\n[]", "endpoints: []")
}

/// A running Pod: its namespace, node and IPs (what the waypoint learns its
/// clients' namespaces from).
pub fn pod_yaml(name: &str, namespace: &str, node: &str, ips: &[IpAddr]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  nodeName: {node}\n  containers: []\nstatus:\n  podIPs:\n"
    );
    for ip in ips {
        let _ = writeln!(yaml, "  - ip: \"{ip}\"");
    }
    yaml
}
