//! One bounded pool for "do this to every item, up to `jobs` at a time, stop at the
//! first error": the HEAD queries, narinfo waves and multipart parts of a push.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use anyhow::Result;

/// Runs `work` on every item with at most `jobs` threads. After the first error no new
/// item starts; that error is returned once the running ones finish.
pub fn try_for_each<T: Sync>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let failed = || first_error.lock().map_or(true, |e| e.is_some());
    thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                while !failed() {
                    let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    if let Err(err) = work(item) {
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(err);
                        }
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Ok(Some(err)) => Err(err),
        Ok(None) => Ok(()),
        Err(poisoned) => Err(anyhow::anyhow!("a worker thread panicked: {poisoned}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn visits_every_item_once() {
        let sum = AtomicU32::new(0);
        let items: Vec<u32> = (1..=100).collect();
        try_for_each(&items, 8, |n| {
            sum.fetch_add(*n, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert_eq!(sum.into_inner(), 5050);
    }

    #[test]
    fn stops_starting_work_after_an_error() {
        let started = AtomicU32::new(0);
        let items: Vec<u32> = (0..1000).collect();
        let err = try_for_each(&items, 1, |n| {
            started.fetch_add(1, Ordering::Relaxed);
            if *n == 3 {
                anyhow::bail!("item {n} failed");
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "item 3 failed");
        assert_eq!(started.into_inner(), 4);
        assert!(try_for_each::<u32>(&[], 4, |_| Ok(())).is_ok());
    }
}
