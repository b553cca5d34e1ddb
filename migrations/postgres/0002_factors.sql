-- Schema 2 (PostgreSQL): enrolled factors with their sealed secrets, TOTP
-- last-used steps, recovery codes, and short-lived transactions.
--
-- Released migrations are never edited: a change is a new file NNNN_name.sql,
-- listed in src/store/migrate.rs with the same number for every backend.

-- Enrolled factors. `profile` is JSON text. A secret is stored only sealed
-- (AES-256-GCM, see src/factors/sealing.rs): the id of the sealing key and
-- nonce + ciphertext + tag; both or neither are present. `seq` orders a
-- user's factors by insertion among those created in the same second.
CREATE TABLE factors (
    id            TEXT   PRIMARY KEY,
    seq           BIGINT GENERATED ALWAYS AS IDENTITY,
    user_id       TEXT   NOT NULL,
    factor_type   TEXT   NOT NULL,
    provider      TEXT   NOT NULL,
    status        TEXT   NOT NULL CHECK (status IN ('PENDING_ACTIVATION', 'ACTIVE')),
    profile       TEXT   NOT NULL,
    secret_key_id TEXT,
    secret_blob   BYTEA,
    created       BIGINT NOT NULL,
    last_updated  BIGINT NOT NULL,
    CONSTRAINT factors_secret_shape CHECK ((secret_key_id IS NULL) = (secret_blob IS NULL))
);
CREATE INDEX factors_user ON factors (user_id);
CREATE INDEX factors_secret_key ON factors (secret_key_id) WHERE secret_key_id IS NOT NULL;

-- The latest TOTP time step used per factor (replay protection). No foreign
-- key: factors provisioned by the users file are not stored in `factors`.
CREATE TABLE totp_steps (
    factor_id TEXT   PRIMARY KEY,
    last_step BIGINT NOT NULL
);

-- Unused recovery codes, as hashes; a used code is deleted.
CREATE TABLE recovery_codes (
    user_id TEXT   NOT NULL,
    hash    TEXT   NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (user_id, hash)
);

-- Authentication transactions, one-time tokens, OTP challenges and push
-- transactions. `id` is what callers look them up by (a hash for bearer
-- tokens), `data` is JSON text, `version` is bumped by every update
-- (compare and set).
CREATE TABLE transactions (
    id         TEXT   PRIMARY KEY,
    kind       TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    data       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX transactions_expiry ON transactions (expires_at);
