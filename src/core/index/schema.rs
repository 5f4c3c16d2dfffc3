//! The index's schema, as numbered migrations applied in order, each once. The object
//! records the number it reached in `meta`; a migration that fails stops there and
//! every request answers with the failure (the object never runs on a schema it only
//! half has). A new table or column is a new migration at the end, never an edit.
//!
//! Hashes are the 32 nix32 characters of a store path hash; times Unix milliseconds.

use super::sql::{Sql, SqlError};

/// `meta` key of the schema version reached.
pub const VERSION_KEY: &str = "schema_version";
/// What workers before numbered migrations wrote (`meta.schema = '2'`): their schema is
/// migration 1's.
const LEGACY_KEY: &str = "schema";

/// Migration `n` is `MIGRATIONS[n - 1]`.
pub const MIGRATIONS: &[&[&str]] = &[
    // 1: paths and references, publishes under way, upstream memory, deletes under way,
    // retention (pins, removed paths, a pass's marks).
    &[
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS paths (hash TEXT PRIMARY KEY, name TEXT NOT NULL, \
         nar TEXT NOT NULL, file_size INTEGER NOT NULL, nar_size INTEGER NOT NULL, deriver TEXT, \
         published_at INTEGER NOT NULL, token_id TEXT, subject TEXT, \
         pushed_at INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS paths_by_time ON paths (published_at)",
        "CREATE INDEX IF NOT EXISTS paths_by_nar ON paths (nar)",
        "CREATE INDEX IF NOT EXISTS paths_by_deriver ON paths (deriver)",
        "CREATE TABLE IF NOT EXISTS refs (referrer TEXT NOT NULL, reference TEXT NOT NULL, \
         PRIMARY KEY (referrer, reference)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS refs_by_reference ON refs (reference)",
        "CREATE TABLE IF NOT EXISTS reservations (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         hash TEXT NOT NULL, entry TEXT NOT NULL, created_at INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS reservations_by_hash ON reservations (hash)",
        "CREATE TABLE IF NOT EXISTS reserved_refs (reservation INTEGER NOT NULL, \
         reference TEXT NOT NULL, PRIMARY KEY (reservation, reference)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS reserved_refs_by_reference ON reserved_refs (reference)",
        "CREATE TABLE IF NOT EXISTS upstream (hash TEXT NOT NULL, cache TEXT NOT NULL, \
         checked_at INTEGER NOT NULL, PRIMARY KEY (hash, cache)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS deleting (hash TEXT PRIMARY KEY, at INTEGER NOT NULL, \
         done INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS pins (name TEXT PRIMARY KEY, hash TEXT NOT NULL, \
         base TEXT NOT NULL, pinned_at INTEGER NOT NULL, expires_at INTEGER, \
         subject TEXT NOT NULL) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS pins_by_hash ON pins (hash)",
        "CREATE TABLE IF NOT EXISTS removed (hash TEXT NOT NULL, nar TEXT NOT NULL, deriver TEXT, \
         removed_at INTEGER NOT NULL, PRIMARY KEY (hash, nar)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS removed_by_nar ON removed (nar)",
        "CREATE INDEX IF NOT EXISTS removed_by_deriver ON removed (deriver)",
        "CREATE TABLE IF NOT EXISTS nar_deleting (nar TEXT PRIMARY KEY, at INTEGER NOT NULL) \
         WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS gc_mark (hash TEXT PRIMARY KEY, keep INTEGER NOT NULL, \
         expanded INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS gc_mark_frontier ON gc_mark (expanded, keep)",
        "CREATE TABLE IF NOT EXISTS gc_batch (hash TEXT PRIMARY KEY, keep INTEGER NOT NULL) \
         WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS gc_hold (hash TEXT PRIMARY KEY, until INTEGER NOT NULL) \
         WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS gc_pending (hash TEXT PRIMARY KEY, layer INTEGER NOT NULL) \
         WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS gc_doomed (hash TEXT PRIMARY KEY, rule TEXT NOT NULL) \
         WITHOUT ROWID",
    ],
    // 2: bounded GC steps (references per path), budget groups dropped by a pass,
    // narinfos in the bucket that do not parse (their NARs are kept), log ownership, and
    // objects known unused since when.
    &[
        "ALTER TABLE paths ADD COLUMN ref_count INTEGER NOT NULL DEFAULT 0",
        "UPDATE paths SET ref_count = (SELECT COUNT(*) FROM refs WHERE refs.referrer = paths.hash)",
        "CREATE TABLE gc_dropped (keep INTEGER PRIMARY KEY)",
        "CREATE TABLE unreadable (hash TEXT PRIMARY KEY, nar TEXT, seen_at INTEGER NOT NULL) \
         WITHOUT ROWID",
        "CREATE INDEX unreadable_by_nar ON unreadable (nar)",
        "CREATE TABLE owned_logs (drv TEXT PRIMARY KEY) WITHOUT ROWID",
        "CREATE TABLE orphan_candidates (key TEXT PRIMARY KEY, since INTEGER NOT NULL, \
         seen_in INTEGER NOT NULL) WITHOUT ROWID",
        "ALTER TABLE reservations ADD COLUMN nar TEXT",
        "UPDATE reservations SET nar = json_extract(entry, '$.nar')",
        "CREATE INDEX reservations_by_nar ON reservations (nar)",
        "ALTER TABLE paths ADD COLUMN signed INTEGER NOT NULL DEFAULT 0",
    ],
];

/// Tables no decision rests on, made if missing rather than by a numbered migration: a
/// worker rolled back to a version without them still opens the index (it would refuse
/// a schema newer than it knows).
pub const AUXILIARY: &[&str] = &[
    // `_nixflare/metrics`: how often each operation was asked of the index.
    "CREATE TABLE IF NOT EXISTS op_counts (op TEXT NOT NULL, outcome TEXT NOT NULL, \
     n INTEGER NOT NULL, PRIMARY KEY (op, outcome)) WITHOUT ROWID",
];

/// The schema version an index is at: 0 when new.
fn version<S: Sql>(sql: &S) -> Result<usize, SqlError> {
    #[derive(serde::Deserialize)]
    struct Row {
        key: String,
        value: Option<String>,
    }
    // `meta` may not exist yet; the table is created by migration 1 either way.
    sql.exec(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
        &[],
    )?;
    let rows: Vec<Row> = sql.rows(
        "SELECT key, CAST(value AS TEXT) AS value FROM meta WHERE key IN (?1, ?2)",
        &[super::sql::text(VERSION_KEY), super::sql::text(LEGACY_KEY)],
    )?;
    let find = |key: &str| {
        rows.iter()
            .find(|r| r.key == key)
            .and_then(|r| r.value.clone())
    };
    if let Some(version) = find(VERSION_KEY) {
        return version
            .parse()
            .map_err(|_| SqlError(format!("schema version {version:?} is not a number")));
    }
    Ok(match find(LEGACY_KEY).as_deref() {
        Some("2") => 1,
        _ => 0,
    })
}

/// Brings the index up to the newest schema; the version reached, or why it stopped.
pub fn migrate<S: Sql>(sql: &S) -> Result<usize, SqlError> {
    let mut reached = version(sql)?;
    if reached > MIGRATIONS.len() {
        return Err(SqlError(format!(
            "the index is at schema {reached}, newer than this worker's {}: deploy the newer worker",
            MIGRATIONS.len()
        )));
    }
    for (number, statements) in MIGRATIONS.iter().enumerate().skip(reached) {
        let number = number + 1;
        for statement in *statements {
            sql.exec(statement, &[])
                .map_err(|err| SqlError(format!("migration {number} failed: {err}")))?;
        }
        sql.exec(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            // Text: the Durable Object binds numbers as JavaScript numbers, which an
            // untyped column keeps as REAL ("2.0").
            &[super::sql::text(VERSION_KEY), super::sql::text(number)],
        )?;
        reached = number;
    }
    Ok(reached)
}
