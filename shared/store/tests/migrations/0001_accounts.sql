-- Test schema: the column types DESIGN §4 allows, on both databases.
CREATE TABLE accounts (
    id BIGINT PRIMARY KEY,
    owner TEXT NOT NULL,
    available BIGINT NOT NULL,
    frozen BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

CREATE TABLE barrier (
    gid BIGINT NOT NULL,
    branch_id TEXT NOT NULL,
    op TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    payload BYTEA,
    PRIMARY KEY (gid, branch_id, op)
);

CREATE UNIQUE INDEX accounts_owner_uq ON accounts (owner);
