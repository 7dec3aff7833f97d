//! `zerohop inspect`: what the kernel does on this node, read straight from
//! the pinned maps (read-only), so it works while the agent runs and after it
//! stopped or died.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{HashMap, MapData, SockHash};
use serde::Serialize;
use zerohop_abi::{
    map_name, Config, Dialled, FrontendKey, ReverseKey, ServiceName, SockKey, FAMILY_V4, PROTO_TCP,
    PROTO_UDP, SERVICE_L7, SERVICE_NO_BYPASS, SERVICE_SHORT_CONNS,
};
use zerohop_planner::addr;

use crate::datapath::{self, open_pinned, ServiceMaps};

/// How listings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns, like kubectl.
    Table,
    /// One JSON document.
    Json,
}

/// One frontend and what the connect hook does with it.
#[derive(Debug, Serialize)]
pub struct FrontendRow {
    pub frontend: String,
    pub service: String,
    /// `waypoint` (an L7 Service: connections go to the node's waypoint),
    /// `translate` (it has eligible endpoints) or `pass` (left untouched).
    pub action: &'static str,
    /// Where connections go when the action is `waypoint`.
    pub waypoint: Option<String>,
    /// Whether connections to local endpoints move socket-to-socket.
    pub bypass: bool,
    /// The agent learned that the frontend's connections are too short to
    /// gain from the bypass: only one connect in 16 takes it.
    pub short_conns: bool,
    pub endpoints: u32,
    pub local_backends: Vec<String>,
}

/// One eligible endpoint slot.
#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub frontend: String,
    pub service: String,
    pub slot: u32,
    pub backend: String,
    pub local: bool,
}

/// One registered socket of a bypassed connection.
#[derive(Debug, Serialize)]
pub struct SocketRow {
    pub local: String,
    pub remote: String,
    /// Whether the other end is registered too (then messages are redirected).
    pub peer_registered: bool,
}

/// One translated socket, for getpeername().
#[derive(Debug, Serialize)]
pub struct ReverseRow {
    /// The socket's cookie (SO_COOKIE).
    pub cookie: u64,
    /// The ClusterIP:port it dialled: what its getpeername() returns, and
    /// the source of its UDP replies.
    pub dialled: String,
    /// The endpoint or waypoint the hooks sent it to.
    pub sent_to: String,
}

/// One counter, summed over CPUs.
#[derive(Debug, Serialize)]
pub struct CounterRow {
    pub counter: &'static str,
    pub value: u64,
    /// Per second since the previous sample (`--watch` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_second: Option<f64>,
}

fn frontend_text(key: &FrontendKey) -> String {
    let protocol = match key.proto {
        PROTO_TCP => "TCP".to_owned(),
        PROTO_UDP => "UDP".to_owned(),
        other => format!("protocol {other}"),
    };
    format!("{}/{protocol}", socket_text(key.addr, key.family, key.port))
}

fn socket_text(words: [u32; 4], family: impl Into<u32>, port: impl Into<u32>) -> String {
    let family = u8::try_from(family.into()).unwrap_or(0);
    let port = u16::try_from(port.into()).unwrap_or(0);
    match addr::from_kernel(words, family) {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("<family {family}>:{port}"),
    }
}

fn ip_text(words: [u32; 4], family: u8) -> Option<IpAddr> {
    addr::from_kernel(words, family).ok()
}

fn name_of(names: &BTreeMap<FrontendKey, ServiceName>, key: &FrontendKey) -> String {
    names
        .get(key)
        .map_or_else(|| "-".to_owned(), |name| name.as_str().to_owned())
}

/// The node's waypoint for a family, from the config map.
fn waypoint_of(config: &Config, family: u8) -> Option<SocketAddr> {
    let (words, port) = if family == FAMILY_V4 {
        ([config.waypoint_v4, 0, 0, 0], config.waypoint_port_v4)
    } else {
        (config.waypoint_v6, config.waypoint_port_v6)
    };
    let ip = ip_text(words, family).filter(|_| port != 0)?;
    Some(SocketAddr::new(ip, port))
}

/// Every frontend, with its Service, action, bypass and local backends.
pub fn services(pin_dir: &Path) -> Result<Vec<FrontendRow>> {
    let maps = ServiceMaps::open(pin_dir)?.read()?;
    let node_bypass = datapath::bypass_enabled(pin_dir)?;
    let config = datapath::read_config(pin_dir)?;
    Ok(maps
        .services
        .iter()
        .map(|(key, service)| {
            let local_backends = (0..service.endpoints)
                .filter_map(|slot| {
                    maps.backends.get(&zerohop_abi::BackendKey {
                        frontend: *key,
                        slot,
                    })
                })
                .filter(|backend| backend.local != 0)
                .filter_map(|backend| {
                    ip_text(backend.addr, key.family).map(|ip| SocketAddr::new(ip, backend.port))
                })
                .map(|socket| socket.to_string())
                .collect();
            let l7 = service.flags & SERVICE_L7 != 0;
            let waypoint = waypoint_of(&config, key.family).filter(|_| l7);
            FrontendRow {
                frontend: frontend_text(key),
                service: name_of(&maps.names, key),
                action: if waypoint.is_some() {
                    "waypoint"
                } else if service.endpoints > 0 && !l7 {
                    "translate"
                } else {
                    "pass"
                },
                waypoint: waypoint.map(|addr| addr.to_string()),
                bypass: node_bypass && service.flags & SERVICE_NO_BYPASS == 0,
                short_conns: service.flags & SERVICE_SHORT_CONNS != 0,
                endpoints: service.endpoints,
                local_backends,
            }
        })
        .collect())
}

/// Every eligible endpoint slot.
pub fn backends(pin_dir: &Path) -> Result<Vec<BackendRow>> {
    let maps = ServiceMaps::open(pin_dir)?.read()?;
    Ok(maps
        .backends
        .iter()
        .map(|(key, backend)| BackendRow {
            frontend: frontend_text(&key.frontend),
            service: name_of(&maps.names, &key.frontend),
            slot: key.slot,
            backend: socket_text(backend.addr, key.frontend.family, backend.port),
            local: backend.local != 0,
        })
        .collect())
}

/// Every registered socket, as its end of the connection sees it.
pub fn sockets(pin_dir: &Path) -> Result<Vec<SocketRow>> {
    let sockets: SockHash<MapData, SockKey> =
        SockHash::try_from(open_pinned(pin_dir, map_name::SOCKETS)?)?;
    let keys = sockets.keys().collect::<Result<Vec<SockKey>, _>>()?;
    let registered: std::collections::BTreeSet<SockKey> = keys.iter().copied().collect();
    Ok(keys
        .iter()
        .map(|key| SocketRow {
            local: socket_text(key.local_addr, key.family, key.local_port),
            remote: socket_text(key.remote_addr, key.family, key.remote_port),
            peer_registered: registered.contains(&key.peer()),
        })
        .collect())
}

/// Every reverse translation: what getpeername() and UDP replies show
/// translated sockets.
pub fn reverse(pin_dir: &Path) -> Result<Vec<ReverseRow>> {
    let entries: HashMap<MapData, ReverseKey, Dialled> =
        HashMap::try_from(open_pinned(pin_dir, map_name::REVERSE)?)?;
    let mut rows = entries
        .iter()
        .map(|entry| {
            let (key, dialled) = entry?;
            // Ports are stored in network byte order, in the low 16 bits.
            let port = |raw: u32| u16::from_be(raw as u16);
            Ok(ReverseRow {
                cookie: key.cookie,
                dialled: socket_text(dialled.addr, key.family, port(dialled.port)),
                sent_to: socket_text(key.addr, key.family, port(key.port)),
            })
        })
        .collect::<Result<Vec<_>, aya::maps::MapError>>()?;
    rows.sort_by(|a, b| (a.cookie, &a.sent_to).cmp(&(b.cookie, &b.sent_to)));
    Ok(rows)
}

/// How many reverse translations the kernel holds (keys only: cheaper than
/// [`reverse`]).
pub fn reverse_entries(pin_dir: &Path) -> Result<usize> {
    let entries: HashMap<MapData, ReverseKey, Dialled> =
        HashMap::try_from(open_pinned(pin_dir, map_name::REVERSE)?)?;
    let mut count = 0;
    for key in entries.keys() {
        // An entry that left between two steps of the walk ends it early.
        if key.is_err() {
            break;
        }
        count += 1;
    }
    Ok(count)
}

/// The counters, with rates against `previous` (taken `elapsed` earlier).
pub fn counters(
    pin_dir: &Path,
    previous: Option<(&[CounterRow], Duration)>,
) -> Result<Vec<CounterRow>> {
    Ok(datapath::read_counters(pin_dir)?
        .into_iter()
        .map(|(counter, value)| {
            let per_second = previous.and_then(|(rows, elapsed)| {
                let before = rows.iter().find(|row| row.counter == counter.name())?.value;
                Some(rate(before, value, elapsed))
            });
            CounterRow {
                counter: counter.name(),
                value,
                per_second,
            }
        })
        .collect())
}

/// Change per second; counters only grow, a restart from zero reads as 0.
fn rate(before: u64, after: u64, elapsed: Duration) -> f64 {
    after.saturating_sub(before) as f64 / elapsed.as_secs_f64().max(1e-3)
}

/// `zerohop inspect stats --watch`: prints the counters and their rates
/// every second until interrupted.
pub fn watch_counters(pin_dir: &Path, output: Output) -> Result<()> {
    let mut previous: Option<(Vec<CounterRow>, Instant)> = None;
    loop {
        let rows = counters(
            pin_dir,
            previous
                .as_ref()
                .map(|(rows, at)| (rows.as_slice(), at.elapsed())),
        )?;
        if output == Output::Table {
            // Clear the screen and go home, like `watch`.
            print!("\x1b[2J\x1b[H");
        }
        print_counters(&rows, output)?;
        previous = Some((rows, Instant::now()));
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn print_services(rows: &[FrontendRow], output: Output) -> Result<()> {
    print_rows(
        rows,
        output,
        &[
            "FRONTEND",
            "SERVICE",
            "ACTION",
            "WAYPOINT",
            "BYPASS",
            "ENDPOINTS",
            "LOCAL BACKENDS",
        ],
        |row| {
            vec![
                row.frontend.clone(),
                row.service.clone(),
                row.action.to_owned(),
                row.waypoint.clone().unwrap_or_else(|| "-".to_owned()),
                match (row.bypass, row.short_conns) {
                    (true, true) => "short".to_owned(),
                    (bypass, _) => on_off(bypass),
                },
                row.endpoints.to_string(),
                if row.local_backends.is_empty() {
                    "-".to_owned()
                } else {
                    row.local_backends.join(",")
                },
            ]
        },
    )
}

pub fn print_backends(rows: &[BackendRow], output: Output) -> Result<()> {
    print_rows(
        rows,
        output,
        &["FRONTEND", "SERVICE", "SLOT", "BACKEND", "LOCAL"],
        |row| {
            vec![
                row.frontend.clone(),
                row.service.clone(),
                row.slot.to_string(),
                row.backend.clone(),
                yes_no(row.local),
            ]
        },
    )
}

pub fn print_sockets(rows: &[SocketRow], output: Output) -> Result<()> {
    print_rows(
        rows,
        output,
        &["LOCAL", "REMOTE", "PEER REGISTERED"],
        |row| {
            vec![
                row.local.clone(),
                row.remote.clone(),
                yes_no(row.peer_registered),
            ]
        },
    )
}

pub fn print_reverse(rows: &[ReverseRow], output: Output) -> Result<()> {
    print_rows(
        rows,
        output,
        &["SOCKET COOKIE", "DIALLED (SHOWN)", "SENT TO"],
        |row| {
            vec![
                row.cookie.to_string(),
                row.dialled.clone(),
                row.sent_to.clone(),
            ]
        },
    )
}

pub fn print_counters(rows: &[CounterRow], output: Output) -> Result<()> {
    let with_rates = rows.iter().any(|row| row.per_second.is_some());
    let headers: &[&str] = if with_rates {
        &["COUNTER", "VALUE", "PER SECOND"]
    } else {
        &["COUNTER", "VALUE"]
    };
    print_rows(rows, output, headers, |row| {
        let mut cells = vec![row.counter.to_owned(), row.value.to_string()];
        cells.extend(row.per_second.map(|rate| format!("{rate:.1}")));
        cells
    })
}

pub(crate) fn on_off(on: bool) -> String {
    if on { "on" } else { "off" }.to_owned()
}

fn yes_no(yes: bool) -> String {
    if yes { "yes" } else { "no" }.to_owned()
}

pub(crate) fn print_rows<T: Serialize>(
    rows: &[T],
    output: Output,
    headers: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Output::Table => print!("{}", table(headers, rows.iter().map(cells).collect())),
    }
    Ok(())
}

/// Columns padded to their widest cell and separated by three spaces.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header_row = headers.iter().map(ToString::to_string).collect();
    let mut text = String::new();
    for row in std::iter::once(header_row).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("   ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let text = table(
            &["FRONTEND", "SERVICE"],
            vec![
                vec!["10.96.0.10:80/TCP".into(), "default/web".into()],
                vec!["[fd00::1]:80/TCP".into(), "x".into()],
            ],
        );
        assert_eq!(
            text,
            "FRONTEND            SERVICE\n10.96.0.10:80/TCP   default/web\n[fd00::1]:80/TCP    x\n"
        );
    }

    #[test]
    fn frontends_print_as_socket_addresses_with_the_protocol() {
        let key = zerohop_planner::plan::frontend_key("fd00:96::10".parse().unwrap(), 80);
        assert_eq!(frontend_text(&key), "[fd00:96::10]:80/TCP");
        let key = zerohop_planner::plan::frontend_key("10.96.0.10".parse().unwrap(), 443);
        assert_eq!(frontend_text(&key), "10.96.0.10:443/TCP");
    }

    #[test]
    fn rates_are_the_change_per_second() {
        assert_eq!(rate(100, 300, Duration::from_secs(2)), 100.0);
        assert_eq!(rate(100, 100, Duration::from_millis(500)), 0.0);
        assert_eq!(
            rate(500, 20, Duration::from_secs(1)),
            0.0,
            "a reset counter is no negative rate"
        );
    }
}
