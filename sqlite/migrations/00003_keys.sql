-- API keys (turn.Keys) and the token usage ledger (turn.Ledger).
-- postgres/migrations/00003_keys.sql mirrors it.

-- +goose Up
-- One row per API key; hash is a salted hash of the key's secret, never the secret. scopes
-- is a JSON array of strings. A revoked key stays, with revoked_at set.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    label        TEXT NOT NULL DEFAULT '',
    scopes       TEXT NOT NULL DEFAULT '[]',
    hash         TEXT NOT NULL,
    created_by   TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;

-- Listing: a tenant's keys, newest first.
CREATE INDEX api_keys_tenant_created ON api_keys (tenant, created_at DESC, id DESC);

-- Token budget counters, one per tenant (persona '') or persona and UTC day ('2006-01-02'):
-- tokens reserved by calls in flight and spent by calls done.
CREATE TABLE usage_ledger (
    tenant     TEXT NOT NULL,
    persona    TEXT NOT NULL DEFAULT '',
    day        TEXT NOT NULL,
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    spent      INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0),
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, persona, day)
) STRICT;

-- +goose Down
DROP TABLE usage_ledger;
DROP TABLE api_keys;
