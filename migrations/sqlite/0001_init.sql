-- Schema 1 (SQLite): session revocations, user epochs, failure counters, locks.
--
-- Released migrations are never edited: a change is a new file NNNN_name.sql,
-- listed in src/store/migrate.rs with the same number for every backend.
-- Times are Unix seconds chosen by the gateway. Tables are STRICT so a value of
-- the wrong type is refused instead of silently stored.

-- The revocation log that replicas tail. AUTOINCREMENT (not just a rowid) so a
-- sequence number is never handed out twice, even after purge_expired deleted
-- the newest row: readers resume from the highest seq they saw.
CREATE TABLE revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL CHECK (kind IN ('session', 'epoch')),
    sid        TEXT,
    user_id    TEXT,
    epoch      INTEGER,
    expires_at INTEGER,
    CHECK (
        (kind = 'session' AND sid IS NOT NULL AND expires_at IS NOT NULL
            AND user_id IS NULL AND epoch IS NULL)
        OR (kind = 'epoch' AND user_id IS NOT NULL AND epoch IS NOT NULL
            AND sid IS NULL AND expires_at IS NULL)
    )
) STRICT;
CREATE INDEX revocations_session_expiry ON revocations (expires_at) WHERE kind = 'session';

-- A user's current session epoch; users without a row are at 0.
CREATE TABLE user_epochs (
    user_id TEXT    PRIMARY KEY,
    epoch   INTEGER NOT NULL CHECK (epoch > 0)
) STRICT;

-- Fixed-window failure counters (passwords, factors, client addresses).
CREATE TABLE failure_counters (
    key          TEXT    PRIMARY KEY,
    user_id      TEXT,
    window_start INTEGER NOT NULL,
    count        INTEGER NOT NULL CHECK (count > 0)
) STRICT;
CREATE INDEX failure_counters_user ON failure_counters (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX failure_counters_window ON failure_counters (window_start);

-- Lockouts; `until` only ever moves forward while the row exists.
CREATE TABLE locks (
    key     TEXT    PRIMARY KEY,
    user_id TEXT,
    until   INTEGER NOT NULL
) STRICT;
CREATE INDEX locks_user ON locks (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX locks_until ON locks (until);
