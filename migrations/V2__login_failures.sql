-- Failed sign-ins, counted in the database so that every server instance enforces the same
-- hourly limits (`auth.failed_logins_per_account_per_hour`, `auth.failed_logins_per_client_per_hour`).
-- One row per account (SHA-256 of the lower-cased e-mail, known or not) or client address, for the
-- window that started with its first failure; the hourly clean-up drops windows that are over.
CREATE TABLE login_failures (
    scope text NOT NULL CHECK (scope IN ('account', 'client')),
    key bytea NOT NULL,
    window_start timestamptz NOT NULL DEFAULT now(),
    failures integer NOT NULL DEFAULT 1,
    PRIMARY KEY (scope, key)
);
