//! The privileged suites' one fixture: a sandboxed two-node [`Cluster`],
//! named pods on it, the processes they serve with, a manifest directory
//! (the agent's dir source) and the agents. Suites add what only they need
//! (a waypoint, an API server) around it.
//!
//! Addressing: Service number `n` has ClusterIP 10.96.0.n / fd00:96::n
//! ([`cluster_ip`]) and port [`SERVICE_PORT`]; backends listen on
//! [`TARGET_PORT`].

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use zerohop_sandbox::{
    node_name, require_root, service_yaml, slice_yaml, Agent, AgentSource, Cluster, EchoReport,
    Endpoint, Family, Manifests, Pod, PodProcess, Testpod,
};

/// Port of every Service.
pub const SERVICE_PORT: u16 = 80;
/// Port every backend listens on (the Services' targetPort).
pub const TARGET_PORT: u16 = 8080;
/// How long a suite waits for anything to happen.
pub const WAIT: Duration = Duration::from_secs(15);

/// ClusterIP number `n` of a family: 10.96.0.n or fd00:96::n.
pub fn cluster_ip(family: Family, n: u8) -> IpAddr {
    match family {
        Family::V4 => IpAddr::from([10, 96, 0, n]),
        Family::V6 => IpAddr::from([0xfd00, 0x96, 0, 0, 0, 0, 0, u16::from(n)]),
    }
}

/// Service number `n`'s address: its ClusterIP and [`SERVICE_PORT`].
pub fn frontend(family: Family, n: u8) -> SocketAddr {
    SocketAddr::new(cluster_ip(family, n), SERVICE_PORT)
}

/// An HTTPRoute named `service` that attaches to Service `service` (port
/// [`SERVICE_PORT`]) and sends everything back to it: what makes the
/// Service L7, and nothing more.
pub fn route_to_itself(service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {service}, namespace: default}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: {service}, port: {SERVICE_PORT}}}]\n  \
         rules: [{{backendRefs: [{{name: {service}, port: {SERVICE_PORT}}}]}}]\n"
    )
}

/// A Service's port: protocol, port and targetPort.
#[derive(Clone, Copy)]
pub struct Port {
    pub protocol: &'static str,
    pub service: u16,
    pub target: u16,
}

impl Port {
    pub const TCP: Port = Port {
        protocol: "TCP",
        service: SERVICE_PORT,
        target: TARGET_PORT,
    };
}

/// A cluster, its pods, what they serve, a manifest directory and (once
/// started) agents. Fields drop in order: servers and agents stop before the
/// cluster goes.
pub struct World {
    pub servers: Vec<PodProcess>,
    pub agents: Vec<Agent>,
    pub manifests: Manifests,
    /// A directory out of the agent's manifest directory, for what the
    /// agent writes (the waypoint's input).
    pub scratch: Manifests,
    pods: BTreeMap<String, Pod>,
    pub cluster: Cluster,
    testpod: Testpod,
}

impl World {
    /// `pods`: (name, node); `servers`: the pods that run `zh-testpod
    /// server` on [`TARGET_PORT`], under their own name.
    pub fn new(pods: &[(&str, usize)], servers: &[&str]) -> Result<World> {
        require_root();
        let cluster = Cluster::new(2)?;
        let mut world = World {
            servers: Vec::new(),
            agents: Vec::new(),
            manifests: Manifests::new()?,
            scratch: Manifests::new()?,
            pods: BTreeMap::new(),
            cluster,
            testpod: Testpod::locate(),
        };
        for &(name, node) in pods {
            let pod = world.cluster.add_pod(node, name)?;
            world.pods.insert(name.to_owned(), pod);
        }
        for &name in servers {
            let server = world.testpod.server(world.pod(name), name, TARGET_PORT)?;
            world.servers.push(server);
        }
        Ok(world)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        &self.pods[name]
    }

    /// `zh-testpod`, as the suites run it in pods.
    pub fn testpod(&self) -> &Testpod {
        &self.testpod
    }

    /// The name the manifests give a pod's node.
    pub fn node_of(&self, pod: &str) -> &'static str {
        match self.pod(pod).node {
            1 => "node1",
            _ => "node2",
        }
    }

    /// The manifests of a TCP Service `name` at ClusterIP number `n` whose
    /// endpoints are the named pods, all ready; [`ServiceManifest::write`]
    /// writes them.
    pub fn service<'w>(
        &'w self,
        family: Family,
        name: &'w str,
        n: u8,
        backends: &'w [&'w str],
    ) -> ServiceManifest<'w> {
        ServiceManifest {
            world: self,
            family,
            name,
            n,
            backends,
            not_ready: &[],
            spec: "",
            port: Port::TCP,
            app_protocol: None,
        }
    }

    /// Starts an agent on `node` reading [`World::manifests`], with `extra`
    /// arguments, beside any others.
    pub fn start_agent(&mut self, node: usize, extra: &[&str]) -> Result<()> {
        let manifests = self.manifests.dir().to_owned();
        self.start_agent_with(node, AgentSource::Dir(&manifests), extra)
    }

    /// [`World::start_agent`] with another source.
    pub fn start_agent_with(
        &mut self,
        node: usize,
        source: AgentSource,
        extra: &[&str],
    ) -> Result<()> {
        let agent = Agent::start_with(&self.cluster, node, source, extra)
            .with_context(|| format!("agent of {}", node_name(node)))?;
        self.agents.push(agent);
        Ok(())
    }

    pub fn start_agents(&mut self) -> Result<()> {
        self.start_agents_with(&[])
    }

    /// Starts one agent per node with `extra` arguments, in place of any
    /// earlier ones.
    pub fn start_agents_with(&mut self, extra: &[&str]) -> Result<()> {
        self.stop_agents()?;
        self.agents.clear();
        for node in 1..=2 {
            self.start_agent(node, extra)?;
        }
        Ok(())
    }

    pub fn stop_agents(&mut self) -> Result<()> {
        for agent in &mut self.agents {
            agent.stop()?;
        }
        Ok(())
    }

    /// A kernel counter of the first agent's node (node 1, where every
    /// client runs).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let counters = self.agents.first().context("no agent")?.counters()?;
        counters
            .get(name)
            .copied()
            .with_context(|| format!("no counter {name} in {counters:?}"))
    }

    /// Waits up to `within` for `check` to hold; the error says what it
    /// last saw and carries the agents' logs.
    pub fn eventually(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            match check() {
                Ok(true) => return Ok(()),
                Ok(false) => last = "not yet".into(),
                Err(error) => last = format!("{error:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let logs: Vec<String> = self.agents.iter().map(Agent::log_text).collect();
        bail!(
            "{what}: never held ({last}); agent logs:\n{}",
            logs.join("\n")
        )
    }

    /// Bytes received plus sent on a pod's eth0.
    pub fn veth_bytes(&self, pod: &str) -> Result<u64> {
        let (rx, tx) = self.pod(pod).veth_bytes()?;
        Ok(rx + tx)
    }

    /// `bytes` echoed from pod `client` through `target`, all of them back.
    pub fn echo(&self, client: &str, target: SocketAddr, bytes: u64) -> Result<EchoReport> {
        let report = self.testpod.echo(self.pod(client), target, bytes)?;
        ensure!(
            report.ok && report.bytes == bytes,
            "echo {client} -> {target} failed: {report:?}; node1 counters {:?}",
            self.agents.first().map(Agent::counters)
        );
        Ok(report)
    }

    /// `count` connections from pod `client` to `target`, all answered:
    /// how many each server answered.
    pub fn spread(
        &self,
        client: &str,
        target: SocketAddr,
        count: u32,
    ) -> Result<BTreeMap<String, u64>> {
        let report = self.testpod.spread(self.pod(client), target, count)?;
        ensure!(
            report.failed == 0,
            "{} of {count} connections to {target} failed",
            report.failed
        );
        Ok(report.counts)
    }
}

/// A Service and its EndpointSlice as [`World::service`] writes them; each
/// method changes one part from the default.
pub struct ServiceManifest<'w> {
    world: &'w World,
    family: Family,
    name: &'w str,
    n: u8,
    backends: &'w [&'w str],
    not_ready: &'w [&'w str],
    spec: &'w str,
    port: Port,
    app_protocol: Option<&'w str>,
}

impl<'w> ServiceManifest<'w> {
    /// These backends are listed, not ready.
    pub fn not_ready(mut self, pods: &'w [&'w str]) -> Self {
        self.not_ready = pods;
        self
    }

    /// More lines of the Service's spec (YAML).
    pub fn spec(mut self, lines: &'w str) -> Self {
        self.spec = lines;
        self
    }

    /// Another protocol or numbers than TCP [`SERVICE_PORT`] → [`TARGET_PORT`].
    pub fn port(mut self, port: Port) -> Self {
        self.port = port;
        self
    }

    /// The port's `appProtocol`.
    pub fn app_protocol(mut self, name: &'w str) -> Self {
        self.app_protocol = Some(name);
        self
    }

    /// Writes `<name>-svc.yaml` and `<name>-slice.yaml` in the world's
    /// manifest directory.
    pub fn write(self) -> Result<()> {
        let world = self.world;
        let (name, port) = (self.name, self.port);
        let endpoints: Vec<Endpoint> = self
            .backends
            .iter()
            .map(|&pod| Endpoint {
                ip: world.pod(pod).ip(self.family),
                node: world.node_of(pod),
                ready: !self.not_ready.contains(&pod),
            })
            .collect();
        // The manifest helpers write TCP ports.
        let protocol =
            |yaml: String| yaml.replace("protocol: TCP", &format!("protocol: {}", port.protocol));
        let mut service = protocol(service_yaml(
            name,
            cluster_ip(self.family, self.n),
            port.service,
            port.target,
            self.spec,
        ));
        if let Some(app_protocol) = self.app_protocol {
            let line = format!("    protocol: {}\n", port.protocol);
            service = service.replacen(
                &line,
                &format!("{line}    appProtocol: {app_protocol}\n"),
                1,
            );
        }
        world
            .manifests
            .write(&format!("{name}-svc.yaml"), &service)?;
        world.manifests.write(
            &format!("{name}-slice.yaml"),
            &protocol(slice_yaml(
                name,
                &format!("{name}-1"),
                port.target,
                &endpoints,
            )),
        )
    }
}
