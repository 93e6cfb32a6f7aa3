-- Orders. Status: PENDING (Try) -> CONFIRMED | CANCELLED. Saga: CONFIRMED (Action) ->
-- CANCELLED (Compensate). A Cancel whose Try never arrived stores the order CANCELLED, so every
-- gid the coordinator rolled back has an order row that says so.
CREATE TABLE orders (
    id BIGINT PRIMARY KEY,
    gid BIGINT NOT NULL,
    branch_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX orders_gid_branch ON orders (gid, branch_id);
CREATE INDEX orders_user ON orders (user_id, id);
CREATE INDEX orders_status ON orders (status);
