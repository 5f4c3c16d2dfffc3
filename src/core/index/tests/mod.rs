//! The index's logic run natively: unit tests of its handlers on SQLite (`sqlite.rs`
//! implements the same [`Sql`](super::sql::Sql) interface as the Durable Object), and
//! the model-based test of everything that decides what is deleted (`model.rs`).

mod messages;
mod model;
pub(super) mod sqlite;
