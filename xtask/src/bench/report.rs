//! What a run shows: the results table, the ratio grid, the targets, the
//! `--json` records and the `--svg` charts.

use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{
    idle::Idle,
    stats::{self, number, shares, spread, BytesBasis, Counts, Row, Shares, Spread},
    workload::{Route, Workload},
};

/// One client run.
pub struct Trial {
    pub route: Route,
    /// One per metric of the workload.
    pub values: Vec<f64>,
    /// Counter deltas over the run, the client's veth bytes included.
    pub counts: Counts,
    /// What the client reported as errors (wrk's socket errors), if anything.
    pub errors: Option<String>,
}

/// The trials of one workload at one concurrency, in the order they ran.
pub struct Cell {
    pub workload: Workload,
    pub concurrency: u32,
    pub trials: Vec<Trial>,
}

/// The whole matrix under one idle behaviour.
pub struct Run {
    pub idle: Idle,
    pub halt_poll_ns: Option<u64>,
    pub cells: Vec<Cell>,
}

impl Cell {
    fn trials_of(&self, route: Route) -> impl Iterator<Item = &Trial> {
        self.trials.iter().filter(move |trial| trial.route == route)
    }

    pub fn values(&self, route: Route, metric: usize) -> Vec<f64> {
        self.trials_of(route)
            .map(|trial| trial.values[metric])
            .collect()
    }

    pub fn spread(&self, route: Route, metric: usize) -> Option<Spread> {
        spread(&self.values(route, metric))
    }

    /// The route's counter deltas, summed over its trials.
    pub fn counts(&self, route: Route) -> Counts {
        let mut total = Counts::new();
        for trial in self.trials_of(route) {
            stats::add(&mut total, &trial.counts);
        }
        total
    }

    /// `wrk`, or `zh-bench rr 64 B p50` for a workload with several metrics.
    pub fn label(&self, metric: usize) -> String {
        match self.workload.metrics[metric].name {
            "" => self.workload.name.to_owned(),
            name => format!("{} {name}", self.workload.name),
        }
    }

    /// One row per metric.
    pub fn rows(&self) -> Vec<Row> {
        (0..self.workload.metrics.len())
            .filter_map(|m| {
                let metric = self.workload.metrics[m];
                let zerohop = self.spread(Route::Zerohop, m)?;
                let kube_proxy = self.spread(Route::KubeProxy, m)?;
                Some(Row {
                    label: self.label(m),
                    unit: metric.unit,
                    role: metric.role,
                    concurrency: self.concurrency,
                    ratio: stats::ratio(zerohop.median, kube_proxy.median, metric.higher_is_better),
                    zerohop,
                    kube_proxy,
                    zerohop_counts: self.counts(Route::Zerohop),
                })
            })
            .collect()
    }
}

impl Run {
    pub fn rows(&self) -> Vec<Row> {
        self.cells.iter().flat_map(Cell::rows).collect()
    }

    pub fn title(&self) -> String {
        let ns = self
            .halt_poll_ns
            .map_or("no haltpoll parameter".into(), |ns| {
                format!("guest_halt_poll_ns {ns}")
            });
        format!("idle {} ({ns})", self.idle.name())
    }
}

fn percent(share: Option<f64>) -> String {
    share.map_or("n/a".into(), |share| format!("{:.1}%", share * 100.0))
}

/// Bytes in kB/MB/GB (10^3).
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        _ if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        _ if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        _ if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        _ => format!("{n:.0} B"),
    }
}

/// `bypass conns 100.0% bytes 99.9% (veth)` for zerohop; the veth bytes for all.
pub fn shares_text(route: Route, counts: &Counts) -> String {
    let veth = bytes(counts.get(stats::VETH_BYTES).copied().unwrap_or(0));
    if route != Route::Zerohop {
        return format!("veth {veth}");
    }
    let Shares {
        connections,
        bytes,
        bytes_basis,
    } = shares(counts);
    format!(
        "bypass conns {} bytes {} ({}), veth {veth}",
        percent(connections),
        percent(bytes),
        bytes_basis.name()
    )
}

pub fn spread_text(spread: Option<Spread>) -> String {
    spread.map_or("-".into(), |s| {
        format!("{} [{}–{}]", number(s.median), number(s.min), number(s.max))
    })
}

/// The table, the ratio grid and the targets of one run.
pub fn print_run(run: &Run, trials: usize) {
    println!("\n== RESULTS, {}", run.title());
    println!(
        "{:<27} {:>3}  {:<7} {:<27} {:<27} {:>6}  {:>6} {:>6}  UDS (floor)",
        "WORKLOAD",
        "C",
        "UNIT",
        "ZEROHOP median [min–max]",
        "KUBE-PROXY median [min–max]",
        "RATIO",
        "CONNS",
        "BYTES",
    );
    for cell in &run.cells {
        for (m, metric) in cell.workload.metrics.iter().enumerate() {
            let shares = shares(&cell.counts(Route::Zerohop));
            let ratio = match (
                cell.spread(Route::Zerohop, m),
                cell.spread(Route::KubeProxy, m),
            ) {
                (Some(z), Some(k)) => format!(
                    "{:.2}x",
                    stats::ratio(z.median, k.median, metric.higher_is_better)
                ),
                _ => "-".into(),
            };
            println!(
                "{:<27} {:>3}  {:<7} {:<27} {:<27} {:>6}  {:>6} {:>6}  {}",
                cell.label(m),
                cell.concurrency,
                metric.unit,
                spread_text(cell.spread(Route::Zerohop, m)),
                spread_text(cell.spread(Route::KubeProxy, m)),
                ratio,
                percent(shares.connections),
                percent(shares.bytes),
                spread_text(cell.spread(Route::Uds, m)),
            );
        }
    }
    let on_veth =
        |cell: &Cell| shares(&cell.counts(Route::Zerohop)).bytes_basis == BytesBasis::Veth;
    let basis = if run.cells.iter().all(|cell| !on_veth(cell)) {
        "the kernel's bytes_passed"
    } else if run.cells.iter().all(on_veth) {
        "the client's veth, headers and handshakes included: a lower bound"
    } else {
        "the kernel's bytes_passed, or, in cells where connections were translated \
         without the bypass, the client's veth (headers included: a lower bound)"
    };
    println!(
        "Medians of {trials} interleaved trials per path, [min–max] over them. C: connections \
         (iperf3: parallel streams).\nRATIO: > 1 means zerohop is better: zerohop ÷ kube-proxy \
         for rates, kube-proxy ÷ zerohop for latencies (µs).\nCONNS, BYTES: share of the zerohop \
         trials' connections and bytes that took the bypass (kernel counters; bytes not \
         bypassed counted from {basis}).\nkube-proxy: Service K, only in iptables DNAT rules, \
         measured with zerohop installed but not knowing that Service."
    );

    let rows = run.rows();
    let concurrencies: BTreeSet<u32> = rows.iter().map(|row| row.concurrency).collect();
    let mut header = format!("{:<27}", "RATIO BY CONCURRENCY");
    for c in &concurrencies {
        let _ = write!(header, " {:>6}", format!("c{c}"));
    }
    println!("\n{header}");
    let mut labels: Vec<&str> = Vec::new();
    for row in &rows {
        if !labels.contains(&row.label.as_str()) {
            labels.push(&row.label);
        }
    }
    for label in labels {
        let mut line = format!("{label:<27}");
        for c in &concurrencies {
            let cell = rows
                .iter()
                .find(|row| row.label == label && row.concurrency == *c)
                .map_or("".into(), |row| format!("{:.2}", row.ratio));
            let _ = write!(line, " {cell:>6}");
        }
        println!("{line}");
    }

    println!(
        "\nTARGETS, {} (medians of interleaved trials, one run; matrix: wrk, short conns, \
         redis GET, redis GET -P 16, iperf3)",
        run.title()
    );
    for target in stats::targets(&rows) {
        println!(
            "  {} {}",
            if target.met { "MET   " } else { "MISSED" },
            target.text
        );
    }
}

/// One record per run, workload metric, concurrency and path.
pub fn json(runs: &[Run], node: Value) -> Value {
    let mut records = Vec::new();
    for run in runs {
        for cell in &run.cells {
            for (m, metric) in cell.workload.metrics.iter().enumerate() {
                let ratio = match (
                    cell.spread(Route::Zerohop, m),
                    cell.spread(Route::KubeProxy, m),
                ) {
                    (Some(z), Some(k)) => {
                        Some(stats::ratio(z.median, k.median, metric.higher_is_better))
                    }
                    _ => None,
                };
                for route in cell.workload.routes() {
                    let Some(spread) = cell.spread(route, m) else {
                        continue;
                    };
                    let share_json = |counts: &Counts| {
                        let s = shares(counts);
                        json!({
                            "connections": s.connections,
                            "bytes": s.bytes,
                            "bytes_basis": s.bytes_basis.name(),
                        })
                    };
                    let trials: Vec<&Trial> = cell.trials_of(route).collect();
                    records.push(json!({
                        "idle": run.idle.name(),
                        "guest_halt_poll_ns": run.halt_poll_ns,
                        "workload": cell.workload.name,
                        "metric": metric.name,
                        "unit": metric.unit,
                        "higher_is_better": metric.higher_is_better,
                        "concurrency": cell.concurrency,
                        "path": route.name(),
                        "trials": trials.iter().map(|t| t.values[m]).collect::<Vec<_>>(),
                        "median": spread.median,
                        "min": spread.min,
                        "max": spread.max,
                        "ratio": ratio,
                        "bypass": share_json(&cell.counts(route)),
                        "trial_bypass": trials.iter().map(|t| share_json(&t.counts)).collect::<Vec<_>>(),
                        "counters": cell.counts(route),
                        "errors": trials.iter().filter_map(|t| t.errors.clone()).collect::<Vec<_>>(),
                    }));
                }
            }
        }
    }
    json!({ "node": node, "records": records })
}

pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Ratio vs concurrency, one line per workload metric, one panel per run.
pub fn svg(runs: &[Run], subtitle: &str) -> Result<String> {
    use plotters::prelude::*;

    let mut out = String::new();
    {
        let height = 520 * runs.len() as u32 + 40;
        let root = SVGBackend::with_string(&mut out, (1000, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!("zerohop ÷ kube-proxy, same node ({subtitle})"),
            ("sans-serif", 22),
        )?;
        for (panel, run) in root.split_evenly((runs.len(), 1)).iter().zip(runs) {
            let rows = run.rows();
            let top = rows.iter().map(|row| row.ratio).fold(1.5, f64::max) * 1.1;
            // x is log2 of the concurrency: 1, 2, 4 … 64 evenly spaced.
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!("{}: > 1 means zerohop is better", run.title()),
                    ("sans-serif", 16),
                )
                .margin(20)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(-0.3f64..6.3f64, 0f64..top)?;
            chart
                .configure_mesh()
                .x_labels(7)
                .x_label_formatter(&|x| format!("{}", 2f64.powf(*x).round()))
                .x_desc("concurrency: connections (iperf3: streams)")
                .y_desc("ratio (latency: kube-proxy ÷ zerohop)")
                .draw()?;
            chart
                .draw_series(LineSeries::new(
                    [(-0.3, 1.0), (6.3, 1.0)],
                    BLACK.stroke_width(1),
                ))?
                .label("1.0: as fast as kube-proxy")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
            let mut labels: Vec<&str> = Vec::new();
            for row in &rows {
                if !labels.contains(&row.label.as_str()) {
                    labels.push(&row.label);
                }
            }
            for (i, label) in labels.into_iter().enumerate() {
                let colour = Palette99::pick(i).to_rgba();
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|row| row.label == label)
                    .map(|row| (f64::from(row.concurrency).log2(), row.ratio))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
                chart.draw_series(
                    points
                        .iter()
                        .map(|point| Circle::new(*point, 4, colour.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
    }
    Ok(out)
}

/// One line of a chart: (x, y) points in x order.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One panel of a chart, with its lines.
pub struct Panel {
    pub title: String,
    pub lines: Vec<Line>,
}

/// A line chart per panel, x on a log2 scale (concurrencies 1, 2, 4 …),
/// y from 0.
pub fn lines_svg(title: &str, x_desc: &str, y_desc: &str, panels: &[Panel]) -> Result<String> {
    use plotters::prelude::*;

    let mut out = String::new();
    {
        let height = 520 * panels.len().max(1) as u32 + 40;
        let root = SVGBackend::with_string(&mut out, (1000, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        for (area, panel) in root
            .split_evenly((panels.len().max(1), 1))
            .iter()
            .zip(panels)
        {
            let all = || panel.lines.iter().flat_map(|line| line.points.iter());
            let top = all().map(|p| p.1).fold(1.0, f64::max) * 1.1;
            let right = all().map(|p| p.0.max(1.0).log2()).fold(1.0, f64::max) + 0.3;
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 16))
                .margin(20)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.3f64..right, 0f64..top)?;
            chart
                .configure_mesh()
                .x_label_formatter(&|x| format!("{}", 2f64.powf(*x).round()))
                .x_desc(x_desc)
                .y_desc(y_desc)
                .draw()?;
            for (i, line) in panel.lines.iter().enumerate() {
                let colour = Palette99::pick(i).to_rgba();
                let points: Vec<(f64, f64)> = line
                    .points
                    .iter()
                    .map(|&(x, y)| (x.max(1.0).log2(), y))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                    .label(line.label.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
                chart.draw_series(
                    points
                        .iter()
                        .map(|point| Circle::new(*point, 4, colour.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{idle::Idle, workload::workloads};

    fn trial(route: Route, value: f64) -> Trial {
        Trial {
            route,
            values: vec![value],
            counts: [
                ("translated_local".to_owned(), 4),
                ("bytes_redirected".to_owned(), 900),
                (stats::VETH_BYTES.to_owned(), 100),
            ]
            .into(),
            errors: None,
        }
    }

    fn run() -> Run {
        let all = workloads(&[1, 8]);
        let cells = [1, 8]
            .into_iter()
            .map(|c| Cell {
                workload: all[0].clone(),
                concurrency: c,
                trials: vec![
                    trial(Route::Zerohop, 120.0),
                    trial(Route::KubeProxy, 100.0),
                    trial(Route::KubeProxy, 90.0),
                    trial(Route::Zerohop, 100.0),
                    trial(Route::Zerohop, 110.0),
                    trial(Route::KubeProxy, 80.0),
                ],
            })
            .collect();
        Run {
            idle: Idle::AsIs,
            halt_poll_ns: Some(0),
            cells,
        }
    }

    #[test]
    fn rows_are_ratios_of_medians() {
        let rows = run().rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].zerohop.median, 110.0);
        assert_eq!(rows[0].kube_proxy.median, 90.0);
        assert!((rows[0].ratio - 110.0 / 90.0).abs() < 1e-12);
        assert_eq!(rows[0].zerohop_counts["bytes_redirected"], 2700);
    }

    #[test]
    fn json_has_every_trial_and_share() {
        let value = json(&[run()], json!({}));
        let records = value["records"].as_array().unwrap();
        assert_eq!(records.len(), 4);
        let z = &records[0];
        assert_eq!(z["path"], "zerohop");
        assert_eq!(z["trials"], json!([120.0, 100.0, 110.0]));
        assert_eq!(z["median"], 110.0);
        assert_eq!(
            (z["min"].clone(), z["max"].clone()),
            (json!(100.0), json!(120.0))
        );
        assert_eq!(z["bypass"]["bytes"], 0.9);
        assert_eq!(z["bypass"]["connections"], Value::Null);
        assert_eq!(z["trial_bypass"].as_array().unwrap().len(), 3);
        assert_eq!(records[1]["path"], "kube-proxy");
    }

    #[test]
    fn svg_draws_every_workload() {
        let text = svg(&[run(), run()], "test").unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..100]);
        // One panel per run, a legend entry per workload in each.
        assert_eq!(text.matches("\nwrk\n").count(), 2, "{text}");
    }

    #[test]
    fn line_charts_draw_every_line_of_every_panel() {
        let line = |label: &str| Line {
            label: label.to_owned(),
            points: vec![(1.0, 10.0), (8.0, 30.0), (64.0, 20.0)],
        };
        let panels = [
            Panel {
                title: "one".into(),
                lines: vec![line("waypoint"), line("nginx")],
            },
            Panel {
                title: "two".into(),
                lines: vec![line("waypoint")],
            },
        ];
        let text = lines_svg("title", "x", "y", &panels).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..100]);
        assert_eq!(text.matches("\nwaypoint\n").count(), 2, "{text}");
        assert_eq!(text.matches("\nnginx\n").count(), 1, "{text}");
    }
}
