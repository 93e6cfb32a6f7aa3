-- The trace a transaction was started in (W3C trace id, 32 hex digits), so the console can link
-- a transaction to its trace. NULL when the caller sent no trace context and none was made.
ALTER TABLE global_txns ADD COLUMN trace_id TEXT;

-- The console's live numbers read the calls of the last minute, whatever transaction they
-- belong to (recovery retries and second phases of older transactions included).
CREATE INDEX attempts_started ON attempts (started_at);
