//! Exactly once per (user, `Idempotency-Key`), as order-svc keeps it in `order_requests`.
//!
//! The life of a key: [`key_exists`]? no → [`begin`] stores the first request (its order id and
//! the coordinator request it will send, or already its answer) → the caller sends it → [`save`]
//! stores the answer, or releases the key after a 5xx. The same key again → [`replay`]: the
//! stored answer, a conflict (another body), a wait for a request in progress, or a take-over
//! of an interrupted one, which resends the stored request byte for byte.

use crate::api::unprocessable;
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use host::Problem;
use std::time::{Duration, Instant};
use store::{Db, StoreError};

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

pub(crate) async fn key_exists(db: &Db, user: &str, key: &str) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM order_requests WHERE user_id = $1 AND idempotency_key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(db.pool())
    .await?;
    Ok(found.is_some())
}

/// A key's first request, as stored before anything is sent: its order id and either the
/// coordinator request to send (`txn_request`) or already its answer (a client error).
pub(crate) struct FirstRequest<'a> {
    pub(crate) user: &'a str,
    pub(crate) key: &'a str,
    pub(crate) hash: &'a str,
    pub(crate) order_id: i64,
    pub(crate) txn_request: Option<Vec<u8>>,
    pub(crate) answer: Option<&'a Answer>,
}

/// Stores a key's first request; false when another request took the key first. Only the key
/// may conflict: a repeated order id is a unique violation, loudly.
pub(crate) async fn begin(db: &Db, r: FirstRequest<'_>) -> Result<bool, StoreError> {
    let now = store::now_ms();
    // Writes go through the database's writer queue (SQLite admits one writer at a time).
    let mut writer = db.begin().await?;
    let fresh = sqlx::query(
        "INSERT INTO order_requests (user_id, idempotency_key, request_hash, order_id, response_status, response_body, \
         txn_request, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
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
    .execute(&mut *writer)
    .await?
    .rows_affected()
        == 1;
    writer.commit().await?;
    Ok(fresh)
}

/// Stores `answer` as the key's response, or, for a 5xx ("we do not know yet": the coordinator
/// did not answer, a database hiccup), releases the key instead: the order may still be placed,
/// and a retry with the key takes over at once and learns the truth.
pub(crate) async fn save(
    db: &Db,
    user: &str,
    key: &str,
    answer: &Answer,
) -> Result<(), StoreError> {
    let transient = answer.status >= 500;
    let mut writer = db.begin().await?;
    sqlx::query(
        "UPDATE order_requests SET response_status = $1, response_body = $2, updated_at = $3 \
         WHERE user_id = $4 AND idempotency_key = $5",
    )
    .bind((!transient).then_some(i64::from(answer.status)))
    .bind((!transient).then(|| answer.body.to_string()))
    .bind(if transient { RELEASED } else { store::now_ms() })
    .bind(user)
    .bind(key)
    .execute(&mut *writer)
    .await?;
    writer.commit().await?;
    Ok(())
}

/// `updated_at` of a request whose attempt ended without an answer: the next request with its
/// key takes over immediately instead of waiting for it to look abandoned.
pub(crate) const RELEASED: i64 = 0;

pub(crate) enum Replay {
    Answered(Answer),
    TakeOver {
        order_id: i64,
        txn_request: Option<Vec<u8>>,
    },
}

/// The same key again: the stored answer, a conflict, or (after waiting up to `patience` for a
/// request in progress) a take-over of an interrupted one.
pub(crate) async fn replay(
    db: &Db,
    user: &str,
    key: &str,
    hash: &str,
    patience: Duration,
) -> Result<Replay, Problem> {
    let started = Instant::now();
    loop {
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
            return Err(Problem::internal("the idempotency record vanished"));
        };
        if stored_hash != hash {
            return Err(unprocessable(
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
