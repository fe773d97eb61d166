-- The orders schema: a product catalogue to look prices up in and keep stock on, and the
-- orders themselves. request_id is UNIQUE because delivery is at least once: a task that runs
-- twice (its worker died after the commit, before the outcome was stored) must write its
-- order once, so the insert is ON CONFLICT (request_id) DO NOTHING (db.py).
CREATE TABLE products (
    sku         integer PRIMARY KEY,
    price_cents integer NOT NULL CHECK (price_cents > 0),
    stock       integer NOT NULL
);

CREATE TABLE orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  text NOT NULL UNIQUE,
    customer_id integer NOT NULL,
    sku         integer NOT NULL REFERENCES products,
    quantity    integer NOT NULL CHECK (quantity > 0),
    total_cents integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- 10,000 products: orders spread over them, so two orders rarely wait on one row's lock.
INSERT INTO products (sku, price_cents, stock)
SELECT sku, 100 + sku % 900, 1000000 FROM generate_series(1, 10000) AS sku;
