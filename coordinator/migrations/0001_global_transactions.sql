-- The coordinator's log (DESIGN §3). A row is committed before any participant is called, and
-- every status change that authorises a side effect is committed before that side effect.
CREATE TABLE global_txns (
    gid BIGINT PRIMARY KEY,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    -- NULL: no idempotence requested. Unique otherwise (NULLs never collide on either database).
    idempotency_key TEXT,
    -- sha256 of the request, to tell a replay from a different request with the same key.
    request_hash TEXT NOT NULL,
    reason TEXT,
    concurrent BIGINT NOT NULL,
    branch_timeout_ms BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deadline_at BIGINT NOT NULL,
    -- When recovery should next drive it (backoff after a failed round, or now).
    next_attempt_at BIGINT NOT NULL,
    -- Driving rounds so far.
    attempts BIGINT NOT NULL,
    -- The instance driving it, and until when its claim holds.
    owner TEXT,
    lease_until BIGINT NOT NULL
);

CREATE UNIQUE INDEX global_txns_idempotency_key ON global_txns (idempotency_key);
CREATE INDEX global_txns_due ON global_txns (status, next_attempt_at);

CREATE TABLE branches (
    gid BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    branch_id TEXT NOT NULL,
    participant TEXT NOT NULL,
    payload BYTEA NOT NULL,
    -- Comma-separated indices of the branches it depends on (Saga).
    depends_on TEXT NOT NULL,
    phase1 TEXT NOT NULL,
    phase2 TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT,
    PRIMARY KEY (gid, idx)
);

-- Every call of every op: the timeline an operator reads.
CREATE TABLE attempts (
    id BIGINT PRIMARY KEY,
    gid BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    op TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_us BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    owner TEXT NOT NULL
);

CREATE INDEX attempts_gid ON attempts (gid, started_at);
