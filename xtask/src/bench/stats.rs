//! The benchmark's arithmetic, free of I/O: medians and spread, ratios, the
//! share of a run that took the bypass, and the targets.

use std::collections::BTreeMap;

/// Counter deltas over one trial (or summed over several), by name: the
/// kernel's counters (`zerohop inspect stats`) and [`VETH_BYTES`].
pub type Counts = BTreeMap<String, u64>;

/// Bytes (both directions) that crossed the client pod's veth.
pub const VETH_BYTES: &str = "veth_bytes";

/// The kernel's connect outcomes: together, every connect the hook saw.
const CONNECTS: [&str; 5] = [
    "translated_local",
    "translated_remote",
    "passed_not_service",
    "passed_no_endpoint",
    "to_waypoint",
];

/// `after - before`, counter by counter (a counter missing before counts from 0).
pub fn delta(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .map(|(name, value)| {
            let old = before.get(name).copied().unwrap_or(0);
            (name.clone(), value.saturating_sub(old))
        })
        .collect()
}

/// Adds `more` to `total`, counter by counter.
pub fn add(total: &mut Counts, more: &Counts) {
    for (name, value) in more {
        *total.entry(name.clone()).or_default() += value;
    }
}

/// What share of a run took the bypass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shares {
    /// Connections whose messages moved socket-to-socket, of all connects the
    /// hook saw; `None` when the kernel has no `conns_bypassed` counter or
    /// there was no connect.
    pub connections: Option<f64>,
    /// Bytes moved socket-to-socket, of all bytes; `None` without bytes.
    pub bytes: Option<f64>,
    /// What the bytes that did not take the bypass were counted from.
    pub bytes_basis: BytesBasis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BytesBasis {
    /// The kernel's `bytes_passed`: payload of registered sockets that went
    /// through the stack. Exact.
    Kernel,
    /// The client pod's veth: every byte that crossed it, headers and
    /// handshakes included, so the share is a lower bound.
    Veth,
}

impl BytesBasis {
    pub fn name(self) -> &'static str {
        match self {
            BytesBasis::Kernel => "bytes_passed",
            BytesBasis::Veth => "veth",
        }
    }
}

/// The bypass shares of a run from its counter deltas: the one place that
/// knows which counter means what (a new counter is a line here).
pub fn shares(counts: &Counts) -> Shares {
    let get = |name: &str| counts.get(name).copied();
    let base = connection_base(counts);
    let connections = get("conns_bypassed")
        .filter(|_| base > 0)
        .map(|bypassed| bypassed as f64 / base as f64);
    let redirected = get("bytes_redirected").unwrap_or(0);
    // Connections translated without the bypass never enter the sockhash,
    // so no kernel counter sees their bytes: then only the veth does.
    let translated_only = get("local_translated_only").unwrap_or(0);
    let (other, bytes_basis) = match get("bytes_passed") {
        Some(passed) if translated_only == 0 => (passed, BytesBasis::Kernel),
        _ => (get(VETH_BYTES).unwrap_or(0), BytesBasis::Veth),
    };
    let all = redirected + other;
    Shares {
        connections,
        bytes: (all > 0).then(|| redirected as f64 / all as f64),
        bytes_basis,
    }
}

/// The connections a run's connection share counts: those registered for
/// the bypass that sent anything (a connection that never sends, such as
/// wrk's address probe, cannot take it), plus those translated without it
/// (the bypass policy kept them off); without those counters, every
/// connect the hook saw.
pub fn connection_base(counts: &Counts) -> u64 {
    let get = |name: &str| counts.get(name).copied();
    match get("conns_sent") {
        Some(sent) => sent + get("local_translated_only").unwrap_or(0),
        None => CONNECTS.iter().filter_map(|name| get(name)).sum(),
    }
}

/// Median and range of a set of trials.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The median (the mean of the middle two for an even count), min and max;
/// `None` for no values.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Some(Spread {
        median,
        min: sorted[0],
        max: sorted[n - 1],
    })
}

/// How much better zerohop is than kube-proxy: zerohop ÷ kube-proxy for
/// higher-is-better metrics (rates), kube-proxy ÷ zerohop for latencies, so
/// that > 1 always means zerohop is better.
pub fn ratio(zerohop: f64, kube_proxy: f64, higher_is_better: bool) -> f64 {
    if higher_is_better {
        zerohop / kube_proxy
    } else {
        kube_proxy / zerohop
    }
}

/// The geometric mean; `None` for no values or a value that is not positive.
pub fn geomean(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return None;
    }
    Some((values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp())
}

/// Which targets a row of results counts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Wrk,
    RedisGet,
    RedisPipelined,
    ShortConnections,
    Iperf3,
    /// 64 B request/response latency, p50.
    RrP50,
    /// Shown, counted for no target.
    Extra,
}

impl Role {
    /// The third-party workloads of the concurrency matrix.
    pub fn in_matrix(self) -> bool {
        matches!(
            self,
            Role::Wrk
                | Role::RedisGet
                | Role::RedisPipelined
                | Role::ShortConnections
                | Role::Iperf3
        )
    }
}

/// One row of results: a workload's metric at one concurrency.
#[derive(Clone, Debug)]
pub struct Row {
    /// e.g. `wrk`, `zh-bench rr 64 B p50`.
    pub label: String,
    pub unit: &'static str,
    pub role: Role,
    pub concurrency: u32,
    pub zerohop: Spread,
    pub kube_proxy: Spread,
    /// [`ratio`] of the medians.
    pub ratio: f64,
    /// The zerohop trials' counter deltas, summed.
    pub zerohop_counts: Counts,
}

impl Row {
    fn cell(&self) -> String {
        format!("{} c{}", self.label, self.concurrency)
    }

    fn versus(&self) -> String {
        format!(
            "{:.2}x (zerohop {} vs kube-proxy {} {})",
            self.ratio,
            number(self.zerohop.median),
            number(self.kube_proxy.median),
            self.unit
        )
    }
}

/// A target with its verdict and the numbers behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub met: bool,
    pub text: String,
}

/// A number with 3 to 4 significant digits, for tables and messages.
pub fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        format!("{value:.0}")
    } else if magnitude >= 100.0 {
        format!("{value:.1}")
    } else if magnitude >= 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// `ratio >= bound`; a ratio that is not a number meets nothing.
fn meets(ratio: f64, bound: f64) -> bool {
    ratio >= bound
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// Evaluates the benchmark's targets on the rows of one run.
pub fn targets(rows: &[Row]) -> Vec<Target> {
    let matrix: Vec<&Row> = rows.iter().filter(|row| row.role.in_matrix()).collect();
    let of = |role: Role| rows.iter().filter(move |row| row.role == role);
    let mut out = Vec::new();

    let missed: Vec<String> = matrix
        .iter()
        .filter(|row| !meets(row.ratio, 1.0))
        .map(|row| format!("{} {:.2}x", row.cell(), row.ratio))
        .collect();
    out.push(Target {
        met: !matrix.is_empty() && missed.is_empty(),
        text: format!(
            "every workload at every concurrency >= 1.0x kube-proxy: {} of {} cells{}",
            matrix.len() - missed.len(),
            matrix.len(),
            if missed.is_empty() {
                String::new()
            } else {
                format!("; missed: {}", missed.join(", "))
            }
        ),
    });

    let ratios: Vec<f64> = matrix.iter().map(|row| row.ratio).collect();
    let mean = geomean(&ratios);
    out.push(Target {
        met: mean.is_some_and(|mean| mean >= 1.3),
        text: format!(
            "geometric mean over the matrix ({} cells) >= 1.3x: {}",
            matrix.len(),
            mean.map_or("not measured".into(), |mean| format!("{mean:.2}x"))
        ),
    });

    for (role, what, at_least) in [
        (Role::Wrk, "wrk at 1 connection", 1.3),
        (Role::RedisGet, "redis GET at 1 connection", 1.3),
        (Role::Iperf3, "iperf3 1 stream", 1.5),
    ] {
        let row = of(role).find(|row| row.concurrency == 1);
        out.push(Target {
            met: row.is_some_and(|row| row.ratio >= at_least),
            text: format!(
                "{what} >= {at_least:.1}x: {}",
                row.map_or("not measured".into(), Row::versus)
            ),
        });
    }

    let short: Vec<&Row> = of(Role::ShortConnections).collect();
    let missed: Vec<String> = short
        .iter()
        .filter(|row| !meets(row.ratio, 1.2))
        .map(|row| format!("c{}", row.concurrency))
        .collect();
    out.push(Target {
        met: !short.is_empty() && missed.is_empty(),
        text: format!(
            "short connections >= 1.2x at each concurrency: {}{}",
            if short.is_empty() {
                "not measured".into()
            } else {
                short
                    .iter()
                    .map(|row| format!("c{} {:.2}x", row.concurrency, row.ratio))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if missed.is_empty() {
                String::new()
            } else {
                format!("; missed at {}", missed.join(", "))
            }
        ),
    });

    // Connections of the long-connection tools, summed over their zerohop trials.
    let mut parts = Vec::new();
    let mut met = true;
    for (role, what) in [
        (Role::Wrk, "wrk"),
        (Role::RedisGet, "redis GET"),
        (Role::RedisPipelined, "redis GET -P 16"),
        (Role::Iperf3, "iperf3"),
    ] {
        let mut counts = Counts::new();
        let mut measured = false;
        for row in of(role) {
            add(&mut counts, &row.zerohop_counts);
            measured = true;
        }
        let share = shares(&counts).connections;
        met &= share.is_some_and(|share| share >= 0.95);
        parts.push(match (measured, share) {
            (false, _) => format!("{what} not measured"),
            (true, Some(share)) => {
                let bypassed = counts.get("conns_bypassed").copied().unwrap_or(0);
                let connects: u64 = CONNECTS.iter().filter_map(|name| counts.get(*name)).sum();
                let base = connection_base(&counts);
                match counts.get("conns_sent") {
                    Some(_) => format!(
                        "{what} {} ({bypassed} of the {base} connections that sent or were \
                         translated only; {connects} connects)",
                        percent(share)
                    ),
                    None => format!("{what} {} ({bypassed} of {base})", percent(share)),
                }
            }
            (true, None) => format!("{what} n/a"),
        });
    }
    let no_counter = !rows.is_empty()
        && rows
            .iter()
            .all(|row| !row.zerohop_counts.contains_key("conns_bypassed"));
    out.push(Target {
        met,
        text: format!(
            ">= 95% of the connections of wrk, redis-benchmark and iperf3 take the bypass: {}{}",
            parts.join(", "),
            if no_counter {
                " (not measurable: the kernel has no conns_bypassed counter)"
            } else {
                ""
            }
        ),
    });

    let rr = of(Role::RrP50).next();
    out.push(Target {
        met: rr.is_some_and(|row| row.zerohop.median <= 0.5 * row.kube_proxy.median),
        text: format!(
            "64 B request/response p50 <= 0.5x kube-proxy: {}",
            rr.map_or("not measured".into(), |row| format!(
                "zerohop {} vs kube-proxy {} {} ({:.2}x)",
                number(row.zerohop.median),
                number(row.kube_proxy.median),
                row.unit,
                row.zerohop.median / row.kube_proxy.median
            ))
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> Counts {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn median_min_max() {
        assert_eq!(spread(&[]), None);
        let odd = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        let even = spread(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        // One wild trial moves the median by nothing.
        assert_eq!(
            spread(&[10.0, 11.0, 12.0, 13.0, 1000.0]).unwrap().median,
            12.0
        );
    }

    #[test]
    fn ratios_say_more_than_one_when_zerohop_is_better() {
        assert_eq!(ratio(200.0, 100.0, true), 2.0);
        assert_eq!(ratio(10.0, 30.0, false), 3.0);
        assert_eq!(ratio(60.0, 30.0, false), 0.5);
    }

    #[test]
    fn geometric_mean() {
        assert!((geomean(&[0.5, 2.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((geomean(&[1.0, 4.0, 16.0]).unwrap() - 4.0).abs() < 1e-12);
        assert_eq!(geomean(&[]), None);
        assert_eq!(geomean(&[1.0, 0.0]), None);
        assert_eq!(geomean(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn deltas_and_sums() {
        let before = counts(&[("a", 5), ("b", 7)]);
        let after = counts(&[("a", 8), ("b", 7), ("c", 2)]);
        let d = delta(&before, &after);
        assert_eq!(d, counts(&[("a", 3), ("b", 0), ("c", 2)]));
        let mut total = counts(&[("a", 1)]);
        add(&mut total, &d);
        assert_eq!(total, counts(&[("a", 4), ("b", 0), ("c", 2)]));
    }

    #[test]
    fn shares_from_todays_counters_use_the_veth() {
        let s = shares(&counts(&[
            ("translated_local", 8),
            ("bytes_redirected", 900),
            (VETH_BYTES, 100),
        ]));
        assert_eq!(s.connections, None);
        assert_eq!(s.bytes, Some(0.9));
        assert_eq!(s.bytes_basis, BytesBasis::Veth);
    }

    #[test]
    fn shares_from_the_new_counters() {
        let s = shares(&counts(&[
            ("translated_local", 8),
            ("passed_not_service", 2),
            ("conns_bypassed", 5),
            ("bytes_redirected", 300),
            ("bytes_passed", 100),
            (VETH_BYTES, 1_000_000),
        ]));
        assert_eq!(s.connections, Some(0.5));
        assert_eq!(s.bytes, Some(0.75));
        assert_eq!(s.bytes_basis, BytesBasis::Kernel);
        // The kube-proxy path: connects passed, nothing bypassed.
        let kp = shares(&counts(&[
            ("passed_not_service", 4),
            ("conns_bypassed", 0),
            (VETH_BYTES, 5000),
        ]));
        assert_eq!((kp.connections, kp.bytes), (Some(0.0), Some(0.0)));
        assert_eq!(shares(&Counts::new()).bytes, None);
    }

    #[test]
    fn the_connection_share_counts_connections_that_sent() {
        // wrk's address probe connects and closes without sending.
        let s = shares(&counts(&[
            ("translated_local", 3),
            ("conns_sent", 2),
            ("conns_bypassed", 2),
        ]));
        assert_eq!(s.connections, Some(1.0));
    }

    #[test]
    fn connections_the_policy_kept_off_the_bypass_count_against_the_share() {
        // A frontend judged short: 15 of 16 connects translated only, their
        // bytes seen by no kernel counter, so by the veth.
        let s = shares(&counts(&[
            ("translated_local", 16),
            ("local_translated_only", 15),
            ("conns_sent", 1),
            ("conns_bypassed", 1),
            ("bytes_redirected", 100),
            ("bytes_passed", 0),
            (VETH_BYTES, 1500),
        ]));
        assert_eq!(s.connections, Some(1.0 / 16.0));
        assert_eq!(s.bytes, Some(100.0 / 1600.0));
        assert_eq!(s.bytes_basis, BytesBasis::Veth);
    }

    fn row(label: &str, role: Role, concurrency: u32, zh: f64, kp: f64, higher: bool) -> Row {
        let at = |v| Spread {
            median: v,
            min: v,
            max: v,
        };
        Row {
            label: label.into(),
            unit: if higher { "req/s" } else { "us" },
            role,
            concurrency,
            zerohop: at(zh),
            kube_proxy: at(kp),
            ratio: ratio(zh, kp, higher),
            zerohop_counts: counts(&[("translated_local", 10), ("conns_bypassed", 10)]),
        }
    }

    fn verdicts(rows: &[Row]) -> Vec<bool> {
        targets(rows).iter().map(|t| t.met).collect()
    }

    #[test]
    fn all_targets_met() {
        let rows = vec![
            row("wrk", Role::Wrk, 1, 140.0, 100.0, true),
            row("wrk", Role::Wrk, 8, 200.0, 100.0, true),
            row("redis GET", Role::RedisGet, 1, 140.0, 100.0, true),
            row(
                "redis GET -P 16",
                Role::RedisPipelined,
                1,
                150.0,
                100.0,
                true,
            ),
            row("short", Role::ShortConnections, 1, 130.0, 100.0, true),
            row("short", Role::ShortConnections, 8, 125.0, 100.0, true),
            row("iperf3", Role::Iperf3, 1, 160.0, 100.0, true),
            row("rr p50", Role::RrP50, 1, 10.0, 30.0, false),
            row("extra", Role::Extra, 1, 1.0, 100.0, true),
        ];
        assert_eq!(verdicts(&rows), vec![true; 8]);
    }

    #[test]
    fn misses_are_named() {
        let mut rows = vec![
            row("wrk", Role::Wrk, 1, 120.0, 100.0, true),
            row("wrk", Role::Wrk, 8, 60.0, 100.0, true),
            row("redis GET", Role::RedisGet, 1, 140.0, 100.0, true),
            row("short", Role::ShortConnections, 1, 130.0, 100.0, true),
            row("short", Role::ShortConnections, 8, 110.0, 100.0, true),
            row("iperf3", Role::Iperf3, 1, 45.0, 100.0, true),
            row("rr p50", Role::RrP50, 1, 20.0, 30.0, false),
        ];
        rows[2].zerohop_counts = counts(&[("translated_local", 100), ("conns_bypassed", 90)]);
        let t = targets(&rows);
        assert_eq!(
            t.iter().map(|t| t.met).collect::<Vec<_>>(),
            vec![false, false, false, true, false, false, false, false]
        );
        assert!(t[0].text.contains("4 of 6 cells"), "{}", t[0].text);
        assert!(t[0].text.contains("wrk c8 0.60x"), "{}", t[0].text);
        assert!(t[0].text.contains("iperf3 c1 0.45x"), "{}", t[0].text);
        assert!(t[5].text.contains("missed at c8"), "{}", t[5].text);
        assert!(
            t[6].text.contains("redis GET 90.0% (90 of 100)"),
            "{}",
            t[6].text
        );
        assert!(
            t[6].text.contains("redis GET -P 16 not measured"),
            "{}",
            t[6].text
        );
        assert!(t[7].text.contains("(0.67x)"), "{}", t[7].text);
    }

    #[test]
    fn a_missing_counter_or_row_is_never_met() {
        let mut rows = vec![row("wrk", Role::Wrk, 1, 140.0, 100.0, true)];
        rows[0].zerohop_counts = counts(&[("translated_local", 10)]);
        let t = targets(&rows);
        assert!(!t[6].met);
        assert!(
            t[6].text.contains("no conns_bypassed counter"),
            "{}",
            t[6].text
        );
        // Nothing measured: nothing is met.
        assert!(targets(&[]).iter().all(|t| !t.met));
    }
}
