//! [`Index`]: the object's state, and one handler per operation. Each handler runs
//! alone (the object serialises requests) and never awaits, so each is atomic: "check
//! the references, then reserve", "check nothing refers to it, then forget it", "move
//! the cursor only if it is still here". The GC's handlers are in `gc_store.rs`.
//!
//! Two rules keep the index from ever claiming more than the bucket holds, or losing
//! what protects a reference:
//! - a path is recorded only after its narinfo is in R2 (`commit`, `adopt`);
//! - a path being removed keeps its references recorded until R2 confirms its narinfo
//!   is gone (`forget/done`, `gc/swept`): until then it may still be served, so nothing
//!   it names may go.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::schema;
use super::sql::{integer, text, Sql, Value};
use super::{
    Adopt, Begin, BeginBatch, Begun, BegunBatch, Entry, Finish, FinishBatch, Forget, Forgot,
    IndexError, OwnLog, Query, UpstreamHit, MAX_LISTED, RECONCILE_MARGIN_MS, STALE_DELETE_MS,
    STALE_RESERVATION_MS, UPSTREAM_MEMORY_MS,
};
use crate::core::api::{self, PathQueryAnswer, Publish, Stats};
use crate::core::gc::EDGE_HOLD_MS;
use crate::core::nix::store_path::StorePathHash;

pub(super) const CURSOR_KEY: &str = "reconcile_after";
pub(super) const LAST_PASS_KEY: &str = "reconcile_last_pass_at";
pub(super) const LAP_STARTED_KEY: &str = "reconcile_lap_started_at";
pub(super) const COMPLETE_LAP_KEY: &str = "reconcile_complete_lap_started_at";
/// When this index began to remember (the first request it handled that carried the
/// time): what was deleted before, without an edge-cache purge, it cannot know.
pub(super) const BORN_KEY: &str = "born_at";

/// The index: its SQL, and whether its schema is current.
pub struct Index<S: Sql> {
    pub(super) sql: S,
    schema: Result<(), String>,
}

pub(super) type Answer<T> = Result<T, IndexError>;

/// A JSON array of hashes, bound as one parameter and read with `json_each`.
pub(super) fn hash_array(hashes: &[StorePathHash]) -> Value {
    let texts: Vec<String> = hashes.iter().map(ToString::to_string).collect();
    Value::Text(api::render(&texts))
}

pub(super) fn parse_hash(text: &str) -> Answer<StorePathHash> {
    text.parse().map_err(|_| IndexError::Corrupt {
        what: "store path hash",
        value: text.to_owned(),
    })
}

/// "Its narinfo is being deleted": a DELETE under way (for [`STALE_DELETE_MS`] at most:
/// `?{stale}` binds the cutoff), or a GC removal R2 has not confirmed (no expiry: the
/// GC hands it out again until it is).
pub(super) fn being_deleted(hash: &str, stale: u32) -> String {
    format!(
        "(EXISTS (SELECT 1 FROM deleting AS d WHERE d.hash = {hash} AND d.done = 0 AND d.at > ?{stale}) \
          OR EXISTS (SELECT 1 FROM gc_pending AS g WHERE g.hash = {hash}))"
    )
}

#[derive(Deserialize)]
pub(super) struct HashRow {
    pub(super) hash: String,
}

#[derive(Deserialize)]
pub(super) struct CountRow {
    pub(super) n: u64,
}

impl<S: Sql> Index<S> {
    /// Opens the index, bringing its schema up to date. A failure is kept: every
    /// request then answers with it.
    pub fn open(sql: S) -> Self {
        let schema = schema::migrate(&sql)
            .and_then(|_| {
                schema::AUXILIARY
                    .iter()
                    .try_for_each(|statement| sql.exec(statement, &[]))
            })
            .map_err(|err| err.0);
        Index { sql, schema }
    }

    pub(super) fn ready(&self) -> Answer<()> {
        self.schema.clone().map_err(IndexError::Schema)
    }

    /// [`Self::ready`], and the index's birth recorded if this is its first request.
    pub(super) fn ready_at(&self, now: u64) -> Answer<()> {
        self.ready()?;
        self.exec(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
            &[text(BORN_KEY), text(now)],
        )
    }

    pub(super) fn exec(&self, query: &str, params: &[Value]) -> Answer<()> {
        Ok(self.sql.exec(query, params)?)
    }

    pub(super) fn rows<T: DeserializeOwned>(
        &self,
        query: &str,
        params: &[Value],
    ) -> Answer<Vec<T>> {
        Ok(self.sql.rows(query, params)?)
    }

    pub(super) fn hashes(&self, query: &str, params: &[Value]) -> Answer<Vec<StorePathHash>> {
        self.rows::<HashRow>(query, params)?
            .iter()
            .map(|row| parse_hash(&row.hash))
            .collect()
    }

    pub(super) fn exists(&self, query: &str, params: &[Value]) -> Answer<bool> {
        Ok(!self.rows::<CountRow>(query, params)?.is_empty())
    }

    pub(super) fn number(&self, query: &str, params: &[Value]) -> Answer<u64> {
        Ok(self
            .rows::<CountRow>(query, params)?
            .first()
            .map_or(0, |row| row.n))
    }

    pub(super) fn meta_text(&self, key: &str) -> Answer<Option<String>> {
        // `value` is untyped in the schema: read it as text.
        #[derive(Deserialize)]
        struct TextRow {
            value: Option<String>,
        }
        Ok(self
            .rows::<TextRow>(
                "SELECT CAST(value AS TEXT) AS value FROM meta WHERE key = ?",
                &[text(key)],
            )?
            .into_iter()
            .next()
            .and_then(|row| row.value))
    }

    pub(super) fn meta_time(&self, key: &str) -> Answer<Option<u64>> {
        Ok(self.meta_text(key)?.and_then(|t| t.parse().ok()))
    }

    pub(super) fn set_meta(&self, key: &str, value: String) -> Answer<()> {
        self.exec(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            &[text(key), Value::Text(value)],
        )
    }

    pub(super) fn clear_meta(&self, key: &str) -> Answer<()> {
        self.exec("DELETE FROM meta WHERE key = ?", &[text(key)])
    }

    /// Forgets published paths: their rows go, a delete marker stays (no publish counts
    /// on them while R2 deletes their narinfos), a record of the removal keeps their
    /// NARs and side files for the GC's grace period, and their references stay until
    /// R2 confirms ([`Self::confirm_removed`]).
    pub(super) fn remove_paths(&self, hashes: &[StorePathHash], now: u64) -> Answer<()> {
        let list = hash_array(hashes);
        self.exec(
            "INSERT OR REPLACE INTO removed (hash, nar, deriver, removed_at) \
             SELECT hash, nar, deriver, ?2 FROM paths WHERE hash IN (SELECT value FROM json_each(?1))",
            &[list.clone(), integer(now)],
        )?;
        self.exec(
            "DELETE FROM paths WHERE hash IN (SELECT value FROM json_each(?))",
            std::slice::from_ref(&list),
        )?;
        self.exec(
            "INSERT OR REPLACE INTO deleting (hash, at, done) SELECT value, ?2, 0 FROM json_each(?1)",
            &[list, integer(now)],
        )
    }

    /// R2 no longer holds these narinfos (as of `now`): their references stop counting
    /// (unless the path was published again meanwhile), their delete markers are done,
    /// and the grace period of their NARs and side files counts from now: until now the
    /// narinfo could still be served.
    pub(super) fn confirm_removed(
        &self,
        hashes: &[StorePathHash],
        now: u64,
        purged: bool,
    ) -> Answer<()> {
        let list = hash_array(hashes);
        if !purged {
            // A copy of these narinfos may be served from the edge cache for a while
            // yet: what they reference stays until no such copy is left.
            self.exec(
                "INSERT INTO gc_hold (hash, until) \
                 SELECT reference, ?2 FROM refs WHERE referrer IN (SELECT value FROM json_each(?1)) \
                   AND referrer NOT IN (SELECT hash FROM paths) AND true \
                 ON CONFLICT (hash) DO UPDATE SET until = MAX(until, excluded.until)",
                &[list.clone(), integer(now.saturating_add(EDGE_HOLD_MS))],
            )?;
        }
        self.exec(
            "UPDATE removed SET removed_at = MAX(removed_at, ?2) \
             WHERE hash IN (SELECT value FROM json_each(?1))",
            &[list.clone(), integer(now)],
        )?;
        self.exec(
            "DELETE FROM refs WHERE referrer IN (SELECT value FROM json_each(?1)) \
               AND referrer NOT IN (SELECT hash FROM paths)",
            std::slice::from_ref(&list),
        )?;
        self.exec(
            "UPDATE deleting SET done = 1 WHERE hash IN (SELECT value FROM json_each(?))",
            &[list],
        )
    }

    /// Records a published path, replacing what was recorded before (its push time
    /// never goes back: a narinfo read again keeps the renewals it had).
    fn record(&self, entry: &Entry) -> Answer<()> {
        // A replacement with another NAR: the old one keeps the GC's grace period.
        self.exec(
            "INSERT OR REPLACE INTO removed (hash, nar, deriver, removed_at) \
             SELECT hash, nar, deriver, ?3 FROM paths WHERE hash = ?1 AND nar != ?2",
            &[
                text(entry.hash),
                text(&entry.nar),
                integer(entry.published_at),
            ],
        )?;
        self.exec(
            "INSERT OR REPLACE INTO paths (hash, name, nar, file_size, nar_size, deriver, \
             published_at, token_id, subject, pushed_at, ref_count, signed) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                     MAX(?7, COALESCE((SELECT pushed_at FROM paths WHERE hash = ?1), 0)), ?10, ?11)",
            &[
                text(entry.hash),
                text(&entry.name),
                text(&entry.nar),
                integer(entry.file_size),
                integer(entry.nar_size),
                entry.deriver.clone().into(),
                integer(entry.published_at),
                entry.token_id.map(|id| id.to_string()).into(),
                entry.subject.clone().into(),
                integer(entry.references.len() as u64),
                integer(u64::from(entry.signed)),
            ],
        )?;
        // New references first, then the old ones no longer named: a statement that
        // fails part-way (the object's storage full) leaves more protected, never less.
        self.exec(
            "INSERT OR IGNORE INTO refs (referrer, reference) SELECT ?1, value FROM json_each(?2)",
            &[text(entry.hash), hash_array(&entry.references)],
        )?;
        self.exec(
            "DELETE FROM refs WHERE referrer = ?1 \
               AND reference NOT IN (SELECT value FROM json_each(?2))",
            &[text(entry.hash), hash_array(&entry.references)],
        )?;
        self.exec("DELETE FROM unreadable WHERE hash = ?", &[text(entry.hash)])
    }

    /// Records a path found in the bucket, unless the index already has it (a publish
    /// that recorded it meanwhile knows more: who pushed it; but a narinfo R2 stored well
    /// after that record replaced it behind the worker's back, and one a publish that
    /// died half-way may have replaced, count) or its narinfo is being
    /// deleted (a DELETE within the hour, or one that R2 stored before a recent delete;
    /// a GC removal until R2 confirms it).
    pub(super) fn adopt(&self, entry: &Entry, now: u64) -> Answer<bool> {
        // Known, unless R2 stored this narinfo well after the index recorded the path (it
        // was replaced behind the worker's back: the bucket's version counts).
        let known = self.exists(
            "SELECT 1 AS n FROM paths WHERE hash = ?1 AND published_at + ?4 >= ?3 \
               AND NOT EXISTS (SELECT 1 FROM reservations WHERE hash = ?1 AND created_at < ?5) \
             UNION ALL SELECT 1 FROM deleting WHERE hash = ?1 AND at > ?2 \
               AND (done = 0 OR at >= ?3) \
             UNION ALL SELECT 1 FROM gc_pending WHERE hash = ?1",
            &[
                text(entry.hash),
                integer(now.saturating_sub(STALE_DELETE_MS)),
                integer(entry.published_at),
                integer(RECONCILE_MARGIN_MS),
                integer(now.saturating_sub(STALE_RESERVATION_MS)),
            ],
        )?;
        if known {
            return Ok(false);
        }
        self.record(entry)?;
        // A delete that never reached R2: the path is back, its marker done with.
        self.exec("DELETE FROM deleting WHERE hash = ?", &[text(entry.hash)])?;
        // A version the pass under way did not see (read by its lap, or replaced behind
        // the worker's back since): judged by the next pass, not by what this one's
        // seed or doomed list made of the old version (only paths the seed saw can be
        // doomed).
        self.exec("DELETE FROM gc_mark WHERE hash = ?", &[text(entry.hash)])?;
        self.touch(&[entry.hash])?;
        Ok(true)
    }

    pub fn adopt_all(&self, adopt: Adopt) -> Answer<api::True> {
        self.ready_at(adopt.now)?;
        for entry in &adopt.entries {
            self.adopt(entry, adopt.now)?;
        }
        Ok(api::True)
    }

    pub fn begin(&self, begin: Begin) -> Answer<Begun> {
        self.ready_at(begin.now)?;
        self.learn(&begin.adopt, &begin.upstream_hits, begin.now)?;
        self.reserve(&begin.entry, &begin.upstreams, &[], begin.now)
    }

    /// Reserves a batch's entries in order: each one reserved counts as present for
    /// those after it (the worker stores their narinfos in that order).
    pub fn begin_batch(&self, batch: BeginBatch) -> Answer<BegunBatch> {
        self.ready_at(batch.now)?;
        self.learn(&batch.adopt, &batch.upstream_hits, batch.now)?;
        let mut present = batch.present;
        let mut begun = Vec::with_capacity(batch.entries.len());
        for entry in &batch.entries {
            let answer = self.reserve(entry, &batch.upstreams, &present, batch.now)?;
            if let Begun::Reserved { .. } = answer {
                present.push(entry.hash);
            }
            begun.push(answer);
        }
        Ok(BegunBatch { begun })
    }

    /// What the worker found for references the index lacked: narinfos in the bucket,
    /// and upstream caches that serve them.
    fn learn(&self, adopt: &[Entry], upstream_hits: &[UpstreamHit], now: u64) -> Answer<()> {
        for entry in adopt {
            self.adopt(entry, now)?;
        }
        for hit in upstream_hits {
            self.exec(
                "INSERT OR REPLACE INTO upstream (hash, cache, checked_at) VALUES (?, ?, ?)",
                &[text(hit.hash), text(&hit.cache), integer(now)],
            )?;
        }
        Ok(())
    }

    /// Reserves `entry`'s path if every reference is present: indexed and not being
    /// deleted, known to be served by one of `upstreams`, or in `reserved` (reserved
    /// for the same batch, stored before it and committed with it).
    fn reserve(
        &self,
        entry: &Entry,
        upstreams: &[String],
        reserved: &[StorePathHash],
        now: u64,
    ) -> Answer<Begun> {
        let stale = integer(now.saturating_sub(STALE_DELETE_MS));
        // The path itself is being deleted, or its NAR is (by the orphan step: a NAR
        // the publish found a moment ago; the retry finds it gone and uploads it).
        let deleting = self.exists(
            &format!(
                "SELECT 1 AS n WHERE {} \
                 OR EXISTS (SELECT 1 FROM nar_deleting WHERE nar = ?3 AND at > ?2)",
                being_deleted("?1", 2)
            ),
            &[text(entry.hash), stale.clone(), text(&entry.nar)],
        )?;
        if deleting {
            return Ok(Begun::Deleting {
                deleting: api::True,
            });
        }
        // Correlated lookups: each reference is a few index probes, never a table scan.
        let missing = self.hashes(
            &format!(
                "SELECT r.value AS hash FROM json_each(?1) AS r \
                 WHERE (NOT EXISTS (SELECT 1 FROM paths AS p WHERE p.hash = r.value) \
                        OR {}) \
                   AND NOT EXISTS (SELECT 1 FROM upstream AS u \
                        WHERE u.hash = r.value AND u.checked_at > ?4 \
                          AND u.cache IN (SELECT c.value FROM json_each(?2) AS c)) \
                   AND r.value NOT IN (SELECT value FROM json_each(?5))",
                being_deleted("r.value", 3)
            ),
            &[
                hash_array(&entry.references),
                Value::Text(api::render(&upstreams)),
                stale,
                integer(now.saturating_sub(UPSTREAM_MEMORY_MS)),
                hash_array(reserved),
            ],
        )?;
        if !missing.is_empty() {
            return Ok(Begun::Missing { missing });
        }
        #[derive(Deserialize)]
        struct IdRow {
            id: u64,
        }
        let id = self
            .rows::<IdRow>(
                "INSERT INTO reservations (hash, entry, created_at, nar) VALUES (?, ?, ?, ?) \
                 RETURNING id",
                &[
                    text(entry.hash),
                    Value::Text(api::render(entry)),
                    integer(now),
                    text(&entry.nar),
                ],
            )?
            .first()
            .map(|row| row.id)
            .ok_or_else(|| IndexError::Storage("no reservation id".into()))?;
        self.exec(
            "INSERT OR IGNORE INTO reserved_refs (reservation, reference) \
             SELECT ?1, value FROM json_each(?2)",
            &[integer(id), hash_array(&entry.references)],
        )?;
        Ok(Begun::Reserved { reservation: id })
    }

    /// The entry a reservation was taken for.
    fn reserved_entry(&self, id: u64) -> Answer<Option<Entry>> {
        #[derive(Deserialize)]
        struct EntryRow {
            hash: String,
            name: String,
            nar: String,
            file_size: u64,
            nar_size: u64,
            deriver: Option<String>,
            token_id: Option<String>,
            subject: Option<String>,
            signed: Option<u64>,
        }
        let Some(row) = self
            .rows::<EntryRow>(
                "SELECT json_extract(entry, '$.hash') AS hash, json_extract(entry, '$.name') AS name, \
                 json_extract(entry, '$.nar') AS nar, json_extract(entry, '$.fileSize') AS file_size, \
                 json_extract(entry, '$.narSize') AS nar_size, \
                 json_extract(entry, '$.deriver') AS deriver, \
                 json_extract(entry, '$.tokenId') AS token_id, \
                 json_extract(entry, '$.subject') AS subject, \
                 json_extract(entry, '$.signed') AS signed \
                 FROM reservations WHERE id = ?",
                &[integer(id)],
            )?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let references = self.hashes(
            "SELECT reference AS hash FROM reserved_refs WHERE reservation = ? ORDER BY reference",
            &[integer(id)],
        )?;
        let token_id = match row.token_id {
            Some(id) => Some(id.parse().map_err(|_| IndexError::Corrupt {
                what: "token id",
                value: id,
            })?),
            None => None,
        };
        Ok(Some(Entry {
            hash: parse_hash(&row.hash)?,
            name: row.name,
            nar: row.nar,
            file_size: row.file_size,
            nar_size: row.nar_size,
            references,
            deriver: row.deriver,
            published_at: 0,
            token_id,
            subject: row.subject,
            signed: row.signed.unwrap_or(0) != 0,
        }))
    }

    fn drop_reservation(&self, id: u64) -> Answer<()> {
        self.exec("DELETE FROM reservations WHERE id = ?", &[integer(id)])?;
        self.exec(
            "DELETE FROM reserved_refs WHERE reservation = ?",
            &[integer(id)],
        )
    }

    pub fn commit(&self, finish: Finish) -> Answer<api::True> {
        self.ready()?;
        // A reservation the reconcile pass dropped as stale: the narinfo is in the bucket
        // and the next lap indexes it.
        if let Some(mut entry) = self.reserved_entry(finish.reservation)? {
            entry.published_at = finish.now;
            // The same bytes again: the first publish's record (who, when) stands.
            let keep = finish.unchanged
                && self.exists(
                    "SELECT 1 AS n FROM paths WHERE hash = ?",
                    &[text(entry.hash)],
                )?;
            self.touch(&[entry.hash])?;
            if keep {
                // Pushed again: a GC root anew.
                self.exec(
                    "UPDATE paths SET pushed_at = MAX(pushed_at, ?2) WHERE hash = ?1",
                    &[text(entry.hash), integer(finish.now)],
                )?;
            } else {
                self.record(&entry)?;
            }
        }
        self.drop_reservation(finish.reservation)?;
        Ok(api::True)
    }

    pub fn abort(&self, finish: Finish) -> Answer<api::True> {
        self.ready()?;
        self.drop_reservation(finish.reservation)?;
        Ok(api::True)
    }

    pub fn finish_batch(&self, batch: FinishBatch) -> Answer<api::True> {
        for stored in batch.commit {
            self.commit(Finish {
                reservation: stored.reservation,
                now: batch.now,
                unchanged: stored.unchanged,
            })?;
        }
        for reservation in batch.abort {
            self.abort(Finish {
                reservation,
                now: batch.now,
                unchanged: false,
            })?;
        }
        Ok(api::True)
    }

    pub fn forget(&self, forget: Forget) -> Answer<Forgot> {
        self.ready_at(forget.now)?;
        let hash = text(forget.hash);
        if self.exists(
            "SELECT 1 AS n FROM reservations WHERE hash = ? LIMIT 1",
            std::slice::from_ref(&hash),
        )? {
            return Ok(Forgot::Publishing {
                publishing: api::True,
            });
        }
        let referrers = self.hashes(
            "SELECT referrer AS hash FROM refs WHERE reference = ?1 AND referrer != ?1 \
             UNION SELECT r.hash AS hash FROM reserved_refs AS rr \
             JOIN reservations AS r ON r.id = rr.reservation WHERE rr.reference = ?1 \
             LIMIT ?2",
            &[hash.clone(), integer(MAX_LISTED as u64)],
        )?;
        if !referrers.is_empty() {
            return Ok(Forgot::Referenced { referrers });
        }
        #[derive(Deserialize)]
        struct NameRow {
            name: String,
        }
        let pins = self.rows::<NameRow>(
            "SELECT name FROM pins WHERE hash = ? ORDER BY name LIMIT ?",
            &[hash, integer(MAX_LISTED as u64)],
        )?;
        if !pins.is_empty() {
            let pins = pins
                .iter()
                .map(|row| {
                    row.name.parse().map_err(|_| IndexError::Corrupt {
                        what: "pin name",
                        value: row.name.clone(),
                    })
                })
                .collect::<Answer<_>>()?;
            return Ok(Forgot::Pinned { pins });
        }
        self.remove_paths(&[forget.hash], forget.now)?;
        if let Some(nar) = &forget.nar {
            self.exec(
                "INSERT OR IGNORE INTO removed (hash, nar, deriver, removed_at) VALUES (?, ?, NULL, ?)",
                &[text(forget.hash), text(nar), integer(forget.now)],
            )?;
        }
        Ok(Forgot::Forgotten {
            forgotten: api::True,
        })
    }

    /// The DELETE's R2 delete is done. Its marker stays, done, for a while: see `adopt`.
    pub fn forget_done(&self, forget: Forget) -> Answer<api::True> {
        self.ready()?;
        self.confirm_removed(&[forget.hash], forget.now, forget.purged)?;
        Ok(api::True)
    }

    pub fn query(&self, query: Query) -> Answer<PathQueryAnswer> {
        self.ready_at(query.now)?;
        #[derive(Deserialize)]
        struct MissingRow {
            hash: String,
            upstream: u64,
        }
        let rows = self.rows::<MissingRow>(
            &format!(
                "SELECT q.value AS hash, EXISTS (SELECT 1 FROM upstream AS u WHERE u.hash = q.value \
                   AND u.checked_at > ?3 \
                   AND u.cache IN (SELECT c.value FROM json_each(?2) AS c)) AS upstream \
                 FROM json_each(?1) AS q \
                 WHERE NOT EXISTS (SELECT 1 FROM paths AS p WHERE p.hash = q.value) OR {}",
                being_deleted("q.value", 4)
            ),
            &[
                hash_array(&query.hashes),
                Value::Text(api::render(&query.upstreams)),
                integer(query.now.saturating_sub(UPSTREAM_MEMORY_MS)),
                integer(query.now.saturating_sub(STALE_DELETE_MS)),
            ],
        )?;
        let mut answer = PathQueryAnswer {
            missing: Vec::with_capacity(rows.len()),
            in_upstream: Vec::new(),
        };
        for row in rows {
            let hash = parse_hash(&row.hash)?;
            answer.missing.push(hash);
            if row.upstream != 0 {
                answer.in_upstream.push(hash);
            }
        }
        Ok(answer)
    }

    pub fn stats(&self, _: api::True) -> Answer<Stats> {
        self.ready()?;
        #[derive(Deserialize)]
        struct TotalsRow {
            paths: u64,
            nar_bytes: u64,
        }
        let totals = self
            .rows::<TotalsRow>(
                "SELECT COUNT(*) AS paths, COALESCE(SUM(nar_size), 0) AS nar_bytes FROM paths",
                &[],
            )?
            .into_iter()
            .next()
            .ok_or_else(|| IndexError::Storage("no totals".into()))?;
        let stored_bytes = self.number(
            "SELECT COALESCE(SUM(size), 0) AS n FROM \
             (SELECT MAX(file_size) AS size FROM paths GROUP BY nar)",
            &[],
        )?;
        #[derive(Deserialize)]
        struct RecentRow {
            hash: String,
            name: String,
            published_at: u64,
            subject: Option<String>,
            token_id: Option<String>,
        }
        let recent = self
            .rows::<RecentRow>(
                "SELECT hash, name, published_at, subject, token_id FROM paths \
                 ORDER BY published_at DESC LIMIT 10",
                &[],
            )?
            .into_iter()
            .map(|row| Publish {
                store_path: format!("{}-{}", row.hash, row.name),
                published_at: row.published_at,
                subject: row.subject,
                token_id: row.token_id.and_then(|id| id.parse().ok()),
            })
            .collect();
        Ok(Stats {
            paths: totals.paths,
            nar_bytes: totals.nar_bytes,
            stored_bytes,
            index_bytes: self.sql.size(),
            upstream_paths: self.number("SELECT COUNT(DISTINCT hash) AS n FROM upstream", &[])?,
            recent,
            reconcile: self.reconcile_state()?,
            gc: self.gc_run()?,
        })
    }

    /// `logs/own`: a log uploaded while a signed path names its derivation is that
    /// path's, and goes with it; any other log stays (an unsigned content-addressed
    /// narinfo may name any derivation).
    pub fn own_log(&self, own: OwnLog) -> Answer<bool> {
        self.ready()?;
        let owned = self.exists(
            "SELECT 1 AS n FROM paths WHERE deriver = ?1 AND signed = 1 LIMIT 1",
            &[text(&own.drv)],
        )?;
        if owned {
            self.exec(
                "INSERT OR IGNORE INTO owned_logs (drv) VALUES (?)",
                &[text(&own.drv)],
            )?;
        }
        Ok(owned)
    }
}
