-- Refunds of confirmed orders, one row per refund transaction (a Saga; see src/domain.rs).
-- Status: REFUNDING (its first step) -> REFUNDED (its last), or FAILED (compensated, or its first
-- step never ran: a refund the coordinator rolled back always has a row that says so).
-- `reason`: why it failed, as the API answered (NULL until then).
CREATE TABLE refunds (
    id BIGINT PRIMARY KEY,
    gid BIGINT NOT NULL,
    order_id BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX refunds_gid ON refunds (gid);
CREATE INDEX refunds_order ON refunds (order_id, id);
-- An order is refunded at most once: a second refund under way or done is refused by the
-- database too, whatever raced.
CREATE UNIQUE INDEX refunds_one_per_order ON refunds (order_id) WHERE status <> 'FAILED';

-- A key of `POST /api/v1/orders/{id}/refund`: `order_id` then holds the refund's id (from the
-- same generator as order ids) and `refund_of` the order refunded. NULL: a key of an order.
ALTER TABLE order_requests ADD COLUMN refund_of BIGINT;
