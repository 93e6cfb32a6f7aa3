-- What the public API sells: price in minor units per item.
CREATE TABLE catalog (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- One row per (user, Idempotency-Key): the request's hash, the order it created, and the
-- response it got, so the same key returns the same response and a different body is refused.
-- A row without a response is in progress (or was interrupted: `updated_at` tells how long ago).
CREATE TABLE order_requests (
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    order_id BIGINT NOT NULL,
    response_status BIGINT,
    response_body TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, idempotency_key)
);
