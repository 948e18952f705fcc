-- The shop's tables. Money is NUMERIC (exact), never float. Timestamps carry a time zone so
-- that analytics periods mean the same thing on every server.

-- Catalogue. `sku` is the natural key: it lets `server seed` be re-run without duplicating
-- rows. `search` is the seed's full-text document, kept as a stored generated column so the
-- GIN index and the queries cannot drift apart (the seed repeated the expression by hand).
CREATE TABLE products (
    id          BIGSERIAL PRIMARY KEY,
    sku         VARCHAR(64)  NOT NULL UNIQUE,
    name        VARCHAR(255) NOT NULL,
    description TEXT         NOT NULL DEFAULT '',
    price       NUMERIC(12, 2) NOT NULL CHECK (price >= 0),
    category    VARCHAR(100) NOT NULL,
    active      BOOLEAN      NOT NULL DEFAULT true,
    popularity  INTEGER      NOT NULL DEFAULT 0 CHECK (popularity >= 0),
    created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    search      tsvector GENERATED ALWAYS AS
                (to_tsvector('english', name || ' ' || description)) STORED
);

CREATE INDEX products_search_idx ON products USING GIN (search);

-- The default listing order ("most popular first") for active products.
CREATE INDEX products_popular_idx ON products (popularity DESC, id) WHERE active;

-- Deliberately no index on `category`: the seed's own story is the optimizer discovering the
-- slow category filter and proposing it (see the query optimization issue).

-- Stock lives apart from the catalogue row: checkouts update it constantly, and keeping those
-- writes off `products` spares the GIN index and keeps catalogue rows stable for caching.
CREATE TABLE inventory (
    product_id BIGINT  PRIMARY KEY REFERENCES products (id) ON DELETE CASCADE,
    quantity   INTEGER NOT NULL CHECK (quantity >= 0)
);

-- Accounts. E-mail is unique case-insensitively; only an argon2id PHC string is stored.
CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    email         VARCHAR(254) NOT NULL,
    password_hash TEXT         NOT NULL,
    name          VARCHAR(100),
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Bearer tokens. Only the SHA-256 of a token is kept, so a leaked table grants nothing.
CREATE TABLE sessions (
    token_hash BYTEA       PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_expiry_idx ON sessions (expires_at);

-- One row per product in a user's cart. `price` is the price when it was added (shown to the
-- user); checkout charges the current catalogue price.
CREATE TABLE cart_items (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    product_id BIGINT  NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    quantity   INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    price      NUMERIC(12, 2) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, product_id)
);

CREATE TABLE orders (
    id               BIGSERIAL PRIMARY KEY,
    user_id          BIGINT       NOT NULL REFERENCES users (id),
    total            NUMERIC(14, 2) NOT NULL CHECK (total >= 0),
    payment_method   VARCHAR(50)  NOT NULL,
    shipping_address JSONB        NOT NULL,
    status           VARCHAR(20)  NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
    created_at       TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX orders_user_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_created_idx ON orders (created_at);

CREATE TABLE order_items (
    id         BIGSERIAL PRIMARY KEY,
    order_id   BIGINT  NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id BIGINT  NOT NULL REFERENCES products (id),
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    price      NUMERIC(12, 2) NOT NULL
);
CREATE INDEX order_items_order_idx ON order_items (order_id);
CREATE INDEX order_items_product_idx ON order_items (product_id);

-- Idempotency keys for checkout, scoped per user as Stripe does. A row with no `status_code`
-- is a request still running (or abandoned: `locked_at` lets a later retry take it over).
-- The response is written in the same transaction as the order, so a replay is never ahead of
-- or behind the data.
CREATE TABLE idempotency_keys (
    user_id       BIGINT       NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key           VARCHAR(255) NOT NULL,
    request_hash  BYTEA        NOT NULL,
    status_code   SMALLINT,
    response_body JSONB,
    locked_at     TIMESTAMPTZ  NOT NULL DEFAULT now(),
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
