//! `nixflare info` and `nixflare reconcile`: what the cache's index says it holds, and
//! bringing the index in line with the bucket.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use indicatif::HumanBytes;

use super::client::Client;
use crate::core::api::{ReconcileStep, Stats};

pub fn info(client: &Client, json: bool) -> Result<()> {
    let stats = client.stats()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    print!("{}", describe(client.base(), &stats, now_ms()));
    Ok(())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "3h ago"-style ages.
pub fn age(then_ms: u64, now_ms: u64) -> String {
    let seconds = now_ms.saturating_sub(then_ms) / 1000;
    match seconds {
        0..=119 => format!("{seconds}s ago"),
        120..=7199 => format!("{}m ago", seconds / 60),
        7200..=172_799 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

fn describe(base: &str, stats: &Stats, now_ms: u64) -> String {
    let mut out = format!(
        "{base}\n  paths:        {}\n  NAR bytes:    {} ({} stored)\n  index:        {}\n  upstream:     {} referenced paths served by upstream caches\n",
        stats.paths,
        HumanBytes(stats.nar_bytes),
        HumanBytes(stats.stored_bytes),
        HumanBytes(stats.index_bytes),
        stats.upstream_paths,
    );
    let lap = &stats.reconcile;
    let done = match (lap.complete_lap_started_at, lap.last_pass_at) {
        (Some(began), Some(ended)) => format!(
            "last complete lap began {}, ended {}: every narinfo in the bucket before it is indexed",
            age(began, now_ms),
            age(ended, now_ms)
        ),
        _ => "no complete lap yet: the GC deletes nothing until one completes".to_owned(),
    };
    let running = match (lap.after.as_str(), lap.lap_started_at) {
        ("", _) => String::new(),
        (after, Some(began)) => format!("; a lap began {} and is past {after}", age(began, now_ms)),
        (after, None) => format!("; a lap is past {after}"),
    };
    out += &format!("  reconcile:    {done}{running}\n");
    if let Some(gc) = &stats.gc {
        let state = match (gc.phase, gc.finished_at) {
            (crate::core::api::GcPhase::Done, Some(at)) => format!("done {}", age(at, now_ms)),
            (phase, _) => format!("under way ({phase:?})"),
        };
        let kept = if gc.roots_since.is_none() && gc.budget_bytes.is_none() {
            "every path kept (no RETAIN_DAYS or MAX_CACHE_BYTES)".to_owned()
        } else {
            format!("{} paths kept", gc.kept_paths)
        };
        out += &format!(
            "  gc:           pass {} {state}: {} paths and {} objects removed, {kept}\n",
            gc.run, gc.removed_paths, gc.removed_objects
        );
    }
    if !stats.recent.is_empty() {
        out += "  recent publishes:\n";
        for publish in &stats.recent {
            let by = publish
                .subject
                .as_deref()
                .unwrap_or("(found in the bucket)");
            out += &format!(
                "    {}  {}  by {by}\n",
                age(publish.published_at, now_ms),
                publish.store_path
            );
        }
    }
    out
}

pub fn reconcile(client: &Client, json: bool) -> Result<()> {
    let started = Instant::now();
    let mut total = ReconcileStep {
        listed: 0,
        indexed: 0,
        removed: 0,
        unreadable: 0,
        after: String::new(),
        pass_complete: false,
    };
    let mut steps = 0u64;
    // A pass the cron left half-done is finished first, then one whole pass is made, so
    // everything in the bucket now is looked at.
    let mut passes_needed = match client.stats()?.reconcile.after.as_str() {
        "" => 1,
        _ => 2,
    };
    while passes_needed > 0 {
        let step = client.reconcile_step()?;
        steps += 1;
        total.listed += step.listed;
        total.indexed += step.indexed;
        total.removed += step.removed;
        total.unreadable += step.unreadable;
        if step.pass_complete {
            passes_needed -= 1;
        }
        if !json && steps.is_multiple_of(20) {
            eprintln!(
                "  {} keys listed, {} indexed, {} removed so far",
                total.listed, total.indexed, total.removed
            );
        }
    }
    total.pass_complete = true;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string_pretty(&total)?);
    } else {
        eprintln!(
            "reconciled {} in {seconds:.1}s ({steps} steps): {} top-level keys, {} narinfos indexed, {} stale entries removed, {} unreadable narinfos left alone",
            client.base(),
            total.listed,
            total.indexed,
            total.removed,
            total.unreadable
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::api::{Publish, ReconcileState};

    #[test]
    fn stats_read_as_a_summary() {
        let stats = Stats {
            paths: 2,
            nar_bytes: 3 << 20,
            stored_bytes: 1 << 20,
            index_bytes: 49152,
            upstream_paths: 1,
            recent: vec![Publish {
                store_path: "7rjj86a15146cq1d3qy068lml7n8ykzm-hello".into(),
                published_at: 1_000,
                subject: Some("ci".into()),
                token_id: None,
            }],
            reconcile: ReconcileState {
                after: String::new(),
                last_pass_at: None,
                complete_lap_started_at: None,
                lap_started_at: None,
            },
            gc: None,
        };
        let text = describe("http://c", &stats, 7_201_000);
        assert!(text.contains("paths:        2\n"), "{text}");
        assert!(text.contains("3.00 MiB (1.00 MiB stored)"), "{text}");
        assert!(
            text.contains("2h ago  7rjj86a15146cq1d3qy068lml7n8ykzm-hello  by ci"),
            "{text}"
        );
        assert!(text.contains("no complete lap yet"), "{text}");
    }
}
