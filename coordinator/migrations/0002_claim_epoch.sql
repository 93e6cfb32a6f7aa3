-- A fencing token per claim: every claim (and the first drive, at insert) takes a new epoch, and
-- every write of a driver is conditional on the epoch it claimed, so a driver whose claim lapsed
-- can no longer write, even when the same instance claimed the transaction again.
ALTER TABLE global_txns ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
