CREATE TABLE ledger (
    id BIGINT PRIMARY KEY,
    account_id BIGINT NOT NULL,
    delta BIGINT NOT NULL
);
