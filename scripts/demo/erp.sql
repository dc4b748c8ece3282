-- The ERP's MariaDB schema (site "erp"): the same tables, MySQL types, some own names.
CREATE TABLE customers (
    id          BIGINT PRIMARY KEY,
    email       VARCHAR(255) NOT NULL UNIQUE,
    name        LONGTEXT NOT NULL,
    created_at  DATETIME(6) NOT NULL
) ENGINE=InnoDB;
CREATE TABLE products (
    sku         VARCHAR(32) PRIMARY KEY,
    title       LONGTEXT NOT NULL,
    price       DECIMAL(12,2) NOT NULL,
    active      TINYINT(1) NOT NULL DEFAULT 1
) ENGINE=InnoDB;
CREATE TABLE orders (
    id          BIGINT PRIMARY KEY,
    customer_id BIGINT NOT NULL,
    status      VARCHAR(20) NOT NULL,
    amount      DECIMAL(12,2) NOT NULL,
    placed_at   DATETIME(6) NOT NULL
) ENGINE=InnoDB;
CREATE TABLE order_lines (
    order_id    BIGINT NOT NULL,
    line_no     INT NOT NULL,
    sku         VARCHAR(32) NOT NULL,
    quantity    INT NOT NULL,
    unit_price  DECIMAL(12,2) NOT NULL,
    PRIMARY KEY (order_id, line_no)
) ENGINE=InnoDB;
CREATE TABLE inventory (
    sku         VARCHAR(32) PRIMARY KEY,
    on_hand     INT NOT NULL,
    updated_at  DATETIME(6) NOT NULL
) ENGINE=InnoDB;
