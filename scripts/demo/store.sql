-- The online store's PostgreSQL schema (site "store").
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
INSERT INTO customers VALUES (1, 'ada@example.com', 'Ada Lovelace', now()), (2, 'alan@example.com', 'Alan Turing', now());
INSERT INTO products VALUES ('MUG-01', 'Mug ☕', 9.90, true), ('TEE-02', 'T-shirt', 19.00, true);
INSERT INTO orders VALUES (1001, 1, 'paid', 29.80, now());
INSERT INTO order_lines VALUES (1001, 1, 'MUG-01', 1, 9.90), (1001, 2, 'TEE-02', 1, 19.00);
INSERT INTO inventory VALUES ('MUG-01', 120, now()), ('TEE-02', 40, now());
