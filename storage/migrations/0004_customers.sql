-- Customers of the cloud recording API: HTTP Basic Auth with a customer id and secret (only
-- the secret's SHA-256 is kept, like API keys).

CREATE TABLE customers (
    customer_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
