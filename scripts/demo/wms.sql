-- The warehouse management system's PostgreSQL schema (site "wms", a second database on the
-- store's server): what the warehouse needs to pick, pack and count. No customers table, and
-- its own name for the stock count (quantity; the store and the ERP say on_hand).
CREATE TABLE products (
    sku         varchar(32) PRIMARY KEY,
    title       text NOT NULL,
    price       numeric(12,2) NOT NULL,
    active      boolean NOT NULL DEFAULT true
);
CREATE TABLE orders (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
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
    quantity    int NOT NULL,
    updated_at  timestamptz NOT NULL
);
