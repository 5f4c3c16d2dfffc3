//! `_nixflare/metrics`: the index's numbers as Prometheus text (exposition format
//! 0.0.4), for an operator's scraper with a `metrics` token. docs/metrics.md says what
//! each counts and what it cannot; docs/grafana-dashboard.json charts them.
//!
//! Only what the index knows is here: every number comes from one call to the Durable
//! Object that a scrape makes. Anonymous reads (narinfos, NARs) are not counted: they
//! never reach anything that could count them without slowing them down, and
//! Cloudflare's own analytics count them by status.

use core::fmt::{Display, Write as _};

use crate::core::api::render;
use crate::core::index::Gauges;

/// The Content-Type of Prometheus text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the worker's configuration adds to the index's gauges.
pub struct Settings {
    pub retain_days: Option<u64>,
    pub budget_bytes: Option<u64>,
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
                .collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

pub fn render_text(gauges: &Gauges, settings: &Settings) -> String {
    let mut out = Text(String::new());
    let stats = &gauges.stats;
    out.gauge(
        "nixflare_paths",
        "Store paths the cache holds (published narinfos).",
        stats.paths,
    );
    out.gauge(
        "nixflare_nar_bytes",
        "Sum of NarSize of the paths held: their size unpacked.",
        stats.nar_bytes,
    );
    out.gauge(
        "nixflare_stored_bytes",
        "Bytes of NAR files in the bucket for the paths held (FileSize of each file once).",
        stats.stored_bytes,
    );
    out.gauge(
        "nixflare_index_bytes",
        "Size of the index's SQLite database.",
        stats.index_bytes,
    );
    out.gauge(
        "nixflare_upstream_paths",
        "References the index knows an upstream cache serves.",
        stats.upstream_paths,
    );
    out.gauge("nixflare_pins", "GC pins.", gauges.pins);
    out.gauge(
        "nixflare_reservations",
        "Publishes under way: reservations holding their references.",
        gauges.reservations,
    );
    if let Some(days) = settings.retain_days {
        out.gauge(
            "nixflare_retain_days",
            "RETAIN_DAYS: days a pushed path stays a GC root.",
            days,
        );
    }
    if let Some(bytes) = settings.budget_bytes {
        out.gauge(
            "nixflare_budget_bytes",
            "MAX_CACHE_BYTES: the NAR bytes the kept closures may take.",
            bytes,
        );
    }
    let reconcile = &stats.reconcile;
    out.gauge(
        "nixflare_reconcile_lap_running",
        "1 while a reconcile lap (index against bucket) is under way.",
        u8::from(reconcile.lap_started_at.is_some() || !reconcile.after.is_empty()),
    );
    if let Some(at) = reconcile.last_pass_at {
        out.gauge(
            "nixflare_reconcile_last_lap_timestamp_seconds",
            "When the last complete reconcile lap ended.",
            seconds(at),
        );
    }
    if let Some(gc) = &stats.gc {
        out.gauge(
            "nixflare_gc_pass",
            "Number of the last or current GC pass.",
            gc.run,
        );
        out.family(
            "nixflare_gc_phase",
            "gauge",
            "The last or current GC pass's phase (1 for the phase it is in).",
        );
        let phase = render(&gc.phase);
        out.sample(
            "nixflare_gc_phase",
            &[("phase", phase.trim_matches('"'))],
            1,
        );
        out.gauge(
            "nixflare_gc_pass_started_timestamp_seconds",
            "When the last or current GC pass started.",
            seconds(gc.started_at),
        );
        if let Some(at) = gc.finished_at {
            out.gauge(
                "nixflare_gc_pass_finished_timestamp_seconds",
                "When the last GC pass finished.",
                seconds(at),
            );
        }
        for (name, help, value) in [
            (
                "kept_paths",
                "Paths the last or current GC pass keeps.",
                gc.kept_paths,
            ),
            (
                "kept_bytes",
                "NAR bytes (FileSize) it keeps.",
                gc.kept_bytes,
            ),
            ("doomed_paths", "Paths it found to go.", gc.doomed_paths),
            (
                "removed_paths",
                "Paths it removed so far.",
                gc.removed_paths,
            ),
            (
                "removed_bytes",
                "NAR bytes (FileSize) it removed so far.",
                gc.removed_bytes,
            ),
            (
                "spared_paths",
                "Doomed paths a push, reference or pin saved.",
                gc.spared_paths,
            ),
            (
                "held_paths",
                "Doomed paths left for a later pass (edge cache).",
                gc.held_paths,
            ),
            (
                "removed_objects",
                "Unused objects (NARs, side files) it removed.",
                gc.removed_objects,
            ),
        ] {
            out.gauge(&format!("nixflare_gc_{name}"), help, value);
        }
    }
    let counter = "nixflare_index_operations_total";
    out.family(
        counter,
        "counter",
        "Operations the worker asked of the index (publishes, deletes, queries, pins, GC and reconcile steps), by name and outcome.",
    );
    for op in &gauges.operations {
        out.sample(
            counter,
            &[("op", &op.op), ("outcome", &op.outcome)],
            op.count,
        );
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::api::{GcPhase, GcRun, ReconcileState, Stats};
    use crate::core::index::OperationCount;

    #[test]
    fn renders_every_family_once_with_help_and_type() {
        let gauges = Gauges {
            stats: Stats {
                paths: 3,
                nar_bytes: 300,
                stored_bytes: 120,
                index_bytes: 4096,
                upstream_paths: 1,
                recent: Vec::new(),
                reconcile: ReconcileState {
                    after: String::new(),
                    last_pass_at: Some(1_500),
                    complete_lap_started_at: Some(1_000),
                    lap_started_at: None,
                },
                gc: Some(GcRun {
                    run: 2,
                    phase: GcPhase::Done,
                    started_at: 2_000,
                    finished_at: Some(3_250),
                    roots_since: None,
                    budget_bytes: None,
                    grace_ms: 0,
                    kept_paths: 3,
                    kept_bytes: 120,
                    over_budget: false,
                    doomed_paths: 1,
                    removed_paths: 1,
                    removed_bytes: 40,
                    spared_paths: 0,
                    held_paths: 0,
                    removed_objects: 2,
                    listed_keys: 9,
                    waiting_for_lap: false,
                }),
            },
            pins: 1,
            reservations: 0,
            operations: vec![OperationCount {
                op: "finish/batch".into(),
                outcome: "ok".into(),
                count: 7,
            }],
        };
        let text = render_text(
            &gauges,
            &Settings {
                retain_days: Some(30),
                budget_bytes: None,
            },
        );
        assert!(
            text.contains("# TYPE nixflare_paths gauge\nnixflare_paths 3\n"),
            "{text}"
        );
        assert!(
            text.contains("nixflare_gc_phase{phase=\"done\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("nixflare_gc_pass_finished_timestamp_seconds 3.250\n"));
        assert!(text
            .contains("nixflare_index_operations_total{op=\"finish/batch\",outcome=\"ok\"} 7\n"));
        assert!(text.contains("nixflare_retain_days 30\n") && !text.contains("budget_bytes"));
        // One TYPE line per family, each before its samples.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), types.len());
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
