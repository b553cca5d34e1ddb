-- Schema 1 (PostgreSQL): session revocations, user epochs, failure counters, locks.
--
-- Released migrations are never edited: a change is a new file NNNN_name.sql,
-- listed in src/store/migrate.rs with the same number for every backend.
-- Objects are created unqualified, in the schema first on the search_path.
-- Times are Unix seconds (BIGINT) chosen by the gateway.

-- The revocation log that replicas tail. Identity values are never reused, but
-- they can become visible out of commit order; readers re-read an overlap
-- (store::REVOCATION_OVERLAP) to cover that.
CREATE TABLE revocations (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       TEXT   NOT NULL CHECK (kind IN ('session', 'epoch')),
    sid        TEXT,
    user_id    TEXT,
    epoch      BIGINT,
    expires_at BIGINT,
    CONSTRAINT revocations_shape CHECK (
        (kind = 'session' AND sid IS NOT NULL AND expires_at IS NOT NULL
            AND user_id IS NULL AND epoch IS NULL)
        OR (kind = 'epoch' AND user_id IS NOT NULL AND epoch IS NOT NULL
            AND sid IS NULL AND expires_at IS NULL)
    )
);
CREATE INDEX revocations_session_expiry ON revocations (expires_at) WHERE kind = 'session';

-- A user's current session epoch; users without a row are at 0.
CREATE TABLE user_epochs (
    user_id TEXT   PRIMARY KEY,
    epoch   BIGINT NOT NULL CHECK (epoch > 0)
);

-- Fixed-window failure counters (passwords, factors, client addresses).
CREATE TABLE failure_counters (
    key          TEXT   PRIMARY KEY,
    user_id      TEXT,
    window_start BIGINT NOT NULL,
    count        BIGINT NOT NULL CHECK (count > 0)
);
CREATE INDEX failure_counters_user ON failure_counters (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX failure_counters_window ON failure_counters (window_start);

-- Lockouts; `until` only ever moves forward while the row exists.
CREATE TABLE locks (
    key     TEXT   PRIMARY KEY,
    user_id TEXT,
    until   BIGINT NOT NULL
);
CREATE INDEX locks_user ON locks (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX locks_until ON locks (until);
