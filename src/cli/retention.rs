//! `nixflare pin` and `nixflare gc`: what a cache keeps, and removing the rest now
//! (docs/gc.md).

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _, Result};
use indicatif::HumanBytes;

use super::client::Client;
use crate::core::api::{GcPhase, GcPlan, GcProgress, GcRule, GcRun, PinRequest, Pins};
use crate::core::nix::store_path::StorePathBaseName;
use crate::core::pin_name::PinName;

fn pin_name(name: &str) -> Result<PinName> {
    name.parse().map_err(|err| anyhow!("{name:?}: {err}"))
}

/// A store path as given (`/nix/store/…`, or a symlink to one such as `./result`), as
/// the base name the cache knows it by.
fn base_name(path: &str, store_dir: &str) -> Result<StorePathBaseName> {
    let given = Path::new(path);
    let resolved = if given.is_symlink() {
        std::fs::canonicalize(given).with_context(|| format!("resolving {path}"))?
    } else {
        given.to_path_buf()
    };
    let text = resolved.to_string_lossy();
    let base = text
        .strip_prefix(store_dir)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| anyhow!("{path} is not a path in {store_dir}"))?;
    base.parse()
        .map_err(|_| anyhow!("{path} is not a store path"))
}

pub fn pin_add(client: &Client, name: &str, path: &str, keep_days: Option<u64>) -> Result<()> {
    let name = pin_name(name)?;
    let store_dir = client.info()?.store_dir;
    let store_path = base_name(path, &store_dir)?;
    let pin = client.set_pin(
        &name,
        &PinRequest {
            store_path,
            keep_days,
        },
    )?;
    let until = match pin.expires_at {
        Some(_) => format!("for {} days", keep_days.unwrap_or_default()),
        None => "until removed".to_owned(),
    };
    eprintln!(
        "pinned {store_dir}/{} as {} {until}: its closure stays in {}",
        pin.store_path,
        pin.name,
        client.base()
    );
    Ok(())
}

pub fn pin_remove(client: &Client, name: &str) -> Result<()> {
    let name = pin_name(name)?;
    client.remove_pin(&name)?;
    eprintln!("removed pin {name} from {}", client.base());
    Ok(())
}

pub fn pin_list(client: &Client, json: bool) -> Result<()> {
    let pins = client.pins()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&pins)?);
        return Ok(());
    }
    print!("{}", describe_pins(&pins, super::inventory::now_ms()));
    Ok(())
}

fn describe_pins(pins: &Pins, now_ms: u64) -> String {
    if pins.pins.is_empty() {
        return "no pins\n".to_owned();
    }
    let mut out = String::new();
    for pin in &pins.pins {
        let until = match pin.expires_at {
            None => "until removed".to_owned(),
            Some(at) if at <= now_ms => "expired".to_owned(),
            Some(at) => format!("{} more days", (at - now_ms).div_ceil(86_400_000)),
        };
        out += &format!(
            "{}  {}  pinned {} by {}, {until}\n",
            pin.name,
            pin.store_path,
            super::inventory::age(pin.pinned_at, now_ms),
            pin.subject.as_deref().unwrap_or("(hidden)")
        );
    }
    out
}

/// `nixflare gc --dry-run`: marks (removing nothing) and shows what a pass would remove.
pub fn plan(client: &Client, json: bool) -> Result<()> {
    let (run, plan) = loop {
        let GcProgress { run, plan, .. } = client.gc_plan()?;
        match plan {
            Some(plan) => break (run, plan),
            None if matches!(run.phase, GcPhase::Idle | GcPhase::Done) => {
                bail!("the cache answered a dry run without a plan")
            }
            None => {}
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&GcProgress {
                run,
                plan: Some(plan),
                index_requests: 0,
                r2_operations: 0,
            })?
        );
        return Ok(());
    }
    print!(
        "{}",
        describe_plan(client.base(), &run, &plan, super::inventory::now_ms())
    );
    Ok(())
}

fn describe_plan(base: &str, run: &GcRun, plan: &GcPlan, now_ms: u64) -> String {
    if run.roots_since.is_none() && run.budget_bytes.is_none() && plan.path_count == 0 {
        return format!(
            "{base}: neither RETAIN_DAYS nor MAX_CACHE_BYTES is set: every path is kept; a pass only removes orphans past their grace period ({} paths removed earlier are still within it)\n",
            plan.in_grace
        );
    }
    let mut out = format!(
        "{base}: a GC pass would remove {} paths ({} of NARs) and keep {} ({})\n",
        plan.path_count,
        HumanBytes(plan.path_bytes),
        run.kept_paths,
        HumanBytes(run.kept_bytes)
    );
    for path in &plan.paths {
        let rule = match path.rule {
            GcRule::Retention => "retention",
            GcRule::Budget => "budget   ",
        };
        out += &format!(
            "  {rule}  pushed {:>8}  {:>10}  {}\n",
            super::inventory::age(path.pushed_at, now_ms),
            HumanBytes(path.file_size).to_string(),
            path.store_path
        );
    }
    if plan.path_count > plan.paths.len() as u64 {
        out += &format!(
            "  … and {} more\n",
            plan.path_count - plan.paths.len() as u64
        );
    }
    out += "  retention: no root pushed within RETAIN_DAYS and no pin reaches it; budget: only roots that do not fit MAX_CACHE_BYTES beside newer ones reach it\n";
    if plan.pending_paths > 0 {
        out += &format!(
            "  {} paths an earlier step decided to remove (a request died before deleting them) go first\n",
            plan.pending_paths
        );
    }
    if run.waiting_for_lap {
        out += "  the sweep waits for a reconcile lap begun after this pass (so no narinfo written behind the worker's back still needs what it removes); `nixflare gc` and the cron take its steps\n";
    }
    if run.over_budget {
        out += &format!(
            "  warning: pins alone hold {}, more than MAX_CACHE_BYTES\n",
            HumanBytes(run.kept_bytes)
        );
    }
    if plan.in_grace > 0 {
        out += &format!(
            "  the NARs and side files of {} paths removed earlier go once their grace period ({}h) is over\n",
            plan.in_grace,
            run.grace_ms / 3_600_000
        );
    }
    out
}

/// `nixflare gc`: finishes the pass under way, then runs a whole new one.
pub fn run(client: &Client, json: bool) -> Result<()> {
    let started = Instant::now();
    let under_way = client
        .stats()?
        .gc
        .filter(|run| run.phase != GcPhase::Done)
        .map(|run| run.run);
    let first = client.gc_run(0)?;
    let mut index_requests = first.index_requests;
    let mut r2_operations = first.r2_operations;
    let first = first.run;
    let target = first.run + 1;
    let mut requests = 1u64;
    let mut passes: Vec<GcRun> = Vec::new();
    let finished_under_way = |run: &GcRun, passes: &mut Vec<GcRun>| {
        if run.phase == GcPhase::Done && Some(run.run) == under_way && passes.is_empty() {
            passes.push(run.clone());
        }
    };
    finished_under_way(&first, &mut passes);
    loop {
        // Pass number `target` is started once the one under way is done.
        let progress = client.gc_run(target)?;
        requests += 1;
        index_requests += progress.index_requests;
        r2_operations += progress.r2_operations;
        let run = progress.run;
        finished_under_way(&run, &mut passes);
        if run.run >= target && run.phase == GcPhase::Done {
            passes.push(run);
            break;
        }
        if !json && requests.is_multiple_of(20) {
            eprintln!(
                "  pass {} {:?}: {} paths, {} objects removed so far",
                run.run, run.phase, run.removed_paths, run.removed_objects
            );
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "passes": passes,
                "requests": requests,
                "indexRequests": index_requests,
                "r2Operations": r2_operations,
            }))?
        );
        return Ok(());
    }
    let seconds = started.elapsed().as_secs_f64();
    for run in &passes {
        eprintln!("{}", describe_run(client.base(), run, seconds, requests));
    }
    Ok(())
}

fn describe_run(base: &str, run: &GcRun, seconds: f64, requests: u64) -> String {
    let kept = if run.roots_since.is_none() && run.budget_bytes.is_none() {
        "kept every path (no RETAIN_DAYS or MAX_CACHE_BYTES)".to_owned()
    } else {
        format!(
            "kept {} paths ({})",
            run.kept_paths,
            HumanBytes(run.kept_bytes)
        )
    };
    let mut out = format!(
        "gc of {base}: pass {} in {seconds:.1}s ({requests} requests): {kept}, removed {} paths ({} of NARs, deleted after the {}h grace period), deleted {} objects past their grace of {} listed",
        run.run,
        run.removed_paths,
        HumanBytes(run.removed_bytes),
        run.grace_ms / 3_600_000,
        run.removed_objects,
        run.listed_keys
    );
    if run.spared_paths > 0 {
        out += &format!(
            "; {} paths were pushed, referenced or pinned during the pass and stay",
            run.spared_paths
        );
    }
    if run.held_paths > 0 {
        out += &format!(
            "; {} paths wait a day for edge copies of what referred to them to expire (the next passes take them)",
            run.held_paths
        );
    }
    if run.over_budget {
        out += &format!(
            "; warning: pins alone hold {}, more than MAX_CACHE_BYTES",
            HumanBytes(run.kept_bytes)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::api::{GcCandidate, Pin};

    fn run() -> GcRun {
        GcRun {
            run: 3,
            phase: GcPhase::Done,
            started_at: 0,
            finished_at: Some(1),
            roots_since: Some(0),
            budget_bytes: None,
            grace_ms: 48 * 3_600_000,
            kept_paths: 5,
            kept_bytes: 2048,
            over_budget: false,
            doomed_paths: 2,
            removed_paths: 2,
            removed_bytes: 1024,
            spared_paths: 1,
            held_paths: 0,
            removed_objects: 4,
            listed_keys: 20,
            waiting_for_lap: false,
        }
    }

    #[test]
    fn a_plan_names_each_path_and_its_rule() {
        let plan = GcPlan {
            paths: vec![GcCandidate {
                store_path: "7rjj86a15146cq1d3qy068lml7n8ykzm-hello".parse().unwrap(),
                rule: GcRule::Retention,
                file_size: 1024,
                pushed_at: 0,
            }],
            path_count: 2,
            path_bytes: 2048,
            in_grace: 3,
            pending_paths: 1,
        };
        let text = describe_plan("http://c", &run(), &plan, 40 * 86_400_000);
        assert!(
            text.contains("1 paths an earlier step decided to remove"),
            "{text}"
        );
        assert!(
            text.contains("would remove 2 paths (2.00 KiB of NARs) and keep 5"),
            "{text}"
        );
        assert!(text.contains("retention  pushed  40d ago"), "{text}");
        assert!(
            text.contains("7rjj86a15146cq1d3qy068lml7n8ykzm-hello"),
            "{text}"
        );
        assert!(text.contains("… and 1 more"), "{text}");
        assert!(text.contains("3 paths removed earlier"), "{text}");
    }

    #[test]
    fn a_pass_reports_what_it_did() {
        let text = describe_run("http://c", &run(), 1.25, 4);
        assert!(
            text.contains("pass 3 in 1.2s (4 requests): kept 5 paths"),
            "{text}"
        );
        assert!(text.contains("removed 2 paths"), "{text}");
        assert!(text.contains("1 paths were pushed"), "{text}");
    }

    #[test]
    fn pins_show_how_long_they_hold() {
        let pin = |name: &str, expires_at| Pin {
            name: name.parse().unwrap(),
            store_path: "7rjj86a15146cq1d3qy068lml7n8ykzm-hello".parse().unwrap(),
            pinned_at: 0,
            expires_at,
            subject: Some("ci".into()),
        };
        let pins = Pins {
            pins: vec![
                pin("a", None),
                pin("b", Some(3 * 86_400_000)),
                pin("c", Some(1)),
            ],
        };
        let text = describe_pins(&pins, 86_400_000);
        assert!(
            text.contains(
                "a  7rjj86a15146cq1d3qy068lml7n8ykzm-hello  pinned 24h ago by ci, until removed"
            ),
            "{text}"
        );
        assert!(text.contains("2 more days"), "{text}");
        assert!(text.contains("expired"), "{text}");
    }

    #[test]
    fn pins_take_store_paths() {
        let base = base_name(
            "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-hello",
            "/nix/store",
        );
        assert_eq!(
            base.unwrap().to_string(),
            "7rjj86a15146cq1d3qy068lml7n8ykzm-hello"
        );
        assert!(base_name("/tmp/x", "/nix/store").is_err());
        assert!(pin_name("a/b").is_err());
    }
}
