//! The GC's side of the index (docs/gc.md): roots, pins, and the steps of a pass. The
//! rules without storage are `crate::core::gc`'s; each handler here runs alone and never
//! awaits, so "is it still unreferenced, unpinned and not pushed since the mark? then
//! forget it" is one atomic step.
//!
//! What a deletion rests on:
//! - **a narinfo** (sweep): the path is doomed by the settings the step runs under (a
//!   pass under other settings starts again); a reconcile lap that began after the pass
//!   did has completed (every narinfo in the bucket then, written through the worker or
//!   not, is known, with its references); and at this step nothing known refers to it
//!   (a published path, one being published, one whose removal R2 has not confirmed),
//!   no live pin names it, no push renewed it since the pass began, and no referrer was
//!   removed within the edge hold when the edge cache cannot be purged;
//! - **an object** (orphan step): R2 stored it more than the grace period before the
//!   last complete lap began (so that lap saw every narinfo that could use it), and no
//!   path known now uses it, none being published does, none removed within the grace
//!   period did, and no narinfo the index could not parse names it.

use serde::{Deserialize, Serialize};

use super::sql::{integer, optional, text, Value, MAX_EXACT_INTEGER};
use super::store::{being_deleted, hash_array, parse_hash, Answer, Index, BORN_KEY};
use super::{
    GcStep, GcWork, PinRemoved, PinSet, Refresh, RemovePin, SetPin, Swept, STALE_DELETE_MS,
};
use crate::core::api::{
    self, GcCandidate, GcPhase, GcPlan, GcRule, GcRun, Pin, Pins, RootsRefreshed,
};
use crate::core::gc::{
    budget_cut, Retention, EDGE_HOLD_MS, MARK_BATCH, MARK_SCALE, MAX_PLANNED, MAX_ROWS_PER_STEP,
    PINNED, SEED_PAGE, SWEEP_BATCH,
};
use crate::core::index::IndexError;
use crate::core::nix::store_path::{StorePathBaseName, StorePathHash};

const GC_KEY: &str = "gc";

/// What the object remembers of the pass under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GcState {
    pub(super) run: GcRun,
    /// Seed: the last path hash read. Orphans: the last bucket key listed.
    pub(super) cursor: String,
    /// When the orphan listing began.
    pub(super) orphans_from: u64,
    /// The settings the pass runs under.
    #[serde(default)]
    retention: Option<Retention>,
}

impl GcState {
    fn idle() -> Self {
        GcState {
            run: GcRun {
                run: 0,
                phase: GcPhase::Idle,
                started_at: 0,
                finished_at: None,
                roots_since: None,
                budget_bytes: None,
                grace_ms: 0,
                kept_paths: 0,
                kept_bytes: 0,
                over_budget: false,
                doomed_paths: 0,
                removed_paths: 0,
                removed_bytes: 0,
                spared_paths: 0,
                held_paths: 0,
                removed_objects: 0,
                listed_keys: 0,
                waiting_for_lap: false,
            },
            cursor: String::new(),
            orphans_from: 0,
            retention: None,
        }
    }

    /// A pass that has not yet finished deciding what to remove under these settings.
    fn marks_under_other_settings(&self, retention: &Retention) -> bool {
        let deciding = matches!(
            self.run.phase,
            GcPhase::Seed | GcPhase::Mark | GcPhase::Budget | GcPhase::Sweep
        );
        let marked_with = self.retention.map(|r| (r.retain_ms, r.budget_bytes));
        deciding && marked_with != Some((retention.retain_ms, retention.budget_bytes))
    }
}

fn work(state: &GcState) -> GcWork {
    GcWork {
        run: state.run.clone(),
        sweep: Vec::new(),
        list_after: None,
        plan: None,
        reconcile: false,
    }
}

/// The mark of a root pushed at `time` (SQL expressions): see [`MARK_SCALE`]. Ten
/// bits of the hash's first two characters tell roots pushed in one millisecond apart.
fn root_mark(time: &str, hash: &str) -> String {
    format!(
        "(({time}) * {MARK_SCALE} + (unicode(substr({hash}, 1, 1)) % 32) * 32 \
          + unicode(substr({hash}, 2, 1)) % 32)"
    )
}

#[derive(Deserialize)]
struct OptionalHashRow {
    hash: Option<String>,
}

#[derive(Deserialize)]
struct WeightedRow {
    hash: String,
    ref_count: u64,
}

/// Takes rows in order while their references fit [`MAX_ROWS_PER_STEP`] (the first
/// always: a path alone is never too big to take).
fn within_rows(rows: Vec<WeightedRow>) -> Answer<Vec<StorePathHash>> {
    let mut taken = Vec::new();
    let mut weight = 0u64;
    for row in rows {
        weight = weight.saturating_add(row.ref_count.max(1));
        if !taken.is_empty() && weight > MAX_ROWS_PER_STEP {
            break;
        }
        taken.push(parse_hash(&row.hash)?);
    }
    Ok(taken)
}

impl<S: super::sql::Sql> Index<S> {
    pub(super) fn load_gc(&self) -> Answer<GcState> {
        match self.meta_text(GC_KEY)? {
            Some(text) => {
                crate::core::json_serde::from_str(&text).map_err(|err| IndexError::Corrupt {
                    what: "GC state",
                    value: err.to_string(),
                })
            }
            None => Ok(GcState::idle()),
        }
    }

    /// The last or current pass, for stats.
    pub(super) fn gc_run(&self) -> Answer<Option<GcRun>> {
        let state = self.load_gc()?;
        Ok((state.run.phase != GcPhase::Idle).then_some(state.run))
    }

    pub(super) fn save_gc(&self, state: &GcState) -> Answer<()> {
        self.set_meta(GC_KEY, api::render(state))
    }

    /// `roots`: a push names these paths again.
    pub fn refresh(&self, refresh: Refresh) -> Answer<RootsRefreshed> {
        self.ready_at(refresh.now)?;
        let refreshed = self.hashes(
            "UPDATE paths SET pushed_at = MAX(pushed_at, ?2) \
             WHERE hash IN (SELECT value FROM json_each(?1)) RETURNING hash",
            &[hash_array(&refresh.hashes), integer(refresh.now)],
        )?;
        self.touch(&refreshed)?;
        let missing = refresh
            .hashes
            .iter()
            .filter(|hash| !refreshed.contains(hash))
            .copied()
            .collect();
        Ok(RootsRefreshed {
            refreshed: refreshed.len() as u64,
            missing,
        })
    }

    /// Paths pushed (or pushed again) now: a pass under way keeps them, whatever the
    /// clocks of the requests say: taken off the doomed list.
    pub(super) fn touch(&self, hashes: &[StorePathHash]) -> Answer<()> {
        let list = hash_array(hashes);
        let spared = self.hashes(
            "DELETE FROM gc_doomed WHERE hash IN (SELECT value FROM json_each(?)) RETURNING hash",
            std::slice::from_ref(&list),
        )?;
        if !spared.is_empty() {
            let mut state = self.load_gc()?;
            state.run.spared_paths += spared.len() as u64;
            self.save_gc(&state)?;
        }
        // Not marked again: a path pushed since the pass began is never swept (the
        // sweep checks its push time), and while it is there what it references is
        // not either. Re-marking its closure on every refresh would let refreshes keep
        // a pass from ever finishing.
        Ok(())
    }

    pub fn pins(&self, _: api::True) -> Answer<Pins> {
        self.ready()?;
        #[derive(Deserialize)]
        struct PinRow {
            name: String,
            base: String,
            pinned_at: u64,
            expires_at: Option<u64>,
            subject: String,
        }
        let rows = self.rows::<PinRow>(
            "SELECT name, base, pinned_at, expires_at, subject FROM pins ORDER BY name",
            &[],
        )?;
        let mut pins = Vec::with_capacity(rows.len());
        for row in rows {
            pins.push(Pin {
                name: row.name.parse().map_err(|_| IndexError::Corrupt {
                    what: "pin name",
                    value: row.name.clone(),
                })?,
                store_path: row.base.parse().map_err(|_| IndexError::Corrupt {
                    what: "pinned store path",
                    value: row.base.clone(),
                })?,
                pinned_at: row.pinned_at,
                expires_at: row.expires_at,
                subject: Some(row.subject),
            });
        }
        Ok(Pins { pins })
    }

    pub fn set_pin(&self, set: SetPin) -> Answer<PinSet> {
        self.ready_at(set.now)?;
        let hash = *set.store_path.hash();
        // Only a path the cache holds, by its own name, and not one on its way out.
        let cached = self.exists(
            &format!(
                "SELECT 1 AS n FROM paths WHERE hash = ?1 AND name = ?2 AND NOT {}",
                being_deleted("?1", 3)
            ),
            &[
                text(hash),
                text(set.store_path.name()),
                integer(set.now.saturating_sub(STALE_DELETE_MS)),
            ],
        )?;
        if !cached {
            return Ok(PinSet::NotCached { absent: api::True });
        }
        self.exec(
            "INSERT OR REPLACE INTO pins (name, hash, base, pinned_at, expires_at, subject) \
             VALUES (?, ?, ?, ?, ?, ?)",
            &[
                text(&set.name),
                text(hash),
                text(&set.store_path),
                integer(set.now),
                optional(set.expires_at),
                text(&set.subject),
            ],
        )?;
        Ok(PinSet::Pinned {
            pin: Pin {
                name: set.name,
                store_path: set.store_path,
                pinned_at: set.now,
                expires_at: set.expires_at,
                subject: Some(set.subject),
            },
        })
    }

    pub fn remove_pin(&self, remove: RemovePin) -> Answer<PinRemoved> {
        self.ready()?;
        let removed = self.exists(
            "DELETE FROM pins WHERE name = ? RETURNING 1 AS n",
            &[text(&remove.name)],
        )?;
        Ok(PinRemoved { removed })
    }

    /// `gc/step`.
    pub fn gc_step(&self, step: GcStep) -> Answer<GcWork> {
        self.ready_at(step.now)?;
        let mut state = self.load_gc()?;
        if state.marks_under_other_settings(&step.retention) {
            // The settings changed since this pass marked: what it doomed may no longer
            // be doomed. Start again under the settings in force now.
            state = self.start_gc(state.run.run + 1, &step)?;
        }
        if state.run.phase == GcPhase::Orphans {
            // Orphans are judged by the grace period in force now.
            state.run.grace_ms = step.retention.grace_ms;
        }
        let retention = step.retention;
        if step.dry_run && retention.retain_ms.is_none() && retention.budget_bytes.is_none() {
            // Nothing to mark: every path is kept. The pass under way is left alone.
            let mut answer = work(&state);
            answer.plan = Some(self.plan(&state, step.now, retention.grace_ms)?);
            return Ok(answer);
        }
        let start = match state.run.phase {
            // A dry run marks afresh when no pass is under way; one that is past its
            // sweep (removing orphans) is left to finish: its plan is empty.
            GcPhase::Idle | GcPhase::Done => step.dry_run || state.run.run < step.start_up_to,
            _ => false,
        };
        if start {
            state = self.start_gc(state.run.run + 1, &step)?;
        }
        let mut answer = work(&state);
        if !step.dry_run {
            // Removals handed out to a request that died before R2 confirmed them: carried
            // out first, in whatever phase (a pass under no rule has no sweep), as decided.
            answer.sweep = self.pending_removals()?;
            if !answer.sweep.is_empty() {
                self.save_gc(&state)?;
                answer.run = state.run;
                return Ok(answer);
            }
        }
        match state.run.phase {
            GcPhase::Idle | GcPhase::Done => {}
            GcPhase::Seed => self.seed(&mut state, step.now)?,
            GcPhase::Mark => self.mark(&mut state)?,
            GcPhase::Budget => self.cut(&mut state)?,
            GcPhase::Sweep => {
                state.run.waiting_for_lap = self.waiting_for_lap(&state)?;
                if step.dry_run {
                    answer.plan = Some(self.plan(&state, step.now, retention.grace_ms)?);
                } else {
                    answer.sweep = self.sweep(&mut state, step.now)?;
                    answer.reconcile = state.run.waiting_for_lap && answer.sweep.is_empty();
                }
            }
            GcPhase::Orphans if step.dry_run => {
                answer.plan = Some(self.plan(&state, step.now, retention.grace_ms)?)
            }
            GcPhase::Orphans => answer.list_after = Some(state.cursor.clone()),
        }
        self.save_gc(&state)?;
        answer.run = state.run;
        Ok(answer)
    }

    fn pending_removals(&self) -> Answer<Vec<StorePathHash>> {
        // A pending path back in the index (it cannot be: adoption and publishing wait
        // for the removal) is not deleted under it.
        self.exec(
            "DELETE FROM gc_pending WHERE hash IN (SELECT hash FROM paths)",
            &[],
        )?;
        self.hashes("SELECT hash FROM gc_pending ORDER BY hash", &[])
    }

    fn start_gc(&self, number: u64, step: &GcStep) -> Answer<GcState> {
        // Pending removals are not the pass's: they stay until R2 confirms them.
        for table in ["gc_mark", "gc_doomed", "gc_batch", "gc_dropped"] {
            self.exec(&format!("DELETE FROM {table}"), &[])?;
        }
        let mut state = GcState::idle();
        let retention = step.retention;
        state.retention = Some(retention);
        let run = &mut state.run;
        run.run = number;
        run.started_at = step.now;
        run.roots_since = retention.retain_ms.map(|ms| step.now.saturating_sub(ms));
        run.budget_bytes = retention.budget_bytes;
        run.grace_ms = retention.grace_ms;
        run.phase = if run.roots_since.is_none() && run.budget_bytes.is_none() {
            // Every path is kept: only orphans can go.
            state.orphans_from = step.now;
            GcPhase::Orphans
        } else {
            GcPhase::Seed
        };
        Ok(state)
    }

    /// Whether the sweep must wait: no reconcile lap that began after this pass did has
    /// completed, so a narinfo written behind the worker's back may still need a doomed
    /// path without the index knowing.
    fn waiting_for_lap(&self, state: &GcState) -> Answer<bool> {
        Ok(match self.complete_lap_started_at()? {
            Some(lap) => lap < state.run.started_at,
            None => true,
        })
    }

    /// Roots: a page of paths, in hash order, those pushed since `roots_since` marked
    /// (see [`MARK_SCALE`]). Then the live pins.
    fn seed(&self, state: &mut GcState, now: u64) -> Answer<()> {
        let page = "SELECT hash, pushed_at FROM paths WHERE hash > ?1 ORDER BY hash LIMIT ?2";
        self.exec(
            // Every path the seed sees is recorded (0: seen, not a root): only those can
            // be doomed, so a path published after the seed passed its hash never is.
            &format!(
                "INSERT OR IGNORE INTO gc_mark (hash, keep, expanded) \
                 SELECT hash, CASE WHEN ?3 IS NULL OR pushed_at >= ?3 THEN {mark} ELSE 0 END, \
                 CASE WHEN ?3 IS NULL OR pushed_at >= ?3 THEN 0 ELSE 1 END \
                 FROM ({page}) WHERE true",
                mark = root_mark("MAX(pushed_at, 1)", "hash")
            ),
            &[
                text(&state.cursor),
                integer(SEED_PAGE),
                optional(state.run.roots_since),
            ],
        )?;
        let last = self
            .rows::<OptionalHashRow>(
                &format!("SELECT MAX(hash) AS hash FROM ({page})"),
                &[text(&state.cursor), integer(SEED_PAGE)],
            )?
            .into_iter()
            .next()
            .and_then(|row| row.hash);
        match last {
            Some(last) => state.cursor = last,
            None => {
                self.exec(
                    "INSERT INTO gc_mark (hash, keep, expanded) \
                     SELECT hash, ?1, 0 FROM pins WHERE (expires_at IS NULL OR expires_at > ?2) \
                       AND hash IN (SELECT hash FROM paths) \
                     ON CONFLICT (hash) DO UPDATE SET keep = excluded.keep, expanded = 0",
                    &[integer(PINNED), integer(now)],
                )?;
                state.cursor.clear();
                state.run.phase = GcPhase::Mark;
            }
        }
        Ok(())
    }

    /// Follows the references of the marked paths with the newest marks not yet
    /// followed (as many as [`MAX_ROWS_PER_STEP`] references allow); a path reached by
    /// a newer mark takes it and is followed again.
    fn mark(&self, state: &mut GcState) -> Answer<()> {
        let frontier = self.rows::<WeightedRow>(
            "SELECT m.hash AS hash, COALESCE(p.ref_count, 0) AS ref_count FROM gc_mark AS m \
             LEFT JOIN paths AS p ON p.hash = m.hash \
             WHERE m.expanded = 0 ORDER BY m.keep DESC, m.hash LIMIT ?",
            &[integer(MARK_BATCH)],
        )?;
        let batch = within_rows(frontier)?;
        if batch.is_empty() {
            state.run.phase = GcPhase::Budget;
            return Ok(());
        }
        self.exec("DELETE FROM gc_batch", &[])?;
        self.exec(
            "INSERT INTO gc_batch (hash, keep) SELECT hash, keep FROM gc_mark \
             WHERE hash IN (SELECT value FROM json_each(?))",
            &[hash_array(&batch)],
        )?;
        self.exec(
            "UPDATE gc_mark SET expanded = 1 WHERE hash IN (SELECT hash FROM gc_batch)",
            &[],
        )?;
        self.exec(
            "INSERT INTO gc_mark (hash, keep, expanded) \
             SELECT r.reference, b.keep, 0 FROM gc_batch AS b \
             JOIN refs AS r ON r.referrer = b.hash WHERE true \
             ON CONFLICT (hash) DO UPDATE SET keep = excluded.keep, expanded = 0 \
             WHERE excluded.keep > gc_mark.keep",
            &[],
        )
    }

    /// The budget's cut (`crate::core::gc::budget_cut`), then the doomed: every path the
    /// seed saw, pushed before the pass, that no kept mark reaches.
    fn cut(&self, state: &mut GcState) -> Answer<()> {
        #[derive(Deserialize)]
        struct MarkRow {
            keep: u64,
            bytes: u64,
        }
        let marks: Vec<(u64, u64)> = self
            .rows::<MarkRow>(
                // Each NAR file once (paths may share one), under the newest mark.
                "SELECT keep, SUM(bytes) AS bytes FROM \
                 (SELECT MAX(m.keep) AS keep, MAX(p.file_size) AS bytes FROM gc_mark AS m \
                  JOIN paths AS p ON p.hash = m.hash WHERE m.keep > 0 GROUP BY p.nar) \
                 GROUP BY keep ORDER BY keep DESC",
                &[],
            )?
            .into_iter()
            .map(|row| (row.keep, row.bytes))
            .collect();
        let cut = budget_cut(&marks, state.run.budget_bytes);
        self.exec("DELETE FROM gc_dropped", &[])?;
        self.exec(
            "INSERT INTO gc_dropped (keep) SELECT value FROM json_each(?)",
            &[Value::Text(api::render(&cut.dropped))],
        )?;
        state.run.kept_bytes = cut.kept_bytes.min(MAX_EXACT_INTEGER);
        state.run.over_budget = state.run.budget_bytes.is_some_and(|b| cut.kept_bytes > b);
        state.run.kept_paths = self.number(
            "SELECT COUNT(*) AS n FROM gc_mark AS m JOIN paths AS p ON p.hash = m.hash \
             WHERE m.keep > 0 AND m.keep NOT IN (SELECT keep FROM gc_dropped)",
            &[],
        )?;
        self.exec(
            "INSERT OR IGNORE INTO gc_doomed (hash, rule) \
             SELECT m.hash, CASE WHEN m.keep = 0 THEN 'retention' ELSE 'budget' END \
             FROM gc_mark AS m JOIN paths AS p ON p.hash = m.hash \
             WHERE (m.keep = 0 OR m.keep IN (SELECT keep FROM gc_dropped)) AND p.pushed_at <= ?1",
            &[integer(state.run.started_at)],
        )?;
        state.run.doomed_paths = self.number("SELECT COUNT(*) AS n FROM gc_doomed", &[])?;
        state.run.phase = GcPhase::Sweep;
        Ok(())
    }

    /// One layer of doomed paths that are still doomed now (removals R2 has not yet
    /// confirmed go first: `gc_step`): once a lap has completed since the pass began,
    /// paths nothing refers to (no path, no publish under way, no removal R2 has not
    /// confirmed), that no pin holds, no push named since the pass began and no edge
    /// hold keeps.
    fn sweep(&self, state: &mut GcState, now: u64) -> Answer<Vec<StorePathHash>> {
        if state.run.waiting_for_lap {
            return Ok(Vec::new());
        }
        // An index younger than the edge hold cannot know which narinfos were deleted
        // just before it began (without a purge, still served from the edge cache): it
        // holds every doomed path until then.
        let born = self.meta_time(BORN_KEY)?;
        if born.is_none_or(|born| born.saturating_add(EDGE_HOLD_MS) > now) {
            self.end_sweep(state, now, true)?;
            return Ok(Vec::new());
        }
        let candidates = self.rows::<WeightedRow>(
            "SELECT d.hash AS hash, p.ref_count AS ref_count FROM gc_doomed AS d \
             JOIN paths AS p ON p.hash = d.hash \
             WHERE p.pushed_at <= ?1 \
               AND NOT EXISTS (SELECT 1 FROM refs AS r WHERE r.reference = d.hash) \
               AND NOT EXISTS (SELECT 1 FROM reserved_refs AS rr WHERE rr.reference = d.hash) \
               AND NOT EXISTS (SELECT 1 FROM reservations AS v WHERE v.hash = d.hash) \
               AND NOT EXISTS (SELECT 1 FROM pins AS n WHERE n.hash = d.hash \
                               AND (n.expires_at IS NULL OR n.expires_at > ?2)) \
               AND NOT EXISTS (SELECT 1 FROM gc_hold AS h WHERE h.hash = d.hash AND h.until > ?2) \
             ORDER BY d.hash LIMIT ?3",
            &[
                integer(state.run.started_at),
                integer(now),
                integer(SWEEP_BATCH),
            ],
        )?;
        let layer = within_rows(candidates)?;
        if layer.is_empty() {
            self.end_sweep(state, now, false)?;
            return Ok(Vec::new());
        }
        let list = hash_array(&layer);
        state.run.removed_bytes = state
            .run
            .removed_bytes
            .saturating_add(self.number(
                "SELECT COALESCE(SUM(file_size), 0) AS n FROM paths \
                 WHERE hash IN (SELECT value FROM json_each(?))",
                std::slice::from_ref(&list),
            )?)
            .min(MAX_EXACT_INTEGER);
        self.remove_paths(&layer, now)?;
        self.exec(
            "DELETE FROM gc_doomed WHERE hash IN (SELECT value FROM json_each(?))",
            std::slice::from_ref(&list),
        )?;
        self.exec(
            "INSERT OR IGNORE INTO gc_pending (hash, layer) SELECT value, 0 FROM json_each(?1)",
            &[list],
        )?;
        state.run.removed_paths += layer.len() as u64;
        Ok(layer)
    }

    /// No doomed path can go now: what is left was saved since the mark, is held, or
    /// was deleted by someone else. On to the orphans.
    fn end_sweep(&self, state: &mut GcState, now: u64, all_held: bool) -> Answer<()> {
        state.run.held_paths = self.number(
            "SELECT COUNT(*) AS n FROM gc_doomed AS d JOIN paths AS p ON p.hash = d.hash \
             WHERE ?2 OR (EXISTS (SELECT 1 FROM gc_hold AS h WHERE h.hash = d.hash AND h.until > ?1) \
               AND NOT EXISTS (SELECT 1 FROM refs AS r WHERE r.reference = d.hash))",
            &[integer(now), integer(u64::from(all_held))],
        )?;
        state.run.spared_paths += self
            .number(
                "SELECT COUNT(*) AS n FROM gc_doomed AS d JOIN paths AS p ON p.hash = d.hash",
                &[],
            )?
            .saturating_sub(state.run.held_paths);
        self.exec("DELETE FROM gc_doomed", &[])?;
        self.exec("DELETE FROM gc_mark", &[])?;
        self.exec("DELETE FROM gc_dropped", &[])?;
        state.run.phase = GcPhase::Orphans;
        state.orphans_from = now;
        state.cursor.clear();
        Ok(())
    }

    /// `gc/swept`: the narinfos are gone from R2.
    pub fn gc_swept(&self, swept: Swept) -> Answer<api::True> {
        self.ready()?;
        self.confirm_removed(&swept.hashes, swept.now, swept.purged)?;
        self.exec(
            "DELETE FROM gc_pending WHERE hash IN (SELECT value FROM json_each(?))",
            &[hash_array(&swept.hashes)],
        )?;
        Ok(api::True)
    }

    fn plan(&self, state: &GcState, now: u64, grace_ms: u64) -> Answer<GcPlan> {
        #[derive(Deserialize)]
        struct PlanRow {
            hash: String,
            name: String,
            file_size: u64,
            pushed_at: u64,
            rule: String,
        }
        let rows = self.rows::<PlanRow>(
            "SELECT p.hash AS hash, p.name AS name, p.file_size AS file_size, \
                    p.pushed_at AS pushed_at, d.rule AS rule \
             FROM gc_doomed AS d JOIN paths AS p ON p.hash = d.hash \
             ORDER BY p.pushed_at, p.hash LIMIT ?",
            &[integer(MAX_PLANNED)],
        )?;
        let mut paths = Vec::with_capacity(rows.len());
        for row in rows {
            let base = format!("{}-{}", row.hash, row.name);
            let store_path: StorePathBaseName = base.parse().map_err(|_| IndexError::Corrupt {
                what: "store path",
                value: base.clone(),
            })?;
            paths.push(GcCandidate {
                store_path,
                rule: if row.rule == "budget" {
                    GcRule::Budget
                } else {
                    GcRule::Retention
                },
                file_size: row.file_size,
                pushed_at: row.pushed_at,
            });
        }
        #[derive(Deserialize)]
        struct TotalRow {
            n: u64,
            bytes: u64,
        }
        let total = self
            .rows::<TotalRow>(
                "SELECT COUNT(*) AS n, COALESCE(SUM(p.file_size), 0) AS bytes \
                 FROM gc_doomed AS d JOIN paths AS p ON p.hash = d.hash",
                &[],
            )?
            .into_iter()
            .next()
            .ok_or_else(|| IndexError::Storage("no plan totals".into()))?;
        let _ = state;
        Ok(GcPlan {
            paths,
            path_count: total.n,
            path_bytes: total.bytes,
            in_grace: self.in_grace(now.saturating_sub(grace_ms))?,
            pending_paths: self.number("SELECT COUNT(*) AS n FROM gc_pending", &[])?,
        })
    }

    /// Paths removed since `since`: their NARs and side files wait for the grace period.
    fn in_grace(&self, since: u64) -> Answer<u64> {
        self.number(
            "SELECT COUNT(*) AS n FROM removed WHERE removed_at >= ?",
            &[integer(since)],
        )
    }
}
