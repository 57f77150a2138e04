//! Admission: the one work queue in front of the engine. A fixed number of
//! slots bounds the work in flight (the model worker batches what the slots
//! send it); callers wait for a slot in one of two classes.
//!
//! - **Interactive** work (an HTTP request, a stream) is served first. Its
//!   queue is bounded: past `queue_depth` waiting requests a caller is
//!   refused at once ([`AdmissionError::QueueFull`], with how long to wait),
//!   and a caller waits no longer than its deadline.
//! - **Batch** work (a batch job's items) uses idle capacity: it takes a
//!   free slot when no interactive request is waiting, and its queue is not
//!   bounded (the job runner bounds how many items it offers). So that a
//!   busy server never starves it, at least one freed slot in
//!   [`BATCH_SHARE`] goes to a waiting batch item.
//!
//! A freed slot is handed straight to the next waiter, so a slot is never
//! idle while anyone waits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::task::CancelToken;

/// A batch item is guaranteed at least one freed slot in this many while
/// interactive requests are waiting too (a quarter of the capacity of a
/// saturated server).
pub const BATCH_SHARE: usize = 4;

/// Who is asking for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A caller waiting for the answer: served first, queue bounded.
    Interactive,
    /// Background work (batch jobs): idle capacity, with a minimum share.
    Batch,
}

/// Why no slot was given.
// Not `non_exhaustive`: transports map every refusal, with no wildcard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// Every slot is busy and the interactive queue is full.
    #[error("the server is busy: {capacity} requests in flight and {queue_depth} waiting (--max-concurrency, --queue-depth); retry in {retry_after} s")]
    QueueFull {
        /// Slots.
        capacity: usize,
        /// Room in the queue.
        queue_depth: usize,
        /// Seconds to wait before trying again.
        retry_after: u64,
    },
    /// The deadline passed while waiting.
    #[error("the deadline passed while waiting for a slot")]
    Timeout,
}

/// Slots for work in flight, and the queues in front of them.
#[derive(Debug)]
pub struct Admission {
    capacity: usize,
    queue_depth: usize,
    state: Mutex<Queues>,
    /// How long work held its slot lately (ms, smoothed): what
    /// [`AdmissionError::QueueFull`]'s wait is worked out from.
    recent_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct Queues {
    free: usize,
    interactive: VecDeque<oneshot::Sender<Slot>>,
    batch: VecDeque<oneshot::Sender<Slot>>,
    /// Slots handed to interactive waiters since a batch waiter got one,
    /// while a batch waiter was waiting.
    batch_passed_over: usize,
}

/// A slot, held while its work runs (also on a worker thread, after the
/// caller has gone, until the work has stopped). Dropping it hands it on.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    since: Instant,
    /// Whether the in-flight gauge counts it (not yet while it is being
    /// handed to a waiter).
    counted: bool,
    /// False once a hand-over failed: the refused slot must not be
    /// released a second time.
    armed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.counted {
            let ms = self.since.elapsed().as_millis() as u64;
            // A running mean over about the last eight.
            let old = self.admission.recent_ms.load(Ordering::Relaxed);
            let new = if old == 0 { ms } else { (old * 7 + ms) / 8 };
            self.admission.recent_ms.store(new, Ordering::Relaxed);
            gauge_in_flight(-1.0);
        }
        self.admission.release();
    }
}

/// Work in flight, of both classes (batch items hold slots as requests do).
fn gauge_in_flight(delta: f64) {
    metrics::gauge!("precis_requests_in_flight").increment(delta);
}

impl Admission {
    /// `max_concurrency` slots (at least one) and room for `queue_depth`
    /// waiting interactive requests.
    pub fn new(max_concurrency: usize, queue_depth: usize) -> Arc<Self> {
        let capacity = max_concurrency.max(1);
        Arc::new(Self {
            capacity,
            queue_depth,
            state: Mutex::new(Queues {
                free: capacity,
                ..Queues::default()
            }),
            recent_ms: AtomicU64::new(0),
        })
    }

    /// Slots in all.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        // The lock guards plain counters and queues that every operation
        // leaves consistent, so a poisoned one is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot of this admission; `counted`: in the in-flight gauge now
    /// (else once its waiter takes it).
    fn slot(self: &Arc<Self>, counted: bool) -> Slot {
        if counted {
            gauge_in_flight(1.0);
        }
        Slot {
            admission: Arc::clone(self),
            since: Instant::now(),
            counted,
            armed: true,
        }
    }

    /// A slot for `priority`: at once when one is free, else after waiting
    /// in its class's queue until `deadline` (`None`: no limit).
    pub async fn enter(
        self: &Arc<Self>,
        priority: Priority,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Slot, AdmissionError> {
        let rx = {
            let mut q = self.queues();
            if q.free > 0 {
                q.free -= 1;
                drop(q);
                return Ok(self.slot(true));
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::Interactive => {
                    q.interactive.retain(|w| !w.is_closed());
                    if q.interactive.len() >= self.queue_depth {
                        drop(q);
                        return Err(self.queue_full());
                    }
                    q.interactive.push_back(tx);
                    metrics::gauge!("precis_queue_depth").set(q.interactive.len() as f64);
                }
                Priority::Batch => {
                    q.batch.retain(|w| !w.is_closed());
                    q.batch.push_back(tx);
                }
            }
            rx
        };
        // A slot sent after the deadline is dropped with `rx`, which hands
        // it on: nothing leaks.
        let got = match deadline {
            Some(at) => tokio::time::timeout_at(at, rx)
                .await
                .map_err(|_| AdmissionError::Timeout)?,
            None => rx.await,
        };
        // The sender lives in the queue until it sends, so a closed channel
        // cannot happen; count it as a timeout rather than panic.
        let mut slot = got.map_err(|_| AdmissionError::Timeout)?;
        slot.since = Instant::now();
        slot.counted = true;
        gauge_in_flight(1.0);
        Ok(slot)
    }

    /// Hands a freed slot to the next waiter, or keeps it free.
    fn release(self: &Arc<Self>) {
        let mut q = self.queues();
        loop {
            let batch_turn = !q.batch.is_empty()
                && (q.interactive.is_empty() || q.batch_passed_over + 1 >= BATCH_SHARE);
            let next = if batch_turn {
                q.batch_passed_over = 0;
                q.batch.pop_front()
            } else if let Some(w) = q.interactive.pop_front() {
                if !q.batch.is_empty() {
                    q.batch_passed_over += 1;
                }
                metrics::gauge!("precis_queue_depth").set(q.interactive.len() as f64);
                Some(w)
            } else {
                None
            };
            let Some(waiter) = next else {
                q.free += 1;
                return;
            };
            let slot = self.slot(false);
            match waiter.send(slot) {
                Ok(()) => return,
                // That waiter gave up; disarm the slot it refused and try
                // the next one.
                Err(mut refused) => refused.armed = false,
            }
        }
    }

    /// Seconds a refused caller should wait before trying again: about how
    /// long the queue ahead of it takes to drain, at least one.
    pub fn retry_after(&self) -> u64 {
        let per_request = self.recent_ms.load(Ordering::Relaxed).max(1000);
        let rounds = (self.queue_depth / self.capacity).max(1) as u64;
        (per_request * rounds).div_ceil(1000)
    }

    fn queue_full(&self) -> AdmissionError {
        AdmissionError::QueueFull {
            capacity: self.capacity,
            queue_depth: self.queue_depth,
            retry_after: self.retry_after(),
        }
    }
}

/// Why admitted work has no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// It ran past its deadline and was cancelled.
    #[error("the work ran past its deadline and was cancelled")]
    Timeout,
    /// Its thread panicked or was lost.
    #[error("the work's thread failed: {0}")]
    Lost(String),
}

/// Cancels a token when dropped, unless disarmed.
struct CancelOnDrop(Option<CancelToken>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.0.take() {
            token.cancel();
        }
    }
}

/// Runs `work` on a blocking thread, holding `slot` until the work has
/// stopped (not merely until this future ends). Past `deadline`, or when
/// this future is dropped (the caller went away), `cancel` is cancelled, so
/// the work stops at its next step.
pub async fn run_admitted<T: Send + 'static>(
    slot: Arc<Slot>,
    deadline: Option<tokio::time::Instant>,
    cancel: CancelToken,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RunError> {
    let mut guard = CancelOnDrop(Some(cancel));
    let handle = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work()
    });
    let joined = match deadline {
        Some(at) => tokio::time::timeout_at(at, handle)
            .await
            .map_err(|_| RunError::Timeout)?,
        None => handle.await,
    };
    let out = joined.map_err(|e| RunError::Lost(e.to_string()))?;
    // Finished in time: nothing to cancel.
    guard.0 = None;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon(ms: u64) -> Option<tokio::time::Instant> {
        Some(tokio::time::Instant::now() + Duration::from_millis(ms))
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_with_a_retry_time_and_a_late_wait_times_out() {
        let a = Admission::new(1, 1);
        let first = a.enter(Priority::Interactive, None).await.unwrap();
        let a2 = Arc::clone(&a);
        let queued =
            tokio::spawn(async move { a2.enter(Priority::Interactive, None).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = a.enter(Priority::Interactive, None).await.unwrap_err();
        assert!(matches!(e, AdmissionError::QueueFull { retry_after, .. } if retry_after >= 1));
        // Batch work is never refused for a full queue: it waits.
        let a3 = Arc::clone(&a);
        let batch = tokio::spawn(async move { a3.enter(Priority::Batch, None).await.map(|_| ()) });
        drop(first);
        queued.await.unwrap().unwrap();
        batch.await.unwrap().unwrap();
        let held = a.enter(Priority::Interactive, None).await.unwrap();
        let e = a.enter(Priority::Interactive, soon(20)).await.unwrap_err();
        assert_eq!(e, AdmissionError::Timeout);
        // The timed-out waiter left no slot behind: one free after `held`.
        drop(held);
        let _again = a.enter(Priority::Interactive, soon(100)).await.unwrap();
    }

    /// Waits in `class`, then records `name` when served and holds the
    /// slot a moment.
    fn waiter(
        a: &Arc<Admission>,
        class: Priority,
        name: &'static str,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> tokio::task::JoinHandle<()> {
        let (a, order) = (Arc::clone(a), Arc::clone(order));
        tokio::spawn(async move {
            let _slot = a.enter(class, None).await.unwrap();
            order.lock().unwrap().push(name);
            tokio::time::sleep(Duration::from_millis(5)).await;
        })
    }

    #[tokio::test]
    async fn interactive_work_goes_first_and_batch_work_keeps_its_share() {
        let a = Admission::new(1, 64);
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = a.enter(Priority::Batch, None).await.unwrap();
        let mut tasks = Vec::new();
        for name in ["b1", "b2"] {
            tasks.push(waiter(&a, Priority::Batch, name, &order));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for name in ["i1", "i2", "i3", "i4", "i5", "i6"] {
            tasks.push(waiter(&a, Priority::Interactive, name, &order));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        // Interactive first, but every BATCH_SHARE-th freed slot goes to a
        // waiting batch item.
        assert_eq!(
            *order.lock().unwrap(),
            ["i1", "i2", "i3", "b1", "i4", "i5", "i6", "b2"]
        );
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_keep_the_slot() {
        let a = Admission::new(1, 4);
        let held = a.enter(Priority::Interactive, None).await.unwrap();
        let a2 = Arc::clone(&a);
        let gave_up = tokio::spawn(async move { a2.enter(Priority::Interactive, soon(10)).await });
        assert_eq!(gave_up.await.unwrap().unwrap_err(), AdmissionError::Timeout);
        drop(held);
        let got = a.enter(Priority::Batch, soon(100)).await;
        assert!(got.is_ok(), "the slot stayed with a waiter that had left");
    }
}
