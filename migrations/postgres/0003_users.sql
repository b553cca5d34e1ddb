-- Schema 3 (PostgreSQL): users created through the Users API, and the change
-- log replicas follow to keep their in-memory user directory fresh.
--
-- Released migrations are never edited: a change is a new file NNNN_name.sql,
-- listed in src/store/migrate.rs with the same number for every backend.

-- Every write of a user (or its deletion) takes the next value; values can
-- become visible out of order, so readers re-read an overlap.
CREATE SEQUENCE user_change_seq;

-- Stored users. `login_key` is the login lower-cased by the gateway and is
-- what uniqueness is about. `profile` is the Okta profile object as JSON text.
CREATE TABLE users (
    id               TEXT   PRIMARY KEY,
    seq              BIGINT NOT NULL,
    login            TEXT   NOT NULL,
    login_key        TEXT   NOT NULL UNIQUE,
    status           TEXT   NOT NULL CHECK (status IN ('STAGED', 'ACTIVE', 'SUSPENDED')),
    profile          TEXT   NOT NULL,
    password_hash    TEXT,
    created          BIGINT NOT NULL,
    activated        BIGINT,
    status_changed   BIGINT,
    last_updated     BIGINT NOT NULL,
    password_changed BIGINT
);
CREATE INDEX users_seq ON users (seq);

-- Deleted users: only the id and the change-log position, so that replicas
-- learn about the deletion. Kept (they are small): a replica that was cut off
-- from the store for a long time still sees every deletion it missed.
CREATE TABLE deleted_users (
    id         TEXT   PRIMARY KEY,
    seq        BIGINT NOT NULL,
    deleted_at BIGINT NOT NULL
);
CREATE INDEX deleted_users_seq ON deleted_users (seq);
