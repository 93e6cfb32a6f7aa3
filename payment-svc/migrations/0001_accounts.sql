-- Balances in minor units. `available` can be spent; `frozen` is held by Tries awaiting their
-- Confirm or Cancel. Money only moves between accounts, or in through `deposits`, so
-- SUM(available + frozen) = SUM(deposits.amount) at all times.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    available BIGINT NOT NULL,
    frozen BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Money that entered the system (account creation with a balance, top-ups).
CREATE TABLE deposits (
    id BIGINT PRIMARY KEY,
    account_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One row per branch that took money: what a Confirm, Cancel or Compensate acts on. Status:
-- frozen -> captured | released (TCC), debited -> refunded (Saga).
CREATE TABLE holds (
    gid BIGINT NOT NULL,
    branch_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (gid, branch_id)
);

CREATE INDEX holds_status ON holds (status);
