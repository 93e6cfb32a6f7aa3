-- Snowflake node ids leased by the live instances (store::node): one row per id, renewed by a
-- heartbeat, so a second instance configured with a taken id refuses to start.
CREATE TABLE node_leases (
    node_id BIGINT PRIMARY KEY,
    owner TEXT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
