-- Stock per SKU in whole items. `available` can be reserved; `reserved` is held by Tries
-- awaiting their Confirm or Cancel; `sold` left the warehouse. Items only enter through
-- `restocks`, so SUM(available + reserved + sold) = SUM(restocks.quantity) per SKU.
CREATE TABLE skus (
    id TEXT PRIMARY KEY,
    available BIGINT NOT NULL,
    reserved BIGINT NOT NULL,
    sold BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE restocks (
    id BIGINT PRIMARY KEY,
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One row per branch that took stock. Status: reserved -> sold | released (TCC),
-- taken -> returned (Saga).
CREATE TABLE reservations (
    gid BIGINT NOT NULL,
    branch_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (gid, branch_id)
);

CREATE INDEX reservations_status ON reservations (status);
