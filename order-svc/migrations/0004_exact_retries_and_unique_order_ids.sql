-- The coordinator request an order's first attempt built (protobuf `tcc.v1.ExecuteRequest`),
-- stored with the key before the coordinator is called: a retry that takes the key over resends
-- exactly it, whatever the catalog or the configuration say by then. NULL: answered without
-- a transaction (a client error), or a row written before this column existed.
ALTER TABLE order_requests ADD COLUMN txn_request BYTEA;

-- One order id per coordinator request: a repeated Snowflake id is refused loudly instead of
-- joining two requests to one coordinator key `order:<id>`. Only rows that carry a request are
-- covered: a client error never reaches the coordinator, and rows written before this migration
-- (where an id may already have repeated) must not keep the service from starting.
CREATE UNIQUE INDEX order_requests_order_unique ON order_requests (order_id)
    WHERE txn_request IS NOT NULL;
