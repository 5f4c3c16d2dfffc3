//! The index's side of reconcile laps (docs/index.md, "Reconciling with the bucket:
//! laps"): a page of the bucket checked against the index, what the worker read adopted,
//! the cursor moved, laps begun and completed. The procedure that lists and reads the
//! bucket is `passes/reconcile.rs`.

use serde::Deserialize;

use super::sql::{integer, text, Sql, Value};
use super::store::{
    being_deleted, hash_array, Answer, Index, COMPLETE_LAP_KEY, CURSOR_KEY, LAP_STARTED_KEY,
    LAST_PASS_KEY,
};
use super::{
    Advance, Cursor, PageChecked, ReconcilePage, RECONCILE_MARGIN_MS, STALE_DELETE_MS,
    STALE_RESERVATION_MS,
};
use crate::core::api::{self, ReconcileState};

impl<S: Sql> Index<S> {
    pub fn reconcile_state(&self) -> Answer<ReconcileState> {
        Ok(ReconcileState {
            after: self.meta_text(CURSOR_KEY)?.unwrap_or_default(),
            last_pass_at: self.meta_time(LAST_PASS_KEY)?,
            complete_lap_started_at: self.meta_time(COMPLETE_LAP_KEY)?,
            lap_started_at: self.meta_time(LAP_STARTED_KEY)?,
        })
    }

    /// When the last complete reconcile lap began (see [`ReconcileState`]).
    pub(super) fn complete_lap_started_at(&self) -> Answer<Option<u64>> {
        self.meta_time(COMPLETE_LAP_KEY)
    }

    pub fn cursor(&self, _: api::True) -> Answer<Cursor> {
        self.ready()?;
        Ok(Cursor {
            after: self.meta_text(CURSOR_KEY)?.unwrap_or_default(),
            moved: true,
        })
    }

    pub fn reconcile_page(&self, page: ReconcilePage) -> Answer<PageChecked> {
        self.ready_at(page.listed_at)?;
        let through = page.through.clone().map_or(Value::Null, Value::Text);
        let after = Value::Text(page.after.clone());
        let narinfos = hash_array(&page.narinfos);
        // `hash >= substr(key, 1, 32)` follows from `hash || '.narinfo' > key` (and `<=`
        // for the upper bound); stated, it lets SQLite walk the primary key over the
        // page's range instead of reading every row.
        let in_page = |column: &str| {
            format!(
                "{column} >= substr(?1, 1, 32) AND {column} || '.narinfo' > ?1 \
                 AND (?2 IS NULL OR ({column} <= substr(?2, 1, 32) AND {column} || '.narinfo' <= ?2)) \
                 AND {column} NOT IN (SELECT value FROM json_each(?3))"
            )
        };
        let cutoff = integer(page.listed_at.saturating_sub(RECONCILE_MARGIN_MS));
        // Gone from the bucket: their NARs are kept for the GC's grace period too.
        self.exec(
            &format!(
                "INSERT OR REPLACE INTO removed (hash, nar, deriver, removed_at) \
                 SELECT hash, nar, deriver, ?5 FROM paths WHERE {} AND published_at < ?4",
                in_page("hash")
            ),
            &[
                after.clone(),
                through.clone(),
                narinfos.clone(),
                cutoff.clone(),
                integer(page.listed_at),
            ],
        )?;
        let removed = self.hashes(
            &format!(
                "DELETE FROM paths WHERE {} AND published_at < ?4 RETURNING hash",
                in_page("hash")
            ),
            &[after.clone(), through.clone(), narinfos.clone(), cutoff],
        )?;
        // Narinfos that could not be parsed, gone now: what Nix would have taken for
        // their NARs gets the grace period too.
        self.exec(
            &format!(
                "INSERT OR REPLACE INTO removed (hash, nar, deriver, removed_at) \
                 SELECT hash, nar, NULL, ?4 FROM unreadable WHERE {} AND nar IS NOT NULL",
                in_page("hash")
            ),
            &[
                after.clone(),
                through.clone(),
                narinfos.clone(),
                integer(page.listed_at),
            ],
        )?;
        self.exec(
            &format!("DELETE FROM unreadable WHERE {}", in_page("hash")),
            &[after.clone(), through.clone(), narinfos.clone()],
        )?;
        // Deletes whose narinfo is gone from the bucket are done, confirmed or not.
        // (An old marker whose narinfo is still here stays until `advance` adopts the
        // narinfo again: until then its NAR is kept.) Markers already confirmed keep
        // their time: a lap must not start their grace again.
        let mut gone = self.hashes(
            &format!(
                "SELECT hash FROM deleting WHERE {} AND done = 0",
                in_page("hash")
            ),
            &[after.clone(), through.clone(), narinfos.clone()],
        )?;
        gone.extend(removed.iter().copied());
        // Their references protect nothing any more, once held for the edge cache
        // (nobody purged it of these), and their NARs' grace counts from now at the
        // latest.
        self.confirm_removed(&gone, page.listed_at, false)?;
        self.exec(
            &format!("DELETE FROM deleting WHERE {} AND at < ?4", in_page("hash")),
            &[
                after,
                through,
                narinfos,
                integer(page.listed_at.saturating_sub(STALE_DELETE_MS)),
            ],
        )?;
        // Missing from the index, or stored in R2 well after the index recorded it (the
        // margin covers a publish's own write, which follows its recorded time), or
        // named by a publish that died half-way (its narinfo may have replaced the
        // recorded one within that margin): read again.
        let unindexed = self.hashes(
            &format!(
                "SELECT q.value AS hash FROM json_each(?1) AS q \
                 WHERE (NOT EXISTS (SELECT 1 FROM paths AS p WHERE p.hash = q.value \
                     AND p.published_at + ?4 >= COALESCE(json_extract(?3, '$[' || q.key || ']'), 0)) \
                   OR EXISTS (SELECT 1 FROM reservations AS v WHERE v.hash = q.value \
                     AND v.created_at < ?5)) \
                   AND NOT {}",
                being_deleted("q.value", 2)
            ),
            &[
                hash_array(&page.narinfos),
                integer(page.listed_at.saturating_sub(STALE_DELETE_MS)),
                Value::Text(api::render(&page.uploaded)),
                integer(RECONCILE_MARGIN_MS),
                integer(page.listed_at.saturating_sub(STALE_RESERVATION_MS)),
            ],
        )?;
        Ok(PageChecked {
            unindexed,
            removed: removed.len() as u64,
        })
    }

    pub fn advance(&self, advance: Advance) -> Answer<Cursor> {
        self.ready_at(advance.now)?;
        for entry in &advance.adopt {
            self.adopt(entry, advance.now)?;
        }
        for unreadable in &advance.unreadable {
            self.exec(
                "INSERT OR REPLACE INTO unreadable (hash, nar, seen_at) VALUES (?, ?, ?)",
                &[
                    text(unreadable.hash),
                    unreadable.nar.clone().into(),
                    integer(advance.now),
                ],
            )?;
        }
        // Reservations of publishes that died half-way, in this page's range: their
        // narinfo, if it reached the bucket, was just adopted, so what they kept from
        // deletion stays kept. (Dropped anywhere else, a narinfo in R2 that no lap has
        // seen yet would lose its references' protection.)
        #[derive(Deserialize)]
        struct IdRow {
            id: u64,
        }
        let dropped: Vec<u64> = self
            .rows::<IdRow>(
                "DELETE FROM reservations WHERE created_at < ?3 \
                   AND hash >= substr(?1, 1, 32) AND hash || '.narinfo' > ?1 \
                   AND (?2 IS NULL OR (hash <= substr(?2, 1, 32) AND hash || '.narinfo' <= ?2)) \
                 RETURNING id",
                &[
                    Value::Text(advance.after.clone()),
                    advance.through.clone().map_or(Value::Null, Value::Text),
                    integer(advance.listed_at.saturating_sub(STALE_RESERVATION_MS)),
                ],
            )?
            .into_iter()
            .map(|row| row.id)
            .collect();
        self.exec(
            "DELETE FROM reserved_refs WHERE reservation IN (SELECT value FROM json_each(?))",
            &[Value::Text(api::render(&dropped))],
        )?;
        let current = self.meta_text(CURSOR_KEY)?.unwrap_or_default();
        if current != advance.after {
            return Ok(Cursor {
                after: current,
                moved: false,
            });
        }
        if advance.after.is_empty() {
            // The first page of a lap: everything in the bucket before this listing is
            // seen by the time the lap comes round.
            self.set_meta(LAP_STARTED_KEY, advance.listed_at.to_string())?;
        }
        let next = advance.through.unwrap_or_default();
        if next.is_empty() {
            if let Some(started) = self.meta_time(LAP_STARTED_KEY)? {
                self.set_meta(COMPLETE_LAP_KEY, started.to_string())?;
            }
            self.set_meta(LAST_PASS_KEY, advance.now.to_string())?;
            self.clear_meta(LAP_STARTED_KEY)?;
        }
        self.set_meta(CURSOR_KEY, next.clone())?;
        Ok(Cursor {
            after: next,
            moved: true,
        })
    }
}
