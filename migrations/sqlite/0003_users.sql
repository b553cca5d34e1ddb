-- Schema 3 (SQLite): users created through the Users API, and the change log
-- replicas follow to keep their in-memory user directory fresh.
--
-- Released migrations are never edited: a change is a new file NNNN_name.sql,
-- listed in src/store/migrate.rs with the same number for every backend.

-- Stored users. `login_key` is the login lower-cased by the gateway (Unicode
-- aware, which SQLite's lower() is not) and is what uniqueness is about.
-- `profile` is the Okta profile object as JSON text. `seq` is the user's
-- place in the change log: every write moves it to the next value of
-- `user_change_seq`.
CREATE TABLE users (
    id               TEXT    PRIMARY KEY,
    seq              INTEGER NOT NULL,
    login            TEXT    NOT NULL,
    login_key        TEXT    NOT NULL UNIQUE,
    status           TEXT    NOT NULL CHECK (status IN ('STAGED', 'ACTIVE', 'SUSPENDED')),
    profile          TEXT    NOT NULL,
    password_hash    TEXT,
    created          INTEGER NOT NULL,
    activated        INTEGER,
    status_changed   INTEGER,
    last_updated     INTEGER NOT NULL,
    password_changed INTEGER
) STRICT;
CREATE INDEX users_seq ON users (seq);

-- Deleted users: only the id and the change-log position, so that replicas
-- learn about the deletion. Kept (they are small): a replica that was cut off
-- from the store for a long time still sees every deletion it missed.
CREATE TABLE deleted_users (
    id         TEXT    PRIMARY KEY,
    seq        INTEGER NOT NULL,
    deleted_at INTEGER NOT NULL
) STRICT;
CREATE INDEX deleted_users_seq ON deleted_users (seq);

-- The last change-log position handed out (one row).
CREATE TABLE user_change_seq (
    seq INTEGER NOT NULL
) STRICT;
INSERT INTO user_change_seq (seq) VALUES (0);
