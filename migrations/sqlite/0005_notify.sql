-- Schema 5 (SQLite): nothing to change. On PostgreSQL this migration makes
-- new revocation events announce themselves to other replicas (NOTIFY); a
-- SQLite database has a single gateway process, which applies its own
-- revocations at once. The number is kept so both histories stay aligned.
SELECT 1;
