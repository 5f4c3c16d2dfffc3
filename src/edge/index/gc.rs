//! The GC's side of the index (docs/gc.md): roots, pins, and the steps of a pass. The
//! decisions without storage are `crate::core::gc`'s; each handler here, like every
//! handler of the object, runs alone and never awaits, so "is it still unreferenced,
//! unpinned and not pushed since the mark? then forget it" is one atomic step.

use serde::{Deserialize, Serialize};
use worker::SqlStorageValue;

use super::{hash_array, integer, string, text, Answer, CountRow, Index};
use crate::core::api::RootsRefreshed;
use crate::core::api::{self, GcCandidate, GcPhase, GcPlan, GcRule, GcRun, Pin, Pins};
use crate::core::gc::{
    budget_cut, orphan_kind, OrphanKind, EDGE_HOLD_MS, MARK_BATCH, MAX_PLANNED, PINNED, SEED_PAGE,
    SWEEP_BATCH,
};
use crate::core::index::{
    GcStep, GcWork, OrphanPage, Orphans, PinRemoved, PinSet, Refresh, RemovePin, SetPin, Swept,
    STALE_DELETE_MS,
};
use crate::core::nix::store_path::{StorePathBaseName, StorePathHash};

const GC_KEY: &str = "gc";
/// Counters stay exact JSON numbers (the state travels through `JSON.parse`).
const MAX_JSON_INTEGER: u64 = (1 << 53) - 1;

/// What the object remembers of the pass under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GcState {
    run: GcRun,
    /// Seed: the last path hash read. Orphans: the last bucket key listed.
    cursor: String,
    /// Paths marked below this go (the budget's cut); none: only unmarked paths go.
    keep_from: Option<u64>,
    /// When the orphan listing began.
    orphans_from: u64,
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
            },
            cursor: String::new(),
            keep_from: None,
            orphans_from: 0,
        }
    }
}

fn work(state: &GcState) -> GcWork {
    GcWork {
        run: state.run.clone(),
        sweep: Vec::new(),
        list_after: None,
        plan: None,
    }
}

fn optional(value: Option<u64>) -> SqlStorageValue {
    value.map_or(SqlStorageValue::Null, integer)
}

#[derive(Deserialize)]
struct OptionalHashRow {
    hash: Option<String>,
}

impl Index {
    fn load_gc(&self) -> Result<GcState, String> {
        match self.meta_text(GC_KEY)? {
            Some(text) => super::message(&text),
            None => Ok(GcState::idle()),
        }
    }

    /// The last or current pass, for stats.
    pub(super) fn gc_run(&self) -> Result<Option<GcRun>, String> {
        let state = self.load_gc()?;
        Ok((state.run.phase != GcPhase::Idle).then_some(state.run))
    }

    fn save_gc(&self, state: &GcState) -> Result<(), String> {
        self.set_meta(GC_KEY, api::render(state))
    }

    fn number(&self, query: &str, bindings: Vec<SqlStorageValue>) -> Result<u64, String> {
        Ok(self
            .rows::<CountRow>(query, bindings)?
            .first()
            .map_or(0, |row| row.n))
    }

    /// `roots`: a push names these paths again.
    pub(super) fn refresh(&self, refresh: Refresh) -> Answer {
        let refreshed = self.hashes(
            "UPDATE paths SET pushed_at = MAX(pushed_at, ?2) \
             WHERE hash IN (SELECT value FROM json_each(?1)) RETURNING hash",
            vec![hash_array(&refresh.hashes), integer(refresh.now)],
        )?;
        self.touch(&refreshed, refresh.now)?;
        let missing = refresh
            .hashes
            .iter()
            .filter(|hash| !refreshed.contains(hash))
            .copied()
            .collect();
        text(&RootsRefreshed {
            refreshed: refreshed.len() as u64,
            missing,
        })
    }

    /// Paths pushed (or pushed again) now: a pass under way keeps them, whatever the
    /// clocks of the requests say. Marked roots if the mark is still running, never
    /// doomed if it is done.
    pub(super) fn touch(&self, hashes: &[StorePathHash], now: u64) -> Result<(), String> {
        let list = hash_array(hashes);
        let spared = self.hashes(
            "DELETE FROM gc_doomed WHERE hash IN (SELECT value FROM json_each(?)) RETURNING hash",
            vec![list.clone()],
        )?;
        if !spared.is_empty() {
            let mut state = self.load_gc()?;
            state.run.spared_paths += spared.len() as u64;
            self.save_gc(&state)?;
        }
        self.exec(
            "UPDATE gc_mark SET keep = ?2, expanded = 0 \
             WHERE hash IN (SELECT value FROM json_each(?1)) AND keep < ?2",
            vec![list, integer(now.max(1))],
        )?;
        Ok(())
    }

    pub(super) fn pins(&self) -> Answer {
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
            Vec::new(),
        )?;
        let mut pins = Vec::with_capacity(rows.len());
        for row in rows {
            pins.push(Pin {
                name: row
                    .name
                    .parse()
                    .map_err(|_| "the index holds a bad pin name")?,
                store_path: row.base.parse().map_err(|_| "the index holds a bad pin")?,
                pinned_at: row.pinned_at,
                expires_at: row.expires_at,
                subject: row.subject,
            });
        }
        text(&Pins { pins })
    }

    pub(super) fn set_pin(&self, set: SetPin) -> Answer {
        let hash = *set.store_path.hash();
        // Only a path the cache holds, and not one on its way out.
        let cached = self.exists(
            "SELECT 1 AS n FROM paths WHERE hash = ?1 \
               AND NOT EXISTS (SELECT 1 FROM deleting WHERE hash = ?1 AND done = 0)",
            vec![string(hash)],
        )?;
        if !cached {
            return text(&PinSet::NotCached { absent: api::True });
        }
        self.exec(
            "INSERT OR REPLACE INTO pins (name, hash, base, pinned_at, expires_at, subject) \
             VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                string(&set.name),
                string(hash),
                string(&set.store_path),
                integer(set.now),
                optional(set.expires_at),
                string(&set.subject),
            ],
        )?;
        text(&PinSet::Pinned {
            pin: Pin {
                name: set.name,
                store_path: set.store_path,
                pinned_at: set.now,
                expires_at: set.expires_at,
                subject: set.subject,
            },
        })
    }

    pub(super) fn remove_pin(&self, remove: RemovePin) -> Answer {
        let removed = self.exists(
            "DELETE FROM pins WHERE name = ? RETURNING 1 AS n",
            vec![string(&remove.name)],
        )?;
        text(&PinRemoved { removed })
    }

    /// `gc/step`.
    pub(super) fn gc_step(&self, step: GcStep) -> Answer {
        let mut state = self.load_gc()?;
        if step.dry_run && step.retain_ms.is_none() && step.budget_bytes.is_none() {
            // Nothing to mark: every path is kept. The pass under way is left alone.
            let mut answer = work(&state);
            answer.plan = Some(GcPlan {
                paths: Vec::new(),
                path_count: 0,
                path_bytes: 0,
                in_grace: self.in_grace(step.now.saturating_sub(step.grace_ms))?,
            });
            return text(&answer);
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
        match state.run.phase {
            GcPhase::Idle | GcPhase::Done => {}
            GcPhase::Seed => self.seed(&mut state, step.now)?,
            GcPhase::Mark => self.mark(&mut state)?,
            GcPhase::Budget => self.cut(&mut state)?,
            GcPhase::Sweep if step.dry_run => answer.plan = Some(self.plan(&state, step.now)?),
            GcPhase::Sweep => answer.sweep = self.sweep(&mut state, step.now, step.purges)?,
            GcPhase::Orphans if step.dry_run => {
                answer.plan = Some(GcPlan {
                    paths: Vec::new(),
                    path_count: 0,
                    path_bytes: 0,
                    in_grace: self.in_grace(step.now.saturating_sub(state.run.grace_ms))?,
                })
            }
            GcPhase::Orphans => answer.list_after = Some(state.cursor.clone()),
        }
        self.save_gc(&state)?;
        answer.run = state.run;
        text(&answer)
    }

    fn start_gc(&self, number: u64, step: &GcStep) -> Result<GcState, String> {
        for table in ["gc_mark", "gc_doomed", "gc_batch", "gc_pending"] {
            self.exec(&format!("DELETE FROM {table}"), Vec::new())?;
        }
        let mut state = GcState::idle();
        let run = &mut state.run;
        run.run = number;
        run.started_at = step.now;
        run.roots_since = step.retain_ms.map(|ms| step.now.saturating_sub(ms));
        run.budget_bytes = step.budget_bytes;
        run.grace_ms = step.grace_ms;
        run.phase = if run.roots_since.is_none() && run.budget_bytes.is_none() {
            // Every path is kept: only orphans can go.
            state.orphans_from = step.now;
            GcPhase::Orphans
        } else {
            GcPhase::Seed
        };
        Ok(state)
    }

    /// Roots: a page of paths, in hash order, those pushed since `roots_since` marked with
    /// their push time. Then the live pins.
    fn seed(&self, state: &mut GcState, now: u64) -> Result<(), String> {
        let page = "SELECT hash, pushed_at FROM paths WHERE hash > ?1 ORDER BY hash LIMIT ?2";
        self.exec(
            // Every path the seed sees is recorded (0: seen, not a root): only those can
            // be doomed, so a path published after the seed passed its hash never is.
            &format!(
                "INSERT OR IGNORE INTO gc_mark (hash, keep, expanded) \
                 SELECT hash, CASE WHEN ?3 IS NULL OR pushed_at >= ?3 THEN MAX(pushed_at, 1) \
                 ELSE 0 END, CASE WHEN ?3 IS NULL OR pushed_at >= ?3 THEN 0 ELSE 1 END \
                 FROM ({page}) WHERE true"
            ),
            vec![
                string(&state.cursor),
                integer(SEED_PAGE),
                optional(state.run.roots_since),
            ],
        )?;
        let last = self
            .rows::<OptionalHashRow>(
                &format!("SELECT MAX(hash) AS hash FROM ({page})"),
                vec![string(&state.cursor), integer(SEED_PAGE)],
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
                    vec![integer(PINNED), integer(now)],
                )?;
                state.cursor.clear();
                state.run.phase = GcPhase::Mark;
            }
        }
        Ok(())
    }

    /// Follows the references of the marked paths with the newest marks not yet
    /// followed; a path reached by a newer mark takes it and is followed again.
    fn mark(&self, state: &mut GcState) -> Result<(), String> {
        self.exec("DELETE FROM gc_batch", Vec::new())?;
        self.exec(
            "INSERT INTO gc_batch (hash, keep) SELECT hash, keep FROM gc_mark \
             WHERE expanded = 0 ORDER BY keep DESC LIMIT ?",
            vec![integer(MARK_BATCH)],
        )?;
        let batch = self.number("SELECT COUNT(*) AS n FROM gc_batch", Vec::new())?;
        if batch == 0 {
            state.run.phase = GcPhase::Budget;
            return Ok(());
        }
        self.exec(
            "UPDATE gc_mark SET expanded = 1 WHERE hash IN (SELECT hash FROM gc_batch)",
            Vec::new(),
        )?;
        self.exec(
            "INSERT INTO gc_mark (hash, keep, expanded) \
             SELECT r.reference, b.keep, 0 FROM gc_batch AS b \
             JOIN refs AS r ON r.referrer = b.hash WHERE true \
             ON CONFLICT (hash) DO UPDATE SET keep = excluded.keep, expanded = 0 \
             WHERE excluded.keep > gc_mark.keep",
            Vec::new(),
        )?;
        Ok(())
    }

    /// The budget's cut, then the doomed: every path pushed before the pass that no
    /// kept mark reaches.
    fn cut(&self, state: &mut GcState) -> Result<(), String> {
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
                Vec::new(),
            )?
            .into_iter()
            .map(|row| (row.keep, row.bytes))
            .collect();
        let (keep_from, kept_bytes) = budget_cut(&marks, state.run.budget_bytes);
        state.keep_from = keep_from;
        state.run.kept_bytes = kept_bytes.min(MAX_JSON_INTEGER);
        state.run.over_budget = state.run.budget_bytes.is_some_and(|b| kept_bytes > b);
        state.run.kept_paths = self.number(
            "SELECT COUNT(*) AS n FROM gc_mark AS m JOIN paths AS p ON p.hash = m.hash \
             WHERE m.keep > 0 AND (?1 IS NULL OR m.keep >= ?1)",
            vec![optional(keep_from)],
        )?;
        self.exec(
            "INSERT OR IGNORE INTO gc_doomed (hash, rule) \
             SELECT m.hash, CASE WHEN m.keep = 0 THEN 'retention' ELSE 'budget' END \
             FROM gc_mark AS m JOIN paths AS p ON p.hash = m.hash \
             WHERE (m.keep = 0 OR (?1 IS NOT NULL AND m.keep < ?1)) AND p.pushed_at <= ?2",
            vec![optional(keep_from), integer(state.run.started_at)],
        )?;
        state.run.doomed_paths = self.number("SELECT COUNT(*) AS n FROM gc_doomed", Vec::new())?;
        state.run.phase = GcPhase::Sweep;
        Ok(())
    }

    /// Forgets doomed paths that are still doomed now, layer by layer from the top of
    /// their closures: nothing refers to them (no path, no publish under way), no pin
    /// holds them, no push named them since the pass began.
    fn sweep(
        &self,
        state: &mut GcState,
        now: u64,
        purges: bool,
    ) -> Result<Vec<Vec<StorePathHash>>, String> {
        // Layers handed out but not yet confirmed deleted from R2: handed out again, in
        // order, and nothing below them until they are.
        #[derive(Deserialize)]
        struct PendingRow {
            hash: String,
            layer: u64,
        }
        let pending = self.rows::<PendingRow>(
            "SELECT hash, layer FROM gc_pending ORDER BY layer",
            Vec::new(),
        )?;
        if !pending.is_empty() {
            let mut layers: Vec<Vec<StorePathHash>> = Vec::new();
            let mut last = None;
            for row in pending {
                let hash = row.hash.parse().map_err(|_| "bad hash in gc_pending")?;
                match layers.last_mut() {
                    Some(layer) if last == Some(row.layer) => layer.push(hash),
                    _ => layers.push(vec![hash]),
                }
                last = Some(row.layer);
            }
            return Ok(layers);
        }
        let mut layers = Vec::new();
        let mut total = 0;
        while total < SWEEP_BATCH {
            let layer = self.hashes(
                "SELECT d.hash AS hash FROM gc_doomed AS d JOIN paths AS p ON p.hash = d.hash \
                 WHERE p.pushed_at <= ?1 \
                   AND NOT EXISTS (SELECT 1 FROM refs AS r WHERE r.reference = d.hash) \
                   AND NOT EXISTS (SELECT 1 FROM reserved_refs AS rr WHERE rr.reference = d.hash) \
                   AND NOT EXISTS (SELECT 1 FROM reservations AS v WHERE v.hash = d.hash) \
                   AND NOT EXISTS (SELECT 1 FROM pins AS n WHERE n.hash = d.hash \
                                   AND (n.expires_at IS NULL OR n.expires_at > ?2)) \
                   AND NOT EXISTS (SELECT 1 FROM gc_hold AS h WHERE h.hash = d.hash AND h.until > ?2) \
                 LIMIT ?3",
                vec![
                    integer(state.run.started_at),
                    integer(now),
                    integer(SWEEP_BATCH - total),
                ],
            )?;
            if layer.is_empty() {
                break;
            }
            state.run.removed_bytes = state
                .run
                .removed_bytes
                .saturating_add(self.number(
                    "SELECT COALESCE(SUM(file_size), 0) AS n FROM paths \
                 WHERE hash IN (SELECT value FROM json_each(?))",
                    vec![hash_array(&layer)],
                )?)
                .min(MAX_JSON_INTEGER);
            if !purges {
                // Their references wait until no edge copy of these narinfos is left.
                self.exec(
                    "INSERT OR REPLACE INTO gc_hold (hash, until) \
                     SELECT reference, ?2 FROM refs WHERE referrer IN (SELECT value FROM json_each(?1))",
                    vec![hash_array(&layer), integer(now.saturating_add(EDGE_HOLD_MS))],
                )?;
            }
            self.remove_paths(&layer, now)?;
            self.exec(
                "DELETE FROM gc_doomed WHERE hash IN (SELECT value FROM json_each(?))",
                vec![hash_array(&layer)],
            )?;
            self.exec(
                "INSERT OR IGNORE INTO gc_pending (hash, layer) SELECT value, ?2 FROM json_each(?1)",
                vec![hash_array(&layer), integer(layers.len() as u64)],
            )?;
            total += layer.len() as u64;
            state.run.removed_paths += layer.len() as u64;
            layers.push(layer);
        }
        if layers.is_empty() {
            // What is left was saved since the mark, or deleted by someone else.
            state.run.held_paths = self.number(
                "SELECT COUNT(*) AS n FROM gc_doomed AS d JOIN paths AS p ON p.hash = d.hash \
                 WHERE EXISTS (SELECT 1 FROM gc_hold AS h WHERE h.hash = d.hash AND h.until > ?) \
                   AND NOT EXISTS (SELECT 1 FROM refs AS r WHERE r.reference = d.hash)",
                vec![integer(now)],
            )?;
            state.run.spared_paths += self
                .number(
                    "SELECT COUNT(*) AS n FROM gc_doomed AS d JOIN paths AS p ON p.hash = d.hash",
                    Vec::new(),
                )?
                .saturating_sub(state.run.held_paths);
            self.exec("DELETE FROM gc_doomed", Vec::new())?;
            self.exec("DELETE FROM gc_mark", Vec::new())?;
            state.run.phase = GcPhase::Orphans;
            state.orphans_from = now;
            state.cursor.clear();
        }
        Ok(layers)
    }

    /// `gc/swept`: the narinfos are gone from R2.
    pub(super) fn gc_swept(&self, swept: Swept) -> Answer {
        self.exec(
            "UPDATE deleting SET done = 1 WHERE hash IN (SELECT value FROM json_each(?))",
            vec![hash_array(&swept.hashes)],
        )?;
        self.exec(
            "DELETE FROM gc_pending WHERE hash IN (SELECT value FROM json_each(?))",
            vec![hash_array(&swept.hashes)],
        )?;
        text(&api::True)
    }

    fn plan(&self, state: &GcState, now: u64) -> Result<GcPlan, String> {
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
            vec![integer(MAX_PLANNED)],
        )?;
        let mut paths = Vec::with_capacity(rows.len());
        for row in rows {
            let store_path: StorePathBaseName = format!("{}-{}", row.hash, row.name)
                .parse()
                .map_err(|_| "the index holds a bad store path")?;
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
                Vec::new(),
            )?
            .into_iter()
            .next()
            .ok_or("no plan totals")?;
        Ok(GcPlan {
            paths,
            path_count: total.n,
            path_bytes: total.bytes,
            in_grace: self.in_grace(now.saturating_sub(state.run.grace_ms))?,
        })
    }

    /// Paths removed since `since`: their NARs and side files wait for the grace period.
    fn in_grace(&self, since: u64) -> Result<u64, String> {
        self.number(
            "SELECT COUNT(*) AS n FROM removed WHERE removed_at >= ?",
            vec![integer(since)],
        )
    }

    /// `gc/orphans`: which keys of a page of the bucket go.
    pub(super) fn gc_orphans(&self, page: OrphanPage) -> Answer {
        let mut state = self.load_gc()?;
        if state.run.phase != GcPhase::Orphans || state.cursor != page.after {
            // Another runner decided this page already.
            return text(&Orphans {
                delete: Vec::new(),
                run: state.run,
            });
        }
        let cutoff = page.now.saturating_sub(state.run.grace_ms);
        let mut delete = Vec::new();
        for object in &page.objects {
            if self.is_orphan(object, cutoff)? {
                if orphan_kind(&object.key) == OrphanKind::Nar {
                    // A publish that found this NAR a moment ago must not count on it.
                    self.exec(
                        "INSERT OR REPLACE INTO nar_deleting (nar, at) VALUES (?, ?)",
                        vec![string(&object.key), integer(page.now)],
                    )?;
                }
                delete.push(object.key.clone());
            }
        }
        state.run.listed_keys += page.objects.len() as u64;
        state.run.removed_objects += delete.len() as u64;
        match &page.through {
            Some(through) => state.cursor = through.clone(),
            None => {
                // Every removal past its grace when this listing began had its keys
                // looked at: its record has done its work.
                self.exec(
                    "DELETE FROM removed WHERE removed_at < ?",
                    vec![integer(
                        state.orphans_from.saturating_sub(state.run.grace_ms),
                    )],
                )?;
                self.exec(
                    "DELETE FROM gc_hold WHERE until <= ?",
                    vec![integer(page.now)],
                )?;
                self.exec(
                    "DELETE FROM nar_deleting WHERE at < ?",
                    vec![integer(page.now.saturating_sub(STALE_DELETE_MS))],
                )?;
                self.exec(
                    "DELETE FROM pins WHERE expires_at IS NOT NULL AND expires_at <= ?",
                    vec![integer(page.now)],
                )?;
                state.cursor.clear();
                state.run.phase = GcPhase::Done;
                state.run.finished_at = Some(page.now);
            }
        }
        self.save_gc(&state)?;
        text(&Orphans {
            delete,
            run: state.run,
        })
    }

    fn is_orphan(&self, object: &crate::core::index::Listed, cutoff: u64) -> Result<bool, String> {
        let old = object.uploaded < cutoff;
        // A NAR no path uses, none being published uses, and no path removed within the
        // grace period used.
        let unused_nar = |nar: &str| -> Result<bool, String> {
            Ok(!self.exists(
                "SELECT 1 AS n FROM paths WHERE nar = ?1 \
                 UNION ALL SELECT 1 FROM reservations WHERE json_extract(entry, '$.nar') = ?1 \
                 UNION ALL SELECT 1 FROM removed WHERE nar = ?1 AND removed_at >= ?2 LIMIT 1",
                vec![string(nar), integer(cutoff)],
            )?)
        };
        Ok(match orphan_kind(&object.key) {
            OrphanKind::Nar => old && unused_nar(&object.key)?,
            OrphanKind::DebugInfo => match &object.points_to {
                Some(nar) => old && unused_nar(nar)?,
                None => false,
            },
            OrphanKind::Listing(hash) => {
                old && !self.exists(
                    "SELECT 1 AS n FROM paths WHERE hash = ?1 \
                     UNION ALL SELECT 1 FROM reservations WHERE hash = ?1 \
                     UNION ALL SELECT 1 FROM removed WHERE hash = ?1 AND removed_at >= ?2 LIMIT 1",
                    vec![string(hash), integer(cutoff)],
                )?
            }
            OrphanKind::Log(drv) => {
                // Only the logs of removed paths: a log pushed on its own stays.
                self.exists(
                    "SELECT 1 AS n FROM removed WHERE deriver = ?1 AND removed_at < ?2 LIMIT 1",
                    vec![string(&drv), integer(cutoff)],
                )? && !self.exists(
                    "SELECT 1 AS n FROM paths WHERE deriver = ?1 \
                     UNION ALL SELECT 1 FROM removed WHERE deriver = ?1 AND removed_at >= ?2 LIMIT 1",
                    vec![string(&drv), integer(cutoff)],
                )?
            }
            OrphanKind::Realisation => match &object.points_to {
                Some(out) => {
                    self.exists(
                        "SELECT 1 AS n FROM removed WHERE hash = ? AND removed_at < ?",
                        vec![string(out), integer(cutoff)],
                    )? && !self
                        .exists("SELECT 1 AS n FROM paths WHERE hash = ?", vec![string(out)])?
                }
                None => false,
            },
            OrphanKind::Keep => false,
        })
    }
}
