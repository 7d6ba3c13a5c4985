//! The store answers of one execution's emits, collected without waiting a
//! round trip per emit (NATS: JetStream acks; the embedded bus answers at once).
//!
//! At most [`WINDOW`] answers are outstanding: the emit past it waits for the
//! oldest, so a fast emitter cannot pile up unbounded futures. The execution
//! collects the rest when its body ends, and fails (saying how many of its
//! events are surely stored) if any was not stored.

use super::{ErrorKind, ExecError};
use crate::bus::{BusError, Receipt};
use futures::future::BoxFuture;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Store answers one execution may have outstanding.
pub(super) const WINDOW: usize = 256;

type Pending = BoxFuture<'static, Result<(), BusError>>;

/// The outstanding store answers of one execution (shared by its `all` branches).
#[derive(Default)]
pub(super) struct Receipts {
    pending: Mutex<VecDeque<Pending>>,
    sent: AtomicU64,
    stored: AtomicU64,
}

impl Receipts {
    /// Keeps `receipt` until the end of the execution; with the window full,
    /// first waits for the oldest answer, and fails if that event was not stored.
    pub(super) async fn hold(&self, receipt: Receipt) -> Result<(), ExecError> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let Some(stored) = receipt.into_pending() else {
            self.stored.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let oldest = {
            let mut pending = self.lock();
            pending.push_back(stored);
            if pending.len() > WINDOW {
                pending.pop_front()
            } else {
                None
            }
        };
        match oldest {
            Some(oldest) => self.settle(oldest.await).map_err(|e| self.failed(&e)),
            None => Ok(()),
        }
    }

    /// Waits for every outstanding answer; fails if any event was not stored.
    pub(super) async fn collect(&self) -> Result<(), ExecError> {
        let mut first_error = None;
        // Bounded: each turn takes one of the finitely many held answers.
        loop {
            let next = self.lock().pop_front();
            let Some(next) = next else { break };
            if let Err(e) = self.settle(next.await) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(self.failed(&e)))
    }

    fn settle(&self, answer: Result<(), BusError>) -> Result<(), BusError> {
        if answer.is_ok() {
            self.stored.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    fn failed(&self, e: &BusError) -> ExecError {
        ExecError::new(
            ErrorKind::Internal,
            format!(
                "{e}; {} of the {} events this execution emitted so far are surely stored",
                self.stored.load(Ordering::Relaxed),
                self.sent.load(Ordering::Relaxed)
            ),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn answer(ok: bool) -> Receipt {
        Receipt::pending(Box::pin(async move {
            tokio::task::yield_now().await;
            if ok {
                Ok(())
            } else {
                Err(BusError::Timeout {
                    step: "storing an event",
                    reason: "timed out".into(),
                })
            }
        }))
    }

    #[tokio::test]
    async fn a_failed_store_fails_with_the_count_surely_stored() {
        let receipts = Receipts::default();
        receipts
            .hold(Receipt::stored_after(Duration::ZERO))
            .await
            .unwrap();
        for ok in [true, false, true, false] {
            receipts.hold(answer(ok)).await.unwrap();
        }
        let message = receipts.collect().await.unwrap_err().to_string();
        assert!(message.contains("outcome unknown"), "{message}");
        // The first failure is reported once every answer is in: 3 of 5 stored.
        assert!(message.contains("3 of the 5 events"), "{message}");
        assert!(receipts.collect().await.is_ok());
    }

    #[tokio::test]
    async fn the_window_bounds_outstanding_answers_and_fails_early() {
        let receipts = Receipts::default();
        receipts.hold(answer(false)).await.unwrap();
        for _ in 1..WINDOW {
            receipts.hold(answer(true)).await.unwrap();
        }
        assert_eq!(receipts.lock().len(), WINDOW);
        // One more: the oldest answer is awaited now, and it failed.
        let e = receipts.hold(answer(true)).await.unwrap_err().to_string();
        assert!(e.contains("0 of the 257 events"), "{e}");
        assert_eq!(receipts.lock().len(), WINDOW);
        assert!(receipts.collect().await.is_ok());
    }
}
