//! `summary`: what the landing page shows (`api::Summary`). The object writes it to R2
//! after publishes and passes (`crate::edge::index`); page views read it from there and
//! never reach the index. `gauges` and the operation counters: what `_nixflare/metrics`
//! reports to an operator's token.

use serde::Deserialize;

use super::sql::{integer, text};
use super::store::{Answer, Index};
use super::{Gauges, OperationCount, SummaryRequest};
use crate::core::api::{self, DayPublishes, Summary, SUMMARY_DAYS};
use crate::core::gc::DAY_MS;

impl<S: super::sql::Sql> Index<S> {
    pub fn summary(&self, request: SummaryRequest) -> Answer<Summary> {
        let stats = self.stats(api::True)?;
        let today = request.now / DAY_MS;
        let first = today.saturating_sub(SUMMARY_DAYS - 1);
        #[derive(Deserialize)]
        struct DayRow {
            day: u64,
            paths: u64,
            bytes: u64,
        }
        let rows = self.rows::<DayRow>(
            // CAST: the Durable Object binds numbers as JavaScript numbers (floats).
            "SELECT CAST(published_at / ?1 AS INTEGER) AS day, COUNT(*) AS paths, \
             COALESCE(SUM(file_size), 0) AS bytes FROM paths \
             WHERE published_at >= ?2 GROUP BY day",
            &[integer(DAY_MS), integer(first * DAY_MS)],
        )?;
        let days = (first..=today)
            .map(|day| {
                let row = rows.iter().find(|row| row.day == day);
                DayPublishes {
                    day: day * DAY_MS,
                    paths: row.map_or(0, |r| r.paths),
                    bytes: row.map_or(0, |r| r.bytes),
                }
            })
            .collect();
        Ok(Summary {
            generated_at: request.now,
            paths: stats.paths,
            nar_bytes: stats.nar_bytes,
            stored_bytes: stats.stored_bytes,
            upstream_paths: stats.upstream_paths,
            pins: self.number("SELECT COUNT(*) AS n FROM pins", &[])?,
            last_published_at: stats.recent.first().map(|p| p.published_at),
            days,
            retain_days: request.retain_days,
            budget_bytes: request.budget_bytes,
            gc: stats.gc,
            reconcile_last_pass_at: stats.reconcile.last_pass_at,
        })
    }

    pub fn gauges(&self, _: api::True) -> Answer<Gauges> {
        let stats = self.stats(api::True)?;
        #[derive(Deserialize)]
        struct CountRow {
            op: String,
            outcome: String,
            n: u64,
        }
        let operations = self
            .rows::<CountRow>(
                "SELECT op, outcome, n FROM op_counts ORDER BY op, outcome",
                &[],
            )?
            .into_iter()
            .map(|row| OperationCount {
                op: row.op,
                outcome: row.outcome,
                count: row.n,
            })
            .collect();
        Ok(Gauges {
            stats,
            pins: self.number("SELECT COUNT(*) AS n FROM pins", &[])?,
            reservations: self.number("SELECT COUNT(*) AS n FROM reservations", &[])?,
            operations,
        })
    }

    /// Counts one operation the object was asked (`op` is one of the operations'
    /// names: the object counts no other).
    pub fn count_operation(&self, op: &str, ok: bool) -> Answer<()> {
        self.ready()?;
        self.exec(
            "INSERT INTO op_counts (op, outcome, n) VALUES (?1, ?2, 1) \
             ON CONFLICT (op, outcome) DO UPDATE SET n = n + 1",
            &[text(op), text(if ok { "ok" } else { "error" })],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::index::ops::{AdoptOp, IndexOp as _, SummaryOp};
    use crate::core::index::tests::sqlite::Sqlite;
    use crate::core::index::{Adopt, Entry};
    use crate::core::nix::store_path::StorePathHash;

    fn entry(n: u8, published_at: u64, file_size: u64) -> Entry {
        Entry {
            hash: StorePathHash::from_bytes([n; 20]),
            name: format!("path-{n}"),
            nar: format!("nar/{n}.nar"),
            file_size,
            nar_size: file_size * 2,
            references: Vec::new(),
            deriver: None,
            published_at,
            token_id: None,
            subject: Some("alice".into()),
            signed: true,
        }
    }

    #[test]
    fn counts_the_last_thirty_days_and_names_no_publisher() {
        let index = Index::open(Sqlite::memory());
        let now = 100 * DAY_MS + 5_000;
        let entries = vec![
            entry(1, now - 1_000, 10),       // today
            entry(2, now - 2_000, 20),       // today
            entry(3, now - DAY_MS, 30),      // yesterday
            entry(4, now - 29 * DAY_MS, 40), // the first day charted
            entry(5, now - 31 * DAY_MS, 50), // before it: counted in the totals only
        ];
        AdoptOp::apply(&index, Adopt { entries, now }).expect("adopted");
        let summary = SummaryOp::apply(
            &index,
            SummaryRequest {
                now,
                retain_days: Some(30),
                budget_bytes: None,
            },
        )
        .expect("a summary");
        assert_eq!(summary.paths, 5);
        assert_eq!(summary.stored_bytes, 150);
        assert_eq!(summary.nar_bytes, 300);
        assert_eq!(summary.days.len() as u64, SUMMARY_DAYS);
        assert_eq!(summary.days.first().unwrap().day, 71 * DAY_MS);
        let today = summary.days.last().unwrap();
        assert_eq!((today.day, today.paths, today.bytes), (100 * DAY_MS, 2, 30));
        assert_eq!(summary.days[SUMMARY_DAYS as usize - 2].paths, 1);
        assert_eq!((summary.days[0].paths, summary.days[0].bytes), (1, 40));
        assert_eq!(summary.days.iter().map(|d| d.paths).sum::<u64>(), 4);
        assert_eq!(summary.last_published_at, Some(now - 1_000));
        assert_eq!(summary.retain_days, Some(30));
        let text = crate::core::api::render(&summary);
        assert!(!text.contains("alice"), "{text}");
    }
}
