//! The GC's orphan step on the index's side (docs/gc.md, "Orphans" and "What each
//! deletion rests on"): which keys of a page of the bucket go, on what they rest. The
//! procedure that lists and deletes is `passes/gc.rs`.

use serde::Deserialize;

use super::sql::{integer, optional, text, Sql};
use super::store::{Answer, Index};
use super::{Listed, OrphanPage, Orphans, STALE_DELETE_MS};
use crate::core::api::GcPhase;
use crate::core::gc::{orphan_kind, OrphanKind};

impl<S: Sql> Index<S> {
    /// `gc/orphans`: which keys of a page of the bucket go.
    pub fn gc_orphans(&self, page: OrphanPage) -> Answer<Orphans> {
        self.ready()?;
        let mut state = self.load_gc()?;
        if state.run.phase != GcPhase::Orphans || state.cursor != page.after {
            // Another runner decided this page already.
            return Ok(Orphans {
                delete: Vec::new(),
                run: state.run,
            });
        }
        let grace = state.run.grace_ms;
        let cutoff = page.now.saturating_sub(grace);
        // Only objects stored a grace period before the last complete lap began: that
        // lap saw every narinfo that could name them (none at all without a lap).
        let seen_before = self
            .complete_lap_started_at()?
            .map(|lap| lap.saturating_sub(grace));
        let mut delete = Vec::new();
        for object in &page.objects {
            let known_unused = seen_before.is_some_and(|seen| object.uploaded < seen);
            if !known_unused || !self.is_orphan(object, cutoff)? {
                self.exec(
                    "DELETE FROM orphan_candidates WHERE key = ?",
                    &[text(&object.key)],
                )?;
                continue;
            }
            // Unused since when, as far as the index knows: since the removal it recorded
            // of the last path that used it (a later one moves it on); else (a stray
            // upload, or an index that lost its memory) since the first listing that
            // found it unused. It goes a grace period after that, so a narinfo that
            // named it and was removed before the index could see it still had its
            // grace period.
            let removed = self.last_removal(object)?;
            self.exec(
                "INSERT INTO orphan_candidates (key, since, seen_in) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET seen_in = excluded.seen_in, \
                   since = MAX(since, COALESCE(?4, since))",
                &[
                    text(&object.key),
                    integer(removed.unwrap_or(page.now).min(page.now)),
                    integer(state.run.run),
                    optional(removed),
                ],
            )?;
            let since = self.number(
                "SELECT since AS n FROM orphan_candidates WHERE key = ?",
                &[text(&object.key)],
            )?;
            if since.saturating_add(grace) > page.now {
                continue;
            }
            match orphan_kind(&object.key) {
                // A publish that found this NAR a moment ago must not count on it.
                OrphanKind::Nar => self.exec(
                    "INSERT OR REPLACE INTO nar_deleting (nar, at) VALUES (?, ?)",
                    &[text(&object.key), integer(page.now)],
                )?,
                OrphanKind::Log(drv) => {
                    self.exec("DELETE FROM owned_logs WHERE drv = ?", &[text(drv)])?
                }
                _ => {}
            }
            self.exec(
                "DELETE FROM orphan_candidates WHERE key = ?",
                &[text(&object.key)],
            )?;
            delete.push(object.key.clone());
        }
        state.run.listed_keys += page.objects.len() as u64;
        state.run.removed_objects += delete.len() as u64;
        match &page.through {
            Some(through) => state.cursor = through.clone(),
            None => {
                // Every removal past its grace when this listing began had its keys
                // looked at: its record has done its work.
                self.exec(
                    "DELETE FROM removed WHERE removed_at < ? \
                       AND hash NOT IN (SELECT hash FROM deleting WHERE done = 0) \
                       AND hash NOT IN (SELECT hash FROM gc_pending)",
                    &[integer(state.orphans_from.saturating_sub(grace))],
                )?;
                self.exec("DELETE FROM gc_hold WHERE until <= ?", &[integer(page.now)])?;
                // Candidates this listing did not see are gone from the bucket.
                self.exec(
                    "DELETE FROM orphan_candidates WHERE seen_in < ?",
                    &[integer(state.run.run)],
                )?;
                self.exec(
                    "DELETE FROM nar_deleting WHERE at < ?",
                    &[integer(page.now.saturating_sub(STALE_DELETE_MS))],
                )?;
                self.exec(
                    "DELETE FROM pins WHERE expires_at IS NOT NULL AND expires_at <= ?",
                    &[integer(page.now)],
                )?;
                state.cursor.clear();
                state.run.phase = GcPhase::Done;
                state.run.finished_at = Some(page.now);
            }
        }
        self.save_gc(&state)?;
        Ok(Orphans {
            delete,
            run: state.run,
        })
    }

    /// The latest recorded removal of a path that used `object`, if the index has one.
    fn last_removal(&self, object: &Listed) -> Answer<Option<u64>> {
        let (column, value) = match orphan_kind(&object.key) {
            OrphanKind::Nar => ("nar", object.key.clone()),
            OrphanKind::DebugInfo => match &object.points_to {
                Some(nar) => ("nar", nar.clone()),
                None => return Ok(None),
            },
            OrphanKind::Listing(hash) => ("hash", hash.to_string()),
            OrphanKind::Realisation => match &object.points_to {
                Some(out) => ("hash", out.clone()),
                None => return Ok(None),
            },
            OrphanKind::Log(drv) => ("deriver", drv),
            OrphanKind::Keep => return Ok(None),
        };
        #[derive(Deserialize)]
        struct SinceRow {
            since: Option<u64>,
        }
        Ok(self
            .rows::<SinceRow>(
                &format!("SELECT MAX(removed_at) AS since FROM removed WHERE {column} = ?"),
                &[text(value)],
            )?
            .into_iter()
            .next()
            .and_then(|row| row.since))
    }

    fn is_orphan(&self, object: &Listed, cutoff: u64) -> Answer<bool> {
        let old = object.uploaded < cutoff;
        // A NAR no path uses, none being published uses, no path removed within the
        // grace period used, no path whose narinfo's removal R2 has not confirmed uses
        // (it may still be served), and no narinfo the index cannot parse names.
        let unused_nar = |nar: &str| -> Answer<bool> {
            Ok(!self.exists(
                "SELECT 1 AS n FROM paths WHERE nar = ?1 \
                 UNION ALL SELECT 1 FROM reservations WHERE nar = ?1 \
                 UNION ALL SELECT 1 FROM removed WHERE nar = ?1 AND removed_at >= ?2 \
                 UNION ALL SELECT 1 FROM removed AS r WHERE r.nar = ?1 AND ( \
                   EXISTS (SELECT 1 FROM deleting AS d WHERE d.hash = r.hash AND d.done = 0) \
                   OR EXISTS (SELECT 1 FROM gc_pending AS g WHERE g.hash = r.hash)) \
                 UNION ALL SELECT 1 FROM unreadable WHERE nar = ?1 LIMIT 1",
                &[text(nar), integer(cutoff)],
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
                    &[text(hash), integer(cutoff)],
                )?
            }
            OrphanKind::Log(drv) => {
                // Only a log uploaded as a path's (`logs/own`), once that path is gone: a
                // log pushed on its own, or before any path named it, stays.
                self.exists(
                    "SELECT 1 AS n FROM owned_logs WHERE drv = ?1",
                    &[text(&drv)],
                )? && self.exists(
                    "SELECT 1 AS n FROM removed WHERE deriver = ?1 AND removed_at < ?2 LIMIT 1",
                    &[text(&drv), integer(cutoff)],
                )? && !self.exists(
                    "SELECT 1 AS n FROM paths WHERE deriver = ?1 \
                     UNION ALL SELECT 1 FROM removed WHERE deriver = ?1 AND removed_at >= ?2 LIMIT 1",
                    &[text(&drv), integer(cutoff)],
                )?
            }
            OrphanKind::Realisation => match &object.points_to {
                Some(out) => {
                    self.exists(
                        "SELECT 1 AS n FROM removed WHERE hash = ? AND removed_at < ?",
                        &[text(out), integer(cutoff)],
                    )? && !self.exists("SELECT 1 AS n FROM paths WHERE hash = ?", &[text(out)])?
                }
                None => false,
            },
            OrphanKind::Keep => false,
        })
    }
}
