//! The index's Durable Object: one instance (`crate::core::index::OBJECT_NAME`) with
//! SQLite storage. It runs one request at a time, and none of its handlers awaits
//! between reading and writing, so each operation below is atomic. The messages and the
//! schema are the core's (`crate::core::index`); the worker's side is `index_client.rs`.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use worker::{
    durable_object, DurableObject, Env, Request, Response, SqlStorage, SqlStorageValue, State,
};

use super::json::from_json;

mod gc;
use crate::core::api::{self, PathQueryAnswer, Publish, ReconcileState, Stats};
use crate::core::index::{
    Adopt, Advance, Begin, Begun, Cursor, Entry, Finish, Forget, Forgot, PageChecked, Query,
    ReconcilePage, MAX_LISTED, MIGRATIONS, RECONCILE_MARGIN_MS, SCHEMA, STALE_DELETE_MS,
    STALE_RESERVATION_MS, UPSTREAM_MEMORY_MS,
};
use crate::core::nix::store_path::StorePathHash;

const CURSOR_KEY: &str = "reconcile_after";
const LAST_PASS_KEY: &str = "reconcile_last_pass_at";
/// The schema version `MIGRATIONS` bring an older index up to.
const SCHEMA_KEY: &str = "schema";
const SCHEMA_VERSION: &str = "2";

#[durable_object(fetch)]
pub struct Index {
    sql: SqlStorage,
}

impl DurableObject for Index {
    fn new(state: State, _env: Env) -> Self {
        let sql = state.storage().sql();
        // Idempotent; a failure here shows up on the first statement that needs a table.
        let _ = sql.exec(SCHEMA, None);
        let index = Self { sql };
        if index.meta_text(SCHEMA_KEY).ok().flatten().as_deref() != Some(SCHEMA_VERSION) {
            for statement in MIGRATIONS {
                let _ = index.sql.exec(statement, None);
            }
            let _ = index.set_meta(SCHEMA_KEY, SCHEMA_VERSION.to_owned());
        }
        index
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let op = req.path();
        let body = req.text().await?;
        match self.handle(op.trim_start_matches('/'), &body) {
            Ok(answer) => Response::ok(answer),
            Err(reason) => Response::error(reason, 500),
        }
    }
}

type Answer = Result<String, String>;

fn text<T: serde::Serialize>(message: &T) -> Answer {
    Ok(api::render(message))
}

fn message<T: DeserializeOwned>(body: &str) -> Result<T, String> {
    from_json(body).map_err(|e| format!("index request: {e}"))
}

fn sql_error(err: worker::Error) -> String {
    format!("index storage: {err}")
}

fn string(value: impl ToString) -> SqlStorageValue {
    SqlStorageValue::String(value.to_string())
}

fn integer(value: u64) -> SqlStorageValue {
    SqlStorageValue::Integer(i64::try_from(value).unwrap_or(i64::MAX))
}

/// A JSON array of hashes, bound as one parameter and read with `json_each`.
fn hash_array(hashes: &[StorePathHash]) -> SqlStorageValue {
    let texts: Vec<String> = hashes.iter().map(ToString::to_string).collect();
    SqlStorageValue::String(api::render(&texts))
}

#[derive(Deserialize)]
struct HashRow {
    hash: String,
}

#[derive(Deserialize)]
struct CountRow {
    n: u64,
}

impl Index {
    fn handle(&self, op: &str, body: &str) -> Answer {
        match op {
            "begin" => self.begin(message(body)?),
            "commit" => self.commit(message(body)?),
            "abort" => self.abort(message(body)?),
            "forget" => self.forget(message(body)?),
            "forget/done" => self.forget_done(message(body)?),
            "query" => self.query(message(body)?),
            "stats" => self.stats(),
            "reconcile/cursor" => text(&Cursor {
                after: self.meta_text(CURSOR_KEY)?.unwrap_or_default(),
                moved: true,
            }),
            "reconcile/page" => self.reconcile_page(message(body)?),
            "reconcile/advance" => self.advance(message(body)?),
            "adopt" => self.adopt_all(message(body)?),
            "roots" => self.refresh(message(body)?),
            "pins" => self.pins(),
            "pins/set" => self.set_pin(message(body)?),
            "pins/remove" => self.remove_pin(message(body)?),
            "gc/step" => self.gc_step(message(body)?),
            "gc/swept" => self.gc_swept(message(body)?),
            "gc/orphans" => self.gc_orphans(message(body)?),
            _ => Err(format!("unknown index operation {op:?}")),
        }
    }

    fn exec(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> Result<worker::SqlCursor, String> {
        self.sql.exec(query, bindings).map_err(sql_error)
    }

    fn rows<T: DeserializeOwned>(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> Result<Vec<T>, String> {
        self.exec(query, bindings)?.to_array().map_err(sql_error)
    }

    fn hashes(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> Result<Vec<StorePathHash>, String> {
        self.rows::<HashRow>(query, bindings)?
            .into_iter()
            .map(|row| {
                row.hash
                    .parse()
                    .map_err(|_| format!("index holds a bad hash {:?}", row.hash))
            })
            .collect()
    }

    fn exists(&self, query: &str, bindings: Vec<SqlStorageValue>) -> Result<bool, String> {
        Ok(!self.rows::<CountRow>(query, bindings)?.is_empty())
    }

    /// Forgets published paths: their rows and references go, a delete marker stays
    /// (no publish counts on them while R2 deletes their narinfos), and a record of the
    /// removal keeps their NARs and side files for the GC's grace period.
    fn remove_paths(&self, hashes: &[StorePathHash], now: u64) -> Result<(), String> {
        let list = hash_array(hashes);
        self.exec(
            "INSERT OR REPLACE INTO removed (hash, nar, deriver, removed_at) \
             SELECT hash, nar, deriver, ?2 FROM paths WHERE hash IN (SELECT value FROM json_each(?1))",
            vec![list.clone(), integer(now)],
        )?;
        self.exec(
            "DELETE FROM paths WHERE hash IN (SELECT value FROM json_each(?))",
            vec![list.clone()],
        )?;
        self.exec(
            "DELETE FROM refs WHERE referrer IN (SELECT value FROM json_each(?))",
            vec![list.clone()],
        )?;
        self.exec(
            "INSERT OR REPLACE INTO deleting (hash, at, done) SELECT value, ?2, 0 FROM json_each(?1)",
            vec![list, integer(now)],
        )?;
        Ok(())
    }

    fn count(&self, query: &str) -> Result<u64, String> {
        Ok(self
            .rows::<CountRow>(query, Vec::new())?
            .first()
            .map_or(0, |row| row.n))
    }

    /// Records a published path, replacing what was recorded before.
    fn record(&self, entry: &Entry) -> Result<(), String> {
        // A replacement with another NAR: the old one keeps the GC's grace period.
        self.exec(
            "INSERT OR REPLACE INTO removed (hash, nar, deriver, removed_at) \
             SELECT hash, nar, deriver, ?3 FROM paths WHERE hash = ?1 AND nar != ?2",
            vec![
                string(entry.hash),
                string(&entry.nar),
                integer(entry.published_at),
            ],
        )?;
        self.exec(
            "INSERT OR REPLACE INTO paths (hash, name, nar, file_size, nar_size, deriver, \
             published_at, token_id, subject, pushed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?7)",
            vec![
                string(entry.hash),
                string(&entry.name),
                string(&entry.nar),
                integer(entry.file_size),
                integer(entry.nar_size),
                entry.deriver.clone().into(),
                integer(entry.published_at),
                entry.token_id.map(|id| id.to_string()).into(),
                entry.subject.clone().into(),
            ],
        )?;
        self.exec(
            "DELETE FROM refs WHERE referrer = ?",
            vec![string(entry.hash)],
        )?;
        self.exec(
            "INSERT OR IGNORE INTO refs (referrer, reference) SELECT ?1, value FROM json_each(?2)",
            vec![string(entry.hash), hash_array(&entry.references)],
        )?;
        Ok(())
    }

    /// Records a path found in the bucket, unless the index already has it (a publish
    /// that recorded it meanwhile knows more: who pushed it) or a delete is under way.
    fn adopt(&self, entry: &Entry, now: u64) -> Result<bool, String> {
        let known = self.rows::<HashRow>(
            "SELECT hash FROM paths WHERE hash = ?1 UNION \
             SELECT hash FROM deleting WHERE hash = ?1 AND at > ?2 \
               AND (done = 0 OR at >= ?3)",
            vec![
                string(entry.hash),
                integer(now.saturating_sub(STALE_DELETE_MS)),
                integer(entry.published_at),
            ],
        )?;
        if !known.is_empty() {
            return Ok(false);
        }
        self.record(entry)?;
        Ok(true)
    }

    fn adopt_all(&self, adopt: Adopt) -> Answer {
        for entry in &adopt.entries {
            self.adopt(entry, adopt.now)?;
        }
        text(&api::True)
    }

    fn begin(&self, begin: Begin) -> Answer {
        for entry in &begin.adopt {
            self.adopt(entry, begin.now)?;
        }
        for hit in &begin.upstream_hits {
            self.exec(
                "INSERT OR REPLACE INTO upstream (hash, cache, checked_at) VALUES (?, ?, ?)",
                vec![string(hit.hash), string(&hit.cache), integer(begin.now)],
            )?;
        }
        let fresh_deletes = integer(begin.now.saturating_sub(STALE_DELETE_MS));
        let deleting = self.hashes(
            "SELECT hash FROM deleting WHERE hash = ? AND done = 0 AND at > ?",
            vec![string(begin.entry.hash), fresh_deletes.clone()],
        )?;
        // Its NAR is being deleted by the GC (a NAR the publish found a moment ago):
        // the retry finds it gone and uploads it again.
        let nar_deleting = self.exists(
            "SELECT 1 AS n FROM nar_deleting WHERE nar = ? AND at > ?",
            vec![string(&begin.entry.nar), fresh_deletes.clone()],
        )?;
        if !deleting.is_empty() || nar_deleting {
            return text(&Begun::Deleting {
                deleting: api::True,
            });
        }
        // Correlated lookups: each reference is a few index probes, never a table scan.
        let missing = self.hashes(
            "SELECT r.value AS hash FROM json_each(?1) AS r \
             WHERE (NOT EXISTS (SELECT 1 FROM paths AS p WHERE p.hash = r.value) \
                    OR EXISTS (SELECT 1 FROM deleting AS d \
                               WHERE d.hash = r.value AND d.done = 0 AND d.at > ?3)) \
               AND NOT EXISTS (SELECT 1 FROM upstream AS u \
                    WHERE u.hash = r.value AND u.checked_at > ?4 \
                      AND u.cache IN (SELECT c.value FROM json_each(?2) AS c))",
            vec![
                hash_array(&begin.entry.references),
                SqlStorageValue::String(api::render(&begin.upstreams)),
                fresh_deletes,
                integer(begin.now.saturating_sub(UPSTREAM_MEMORY_MS)),
            ],
        )?;
        if !missing.is_empty() {
            return text(&Begun::Missing { missing });
        }
        #[derive(Deserialize)]
        struct IdRow {
            id: u64,
        }
        let id = self
            .rows::<IdRow>(
                "INSERT INTO reservations (hash, entry, created_at) VALUES (?, ?, ?) RETURNING id",
                vec![
                    string(begin.entry.hash),
                    SqlStorageValue::String(api::render(&begin.entry)),
                    integer(begin.now),
                ],
            )?
            .first()
            .map(|row| row.id)
            .ok_or("no reservation id")?;
        self.exec(
            "INSERT OR IGNORE INTO reserved_refs (reservation, reference) \
             SELECT ?1, value FROM json_each(?2)",
            vec![integer(id), hash_array(&begin.entry.references)],
        )?;
        text(&Begun::Reserved { reservation: id })
    }

    fn drop_reservation(&self, id: u64) -> Result<(), String> {
        self.exec("DELETE FROM reservations WHERE id = ?", vec![integer(id)])?;
        self.exec(
            "DELETE FROM reserved_refs WHERE reservation = ?",
            vec![integer(id)],
        )?;
        Ok(())
    }

    fn commit(&self, finish: Finish) -> Answer {
        #[derive(Deserialize)]
        struct EntryRow {
            entry: String,
        }
        let rows = self.rows::<EntryRow>(
            "SELECT entry FROM reservations WHERE id = ?",
            vec![integer(finish.reservation)],
        )?;
        // A reservation the reconcile pass dropped as stale: the narinfo is in the bucket
        // and the next pass indexes it.
        if let Some(row) = rows.first() {
            let mut entry: Entry = message(&row.entry)?;
            entry.published_at = finish.now;
            // The same bytes again: the first publish's record (who, when) stands.
            let keep = finish.unchanged
                && !self
                    .hashes(
                        "SELECT hash FROM paths WHERE hash = ?",
                        vec![string(entry.hash)],
                    )?
                    .is_empty();
            self.touch(&[entry.hash], finish.now)?;
            if keep {
                // Pushed again: a GC root anew.
                self.exec(
                    "UPDATE paths SET pushed_at = MAX(pushed_at, ?2) WHERE hash = ?1",
                    vec![string(entry.hash), integer(finish.now)],
                )?;
            } else {
                self.record(&entry)?;
            }
        }
        self.drop_reservation(finish.reservation)?;
        text(&api::True)
    }

    fn abort(&self, finish: Finish) -> Answer {
        self.drop_reservation(finish.reservation)?;
        text(&api::True)
    }

    fn forget(&self, forget: Forget) -> Answer {
        let publishing = self.hashes(
            "SELECT hash FROM reservations WHERE hash = ? LIMIT 1",
            vec![string(forget.hash)],
        )?;
        if !publishing.is_empty() {
            return text(&Forgot::Publishing {
                publishing: api::True,
            });
        }
        let referrers = self.hashes(
            "SELECT referrer AS hash FROM refs WHERE reference = ?1 AND referrer != ?1 \
             UNION SELECT r.hash AS hash FROM reserved_refs AS rr \
             JOIN reservations AS r ON r.id = rr.reservation WHERE rr.reference = ?1 \
             LIMIT ?2",
            vec![string(forget.hash), integer(MAX_LISTED as u64)],
        )?;
        if !referrers.is_empty() {
            return text(&Forgot::Referenced { referrers });
        }
        self.remove_paths(&[forget.hash], forget.now)?;
        text(&Forgot::Forgotten {
            forgotten: api::True,
        })
    }

    fn forget_done(&self, forget: Forget) -> Answer {
        // Kept, marked done, for a while: see `adopt`.
        self.exec(
            "UPDATE deleting SET done = 1 WHERE hash = ?",
            vec![string(forget.hash)],
        )?;
        text(&api::True)
    }

    fn query(&self, query: Query) -> Answer {
        #[derive(Deserialize)]
        struct MissingRow {
            hash: String,
            upstream: u64,
        }
        let rows = self.rows::<MissingRow>(
            "SELECT q.value AS hash, EXISTS (SELECT 1 FROM upstream AS u WHERE u.hash = q.value \
               AND u.checked_at > ?3 \
               AND u.cache IN (SELECT c.value FROM json_each(?2) AS c)) AS upstream \
             FROM json_each(?1) AS q \
             WHERE NOT EXISTS (SELECT 1 FROM paths AS p WHERE p.hash = q.value) \
                OR EXISTS (SELECT 1 FROM deleting AS d WHERE d.hash = q.value AND d.done = 0)",
            vec![
                hash_array(&query.hashes),
                SqlStorageValue::String(api::render(&query.upstreams)),
                integer(query.now.saturating_sub(UPSTREAM_MEMORY_MS)),
            ],
        )?;
        let mut answer = PathQueryAnswer {
            missing: Vec::with_capacity(rows.len()),
            in_upstream: Vec::new(),
        };
        for row in rows {
            let hash: StorePathHash = row.hash.parse().map_err(|_| "bad hash in query")?;
            answer.missing.push(hash);
            if row.upstream != 0 {
                answer.in_upstream.push(hash);
            }
        }
        text(&answer)
    }

    fn meta_text(&self, key: &str) -> Result<Option<String>, String> {
        // `value` is untyped in the schema: read it as text.
        #[derive(Deserialize)]
        struct TextRow {
            value: Option<String>,
        }
        Ok(self
            .rows::<TextRow>(
                "SELECT CAST(value AS TEXT) AS value FROM meta WHERE key = ?",
                vec![string(key)],
            )?
            .into_iter()
            .next()
            .and_then(|row| row.value))
    }

    fn set_meta(&self, key: &str, value: String) -> Result<(), String> {
        self.exec(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            vec![string(key), SqlStorageValue::String(value)],
        )?;
        Ok(())
    }

    fn stats(&self) -> Answer {
        #[derive(Deserialize)]
        struct TotalsRow {
            paths: u64,
            nar_bytes: u64,
        }
        let totals = self
            .rows::<TotalsRow>(
                "SELECT COUNT(*) AS paths, COALESCE(SUM(nar_size), 0) AS nar_bytes FROM paths",
                Vec::new(),
            )?
            .into_iter()
            .next()
            .ok_or("no totals")?;
        let stored_bytes = self.count(
            "SELECT COALESCE(SUM(size), 0) AS n FROM \
             (SELECT MAX(file_size) AS size FROM paths GROUP BY nar)",
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
                Vec::new(),
            )?
            .into_iter()
            .map(|row| Publish {
                store_path: format!("{}-{}", row.hash, row.name),
                published_at: row.published_at,
                subject: row.subject,
                token_id: row.token_id.and_then(|id| id.parse().ok()),
            })
            .collect();
        text(&Stats {
            paths: totals.paths,
            nar_bytes: totals.nar_bytes,
            stored_bytes,
            index_bytes: self.sql.database_size() as u64,
            upstream_paths: self.count("SELECT COUNT(DISTINCT hash) AS n FROM upstream")?,
            recent,
            reconcile: ReconcileState {
                after: self.meta_text(CURSOR_KEY)?.unwrap_or_default(),
                last_pass_at: self
                    .meta_text(LAST_PASS_KEY)?
                    .and_then(|text| text.parse().ok()),
            },
            gc: self.gc_run()?,
        })
    }

    fn reconcile_page(&self, page: ReconcilePage) -> Answer {
        // Leftovers of requests that died half-way.
        self.exec(
            "DELETE FROM reservations WHERE created_at < ?",
            vec![integer(page.listed_at.saturating_sub(STALE_RESERVATION_MS))],
        )?;
        self.exec(
            "DELETE FROM reserved_refs WHERE reservation NOT IN (SELECT id FROM reservations)",
            Vec::new(),
        )?;
        self.exec(
            "DELETE FROM deleting WHERE at < ?",
            vec![integer(page.listed_at.saturating_sub(STALE_DELETE_MS))],
        )?;
        let through = page
            .through
            .clone()
            .map_or(SqlStorageValue::Null, SqlStorageValue::String);
        // `hash >= substr(key, 1, 32)` follows from `hash || '.narinfo' > key` (and `<=`
        // for the upper bound); stated, it lets SQLite walk the primary key over the
        // page's range instead of reading every row.
        // Gone from the bucket: their NARs are kept for the GC's grace period too.
        self.exec(
            "INSERT OR REPLACE INTO removed (hash, nar, deriver, removed_at) \
             SELECT hash, nar, deriver, ?3 FROM paths \
             WHERE hash >= substr(?1, 1, 32) AND hash || '.narinfo' > ?1 \
               AND (?2 IS NULL OR (hash <= substr(?2, 1, 32) AND hash || '.narinfo' <= ?2)) \
               AND published_at < ?3 - ?5 \
               AND hash NOT IN (SELECT value FROM json_each(?4))",
            vec![
                SqlStorageValue::String(page.after.clone()),
                through.clone(),
                integer(page.listed_at),
                hash_array(&page.narinfos),
                integer(RECONCILE_MARGIN_MS),
            ],
        )?;
        let removed = self.hashes(
            "DELETE FROM paths WHERE hash >= substr(?1, 1, 32) AND hash || '.narinfo' > ?1 \
               AND (?2 IS NULL OR (hash <= substr(?2, 1, 32) AND hash || '.narinfo' <= ?2)) \
               AND published_at < ?3 \
               AND hash NOT IN (SELECT value FROM json_each(?4)) RETURNING hash",
            vec![
                SqlStorageValue::String(page.after.clone()),
                through,
                integer(page.listed_at.saturating_sub(RECONCILE_MARGIN_MS)),
                hash_array(&page.narinfos),
            ],
        )?;
        if !removed.is_empty() {
            self.exec(
                "DELETE FROM refs WHERE referrer IN (SELECT value FROM json_each(?))",
                vec![hash_array(&removed)],
            )?;
        }
        let unindexed = self.hashes(
            "SELECT q.value AS hash FROM json_each(?1) AS q \
             WHERE NOT EXISTS (SELECT 1 FROM paths AS p WHERE p.hash = q.value) \
               AND NOT EXISTS (SELECT 1 FROM deleting AS d \
                               WHERE d.hash = q.value AND d.done = 0)",
            vec![hash_array(&page.narinfos)],
        )?;
        text(&PageChecked {
            unindexed,
            removed: removed.len() as u64,
        })
    }

    fn advance(&self, advance: Advance) -> Answer {
        for entry in &advance.adopt {
            self.adopt(entry, advance.now)?;
        }
        let current = self.meta_text(CURSOR_KEY)?.unwrap_or_default();
        if current != advance.after {
            return text(&Cursor {
                after: current,
                moved: false,
            });
        }
        let next = advance.through.unwrap_or_default();
        if next.is_empty() {
            self.set_meta(LAST_PASS_KEY, advance.now.to_string())?;
        }
        self.set_meta(CURSOR_KEY, next.clone())?;
        text(&Cursor {
            after: next,
            moved: true,
        })
    }
}
