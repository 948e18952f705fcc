-- Dashboard sessions (the cookie a browser gets for the admin token), kept in the database so
-- that any server instance behind a load balancer accepts them. One row per session: SHA-256 of
-- the cookie value, and when it ends; at most 64 are kept (the oldest go first), and the hourly
-- clean-up drops the expired ones.
CREATE TABLE dashboard_sessions (
    hash bytea PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expiry_idx ON dashboard_sessions (expires_at);
