//! Exactly once per (user, `Idempotency-Key`), as order-svc keeps it in `order_requests`.
//!
//! The life of a key: [`key_exists`]? no → [`begin`] stores the first request (its order id and
//! the coordinator request it will send, or already its answer) → the caller sends it → [`save`]
//! stores the answer, or releases the key after a 5xx. The same key again → [`replay`]: the
//! stored answer, a conflict (another body), a wait for a request in progress, or a take-over
//! of an interrupted one, which resends the stored request byte for byte.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use host::Problem;
use std::time::{Duration, Instant};
use store::{Db, StoreError};
use tokio::sync::Notify;

/// A stored or fresh response: status and JSON body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: serde_json::Value,
}

impl Answer {
    pub(crate) fn problem(p: &Problem) -> Answer {
        Answer {
            status: p.body().status,
            body: serde_json::to_value(p.body()).unwrap_or_default(),
        }
    }

    pub(crate) fn into_response(self, replayed: bool) -> HttpResponse {
        let mut res = HttpResponse::build(
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        );
        if self.status >= 400 {
            res.content_type("application/problem+json");
        }
        if replayed {
            res.insert_header(("Idempotent-Replayed", "true"));
        }
        res.json(self.body)
    }
}

/// What is stored under a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyState {
    /// Never seen (or forgotten after the retention).
    Absent,
    /// Its answer is stored: a replay costs one read.
    Answered,
    /// A request in progress or interrupted: a replay waits for it or takes it over.
    Unanswered,
}

pub(crate) async fn key_state(db: &Db, user: &str, key: &str) -> Result<KeyState, StoreError> {
    let found: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT response_status FROM order_requests WHERE user_id = $1 AND idempotency_key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(db.pool())
    .await?;
    Ok(match found {
        None => KeyState::Absent,
        Some(Some(_)) => KeyState::Answered,
        Some(None) => KeyState::Unanswered,
    })
}

/// A key's first request, as stored before anything is sent: its order id and either the
/// coordinator request to send (`txn_request`) or already its answer (a client error).
pub(crate) struct FirstRequest<'a> {
    pub(crate) user: &'a str,
    pub(crate) key: &'a str,
    pub(crate) hash: &'a str,
    /// The order's id, or a refund's own id (then `refund_of` is the order refunded).
    pub(crate) order_id: i64,
    pub(crate) refund_of: Option<i64>,
    pub(crate) txn_request: Option<Vec<u8>>,
    pub(crate) answer: Option<&'a Answer>,
}

/// Stores a key's first request; false when another request took the key first. Only the key
/// may conflict: a repeated order id is a unique violation, loudly.
pub(crate) async fn begin(db: &Db, r: FirstRequest<'_>) -> Result<bool, StoreError> {
    let now = store::now_ms();
    // Writes go through the database's writer queue (SQLite admits one writer at a time).
    let mut writer = db.single().await?;
    let fresh = sqlx::query(
        "INSERT INTO order_requests (user_id, idempotency_key, request_hash, order_id, response_status, response_body, \
         txn_request, created_at, updated_at, refund_of) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) \
         ON CONFLICT (user_id, idempotency_key) DO NOTHING",
    )
    .bind(r.user)
    .bind(r.key)
    .bind(r.hash)
    .bind(r.order_id)
    .bind(r.answer.map(|a| i64::from(a.status)))
    .bind(r.answer.map(|a| a.body.to_string()))
    .bind(r.txn_request)
    .bind(now)
    .bind(r.refund_of)
    .execute(&mut *writer)
    .await?
    .rows_affected()
        == 1;
    drop(writer);
    Ok(fresh)
}

/// Stores `answer` as the key's response, or, for a 5xx ("we do not know yet": the coordinator
/// did not answer, a database hiccup), releases the key instead: the order may still be placed,
/// and a retry with the key takes over at once and learns the truth.
///
/// Only while the key has no answer: the first answer stored is the key's for good. An attempt
/// that was taken over (it looked abandoned but was only slow) and ends late neither replaces
/// the answer its successor stored nor releases the key under it.
pub(crate) async fn save(
    db: &Db,
    user: &str,
    key: &str,
    answer: &Answer,
) -> Result<(), StoreError> {
    let transient = answer.status >= 500;
    let mut writer = db.single().await?;
    sqlx::query(
        "UPDATE order_requests SET response_status = $1, response_body = $2, updated_at = $3 \
         WHERE user_id = $4 AND idempotency_key = $5 AND response_status IS NULL",
    )
    .bind((!transient).then_some(i64::from(answer.status)))
    .bind((!transient).then(|| answer.body.to_string()))
    .bind(if transient { RELEASED } else { store::now_ms() })
    .bind(user)
    .bind(key)
    .execute(&mut *writer)
    .await?;
    drop(writer);
    Ok(())
}

/// Forgets a key whose attempt had no effect and must not be its answer for good (a refund
/// refused because another one was under way): the next request with it is a first request.
/// Only while the key has no answer, as for [`save`], and still holds this attempt's `order_id`
/// (a refund's id): a late attempt that was taken over must not forget the row of a request
/// the key started since.
pub(crate) async fn forget(
    db: &Db,
    user: &str,
    key: &str,
    order_id: i64,
) -> Result<(), StoreError> {
    let mut writer = db.single().await?;
    sqlx::query(
        "DELETE FROM order_requests WHERE user_id = $1 AND idempotency_key = $2 AND order_id = $3 \
         AND response_status IS NULL",
    )
    .bind(user)
    .bind(key)
    .bind(order_id)
    .execute(&mut *writer)
    .await?;
    drop(writer);
    Ok(())
}

/// `updated_at` of a request whose attempt ended without an answer: the next request with its
/// key takes over immediately instead of waiting for it to look abandoned.
pub(crate) const RELEASED: i64 = 0;

pub(crate) enum Replay {
    Answered(Answer),
    /// The key was forgotten (the retention's purge) since it was seen: a new request.
    Forgotten,
    TakeOver {
        order_id: i64,
        txn_request: Option<Vec<u8>>,
    },
}

/// Requests waiting for another request with their key to be answered, woken when this
/// process saves the answer (a request on another instance is seen by a slower poll).
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_key: std::sync::Mutex<std::collections::HashMap<(String, String), std::sync::Arc<Notify>>>,
}

/// How often a waiter looks at the database when no wake-up comes (the answer may be saved by
/// another instance).
const POLL: Duration = Duration::from_millis(250);

/// One request waiting on a key: it leaves the map with the last waiter, however the waiting
/// ends (also when the request's future is dropped, its client gone).
struct Waiting<'a> {
    waiters: &'a Waiters,
    key: (String, String),
    notify: Option<std::sync::Arc<Notify>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut by_key = self
            .waiters
            .by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        drop(self.notify.take());
        // Only the map's own reference left: no one else waits on this key.
        if by_key
            .get(&self.key)
            .is_some_and(|n| std::sync::Arc::strong_count(n) == 1)
        {
            by_key.remove(&self.key);
        }
    }
}

impl Waiters {
    fn enter(&self, user: &str, key: &str) -> Waiting<'_> {
        let mut by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.to_owned(), key.to_owned());
        let notify = by_key.entry(key.clone()).or_default().clone();
        Waiting {
            waiters: self,
            key,
            notify: Some(notify),
        }
    }

    /// How many keys have waiters (for tests: the map does not grow with finished waits).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Wakes the requests waiting on this key (its answer was saved or released).
    pub(crate) fn wake(&self, user: &str, key: &str) {
        let by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_key.get(&(user.to_owned(), key.to_owned())) {
            n.notify_waiters();
        }
    }
}

/// The same key again: the stored answer, a conflict, or (after waiting up to `patience` for a
/// request in progress, woken by [`Waiters::wake`]) a take-over of an interrupted one.
pub(crate) async fn replay(
    db: &Db,
    waiters: &Waiters,
    user: &str,
    key: &str,
    hash: &str,
    patience: Duration,
) -> Result<Replay, Problem> {
    let waiting = waiters.enter(user, key);
    let notify = waiting.notify.clone().unwrap_or_default();
    wait_for_answer(db, &notify, user, key, hash, patience).await
}

async fn wait_for_answer(
    db: &Db,
    notify: &Notify,
    user: &str,
    key: &str,
    hash: &str,
    patience: Duration,
) -> Result<Replay, Problem> {
    let started = Instant::now();
    loop {
        // Listening before reading: an answer saved between the read and the wait still wakes.
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        type Row = (
            String,
            i64,
            Option<i64>,
            Option<String>,
            i64,
            Option<Vec<u8>>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT request_hash, order_id, response_status, response_body, updated_at, txn_request FROM order_requests \
             WHERE user_id = $1 AND idempotency_key = $2",
        )
        .bind(user)
        .bind(key)
        .fetch_optional(db.pool())
        .await?;
        let Some((stored_hash, order_id, status, body, updated_at, txn_request)) = row else {
            return Ok(Replay::Forgotten);
        };
        if stored_hash != hash {
            return Err(Problem::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body",
            ));
        }
        if let (Some(status), Some(body)) = (status, body) {
            return Ok(Replay::Answered(Answer {
                status: status as u16,
                body: serde_json::from_str(&body).unwrap_or_default(),
            }));
        }
        let idle = store::now_ms() - updated_at;
        if idle > patience.as_millis() as i64 {
            return Ok(Replay::TakeOver {
                order_id,
                txn_request,
            });
        }
        if started.elapsed() > patience {
            return Err(Problem::conflict(
                "in_progress",
                "a request with this Idempotency-Key is still in progress",
            ));
        }
        let _ = tokio::time::timeout(POLL.min(patience), woken).await;
    }
}

/// Forgets up to `batch` keys answered before `before_ms` (retention); returns how many.
///
/// Only keys whose answer can no longer change and is kept elsewhere go: a client error (no
/// order), an order that reached CONFIRMED, CANCELLED or REFUNDED before the cutoff too, or a
/// refund that ended before it (its `GET`
/// answers from the order itself; the audit checks keys of orders settled since the cutoff). A key still in progress or interrupted stays, however old: a retry must take it
/// over and resend its coordinator request, never start the order again. The key of the largest
/// order id stays too: order ids resume above it after a restart.
pub async fn purge_answered(db: &Db, before_ms: i64, batch: i64) -> Result<u64, StoreError> {
    let mut writer = db.single().await?;
    let removed = sqlx::query(
        "DELETE FROM order_requests WHERE (user_id, idempotency_key) IN ( \
           SELECT r.user_id, r.idempotency_key FROM order_requests r \
           WHERE r.response_status IS NOT NULL AND r.updated_at < $1 AND r.updated_at <> $2 \
           AND r.order_id < (SELECT MAX(order_id) FROM order_requests) \
           AND (EXISTS (SELECT 1 FROM orders o WHERE o.id = r.order_id \
                 AND o.status IN ('CONFIRMED', 'CANCELLED', 'REFUNDED') AND o.updated_at < $1) \
             OR EXISTS (SELECT 1 FROM refunds f WHERE f.id = r.order_id \
                 AND f.status IN ('REFUNDED', 'FAILED') AND f.updated_at < $1) \
             OR (r.txn_request IS NULL AND r.response_status >= 400 AND r.response_status < 500 \
                 AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = r.order_id))) \
           LIMIT $3)",
    )
    .bind(before_ms)
    .bind(RELEASED)
    .bind(batch.max(1))
    .execute(&mut *writer)
    .await?
    .rows_affected();
    drop(writer);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused refund's key is forgotten; a late attempt of the same refund (taken over while
    /// slow) does not forget the row of the refund the key started since.
    #[tokio::test]
    async fn a_late_refused_attempt_forgets_only_its_own_refunds_key() {
        let test_db = testkit::TestDb::sqlite();
        let db = Db::connect(&store::DbConfig::new(test_db.url()))
            .await
            .unwrap();
        db.migrate(&crate::MIGRATOR).await.unwrap();
        let first = |order_id| FirstRequest {
            user: "alice",
            key: "k",
            hash: "h",
            order_id,
            refund_of: Some(1),
            txn_request: Some(vec![1]),
            answer: None,
        };
        assert!(begin(&db, first(10)).await.unwrap());
        forget(&db, "alice", "k", 10).await.unwrap();
        assert_eq!(
            key_state(&db, "alice", "k").await.unwrap(),
            KeyState::Absent
        );
        assert!(begin(&db, first(11)).await.unwrap());
        forget(&db, "alice", "k", 10).await.unwrap();
        assert_eq!(
            key_state(&db, "alice", "k").await.unwrap(),
            KeyState::Unanswered,
            "refund 11 lost its key while under way"
        );
    }

    /// A first attempt taken over while it was only slow ends late: neither its 5xx (a release)
    /// nor its answer replaces what its successor stored.
    #[tokio::test]
    async fn the_first_answer_stored_is_the_key_s_and_a_late_attempt_changes_nothing() {
        let test_db = testkit::TestDb::sqlite();
        let db = Db::connect(&store::DbConfig::new(test_db.url()))
            .await
            .unwrap();
        db.migrate(&crate::MIGRATOR).await.unwrap();
        let answer = |status: u16, what: &str| Answer {
            status,
            body: serde_json::json!({ "status": what }),
        };
        let first = FirstRequest {
            user: "alice",
            key: "k",
            hash: "h",
            order_id: 7,
            refund_of: None,
            txn_request: Some(vec![1]),
            answer: None,
        };
        assert!(begin(&db, first).await.unwrap());
        // The successor (after a take-over) stores the outcome.
        save(&db, "alice", "k", &answer(201, "confirmed"))
            .await
            .unwrap();
        // The slow first attempt ends: a 503 (it would release the key), then a late answer.
        save(&db, "alice", "k", &answer(503, "unavailable"))
            .await
            .unwrap();
        save(&db, "alice", "k", &answer(201, "pending"))
            .await
            .unwrap();
        match replay(
            &db,
            &Waiters::default(),
            "alice",
            "k",
            "h",
            Duration::from_secs(1),
        )
        .await
        .unwrap()
        {
            Replay::Answered(a) => {
                assert_eq!(
                    (a.status, a.body["status"].as_str()),
                    (201, Some("confirmed"))
                )
            }
            _ => panic!("the key lost its answer"),
        }
    }

    #[tokio::test]
    async fn a_waiter_leaves_the_map_however_its_wait_ends_and_a_wake_reaches_every_waiter() {
        let waiters = Waiters::default();
        {
            let a = waiters.enter("u", "k");
            let b = waiters.enter("u", "k");
            assert_eq!(waiters.len(), 1);
            let (na, nb) = (a.notify.clone().unwrap(), b.notify.clone().unwrap());
            let (wa, wb) = (na.notified(), nb.notified());
            tokio::pin!(wa, wb);
            wa.as_mut().enable();
            wb.as_mut().enable();
            waiters.wake("u", "k");
            tokio::time::timeout(Duration::from_secs(1), async {
                wa.await;
                wb.await
            })
            .await
            .expect("both woken");
            drop(a);
            assert_eq!(waiters.len(), 1, "b still waits");
        }
        assert_eq!(waiters.len(), 0);
        // A wait whose future is dropped half-way (its client gone) leaves too.
        let abandoned = async {
            let w = waiters.enter("u", "k2");
            std::future::pending::<()>().await;
            drop(w);
        };
        let _ = tokio::time::timeout(Duration::from_millis(10), abandoned).await;
        assert_eq!(waiters.len(), 0);
    }
}
