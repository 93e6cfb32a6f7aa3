CREATE TABLE wallet (
    id BIGINT PRIMARY KEY,
    available BIGINT NOT NULL,
    frozen BIGINT NOT NULL,
    spent BIGINT NOT NULL
);
