-- The sub-transaction barrier (DESIGN §2). One row per (gid, branch, op) that took effect in this
-- participant's database, written in the same local transaction as the business change.
-- `reason` is the op whose call inserted the row: a `try` row with reason `cancel` is the marker
-- of a null compensation, and makes a late Try do nothing.
CREATE TABLE tcc_barrier (
    gid BIGINT NOT NULL,
    branch_id TEXT NOT NULL,
    op TEXT NOT NULL,
    barrier_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (gid, branch_id, op, barrier_id)
);

CREATE INDEX tcc_barrier_created_at ON tcc_barrier (created_at);
