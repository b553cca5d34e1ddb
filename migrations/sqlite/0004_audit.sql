-- Schema 4 (SQLite): audit events, served by GET /api/v1/logs and kept for
-- `audit.retention`.
--
-- Released migrations are never edited: a change is a new file NNNN_name.sql,
-- listed in src/store/migrate.rs with the same number for every backend.

-- `body` is the Okta System Log event as JSON text; `search` the lower-cased
-- text a `q` filter looks in; `published_ms` Unix milliseconds. Paging and
-- order are by (published_ms, seq).
CREATE TABLE audit_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid         TEXT    NOT NULL UNIQUE,
    published_ms INTEGER NOT NULL,
    event_type   TEXT    NOT NULL,
    search       TEXT    NOT NULL,
    body         TEXT    NOT NULL
) STRICT;
CREATE INDEX audit_events_published ON audit_events (published_ms, seq);
