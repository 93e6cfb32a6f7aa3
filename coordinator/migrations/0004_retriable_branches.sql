-- A Saga's retriable branches (steps after its point of no return: retried until they succeed,
-- never compensated). 0 for every branch recorded before they existed.
ALTER TABLE branches ADD COLUMN retriable BIGINT NOT NULL DEFAULT 0;
