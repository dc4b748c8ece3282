-- The online store's PostgreSQL schema (site "store", database shop). No rows: the demo adds
-- them while duplex runs, so every site gets them through duplex.
CREATE TABLE customers (
    id          bigint PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE products (
    sku         varchar(32) PRIMARY KEY,
    title       text NOT NULL,
    price       numeric(12,2) NOT NULL,
    active      boolean NOT NULL DEFAULT true
);
CREATE TABLE orders (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    status      varchar(20) NOT NULL,
    total       numeric(12,2) NOT NULL,
    placed_at   timestamptz NOT NULL
);
CREATE TABLE order_lines (
    order_id    bigint NOT NULL REFERENCES orders(id),
    line_no     int NOT NULL,
    sku         varchar(32) NOT NULL,
    quantity    int NOT NULL,
    unit_price  numeric(12,2) NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
CREATE TABLE inventory (
    sku         varchar(32) PRIMARY KEY,
    on_hand     int NOT NULL,
    updated_at  timestamptz NOT NULL
);
