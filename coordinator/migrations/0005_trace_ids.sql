-- The trace a transaction was started in (W3C trace id, 32 hex digits), so the console can link
-- a transaction to its trace. NULL when the caller sent no trace context and none was made.
ALTER TABLE global_txns ADD COLUMN trace_id TEXT;
