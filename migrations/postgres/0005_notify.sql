-- Schema 5 (PostgreSQL): every new revocation event is announced with NOTIFY,
-- so the other replicas apply it at once instead of at their next poll.
--
-- Released migrations are never edited: a change is a new file NNNN_name.sql,
-- listed in src/store/migrate.rs with the same number for every backend.
--
-- The trigger fires inside the writer's own transaction, so the notification
-- is delivered on commit and never for a write that rolled back, whichever
-- replica or tool wrote the row. Epoch bumps write their `revocations` row in
-- the same statement as `user_epochs`, so one trigger covers sign-outs,
-- "revoke all sessions", password changes, factor resets and user removal.
--
-- The channel is per schema (several fleets, or test runs, may share one
-- database): 'portcullis_' followed by the md5 of the schema name, which
-- keeps it below PostgreSQL's 63-byte identifier limit for any schema name.
--
-- The payload is small JSON:
--   {"k":"session","seq":N,"sid":"...","exp":N}
--   {"k":"epoch","seq":N,"uid":"...","ep":N}
-- A payload that would not fit NOTIFY's 8000-byte limit is replaced by
-- {"k":"wake"}: listeners then read the log from the store. Listeners treat
-- a notification only as a hint; polling the log stays the source of truth.
CREATE FUNCTION portcullis_notify_revocation() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload TEXT;
BEGIN
    IF NEW.kind = 'session' THEN
        payload := json_build_object('k', 'session', 'seq', NEW.seq, 'sid', NEW.sid,
                                     'exp', NEW.expires_at)::text;
    ELSE
        payload := json_build_object('k', 'epoch', 'seq', NEW.seq, 'uid', NEW.user_id,
                                     'ep', NEW.epoch)::text;
    END IF;
    IF octet_length(payload) > 7000 THEN
        payload := '{"k":"wake"}';
    END IF;
    PERFORM pg_notify('portcullis_' || md5(TG_TABLE_SCHEMA), payload);
    RETURN NULL;
END
$$;

CREATE TRIGGER revocations_notify AFTER INSERT ON revocations
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_revocation();
