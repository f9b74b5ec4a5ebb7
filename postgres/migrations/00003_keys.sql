-- API keys (turn.Keys) and the token usage ledger (turn.Ledger).
-- sqlite/migrations/00003_keys.sql mirrors it.

-- +goose Up
-- One row per API key; hash is a salted hash of the key's secret, never the secret. scopes
-- is a JSON array of strings. A revoked key stays, with revoked_at set.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    tenant       text NOT NULL,
    label        text NOT NULL DEFAULT '',
    scopes       jsonb NOT NULL DEFAULT '[]',
    hash         text NOT NULL,
    created_by   text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- Listing: a tenant's keys, newest first.
CREATE INDEX api_keys_tenant_created ON api_keys (tenant, created_at DESC, id DESC);

-- Token budget counters, one per tenant (persona '') or persona and UTC day ('2006-01-02'):
-- tokens reserved by calls in flight and spent by calls done. Reservations check the limit
-- in the statement that makes them (INSERT … ON CONFLICT DO UPDATE … WHERE), under the
-- row's lock, so replicas sharing the database never reserve past it.
CREATE TABLE usage_ledger (
    tenant     text NOT NULL,
    persona    text NOT NULL DEFAULT '',
    day        text NOT NULL,
    reserved   bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    spent      bigint NOT NULL DEFAULT 0 CHECK (spent >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, persona, day)
);

-- +goose Down
DROP TABLE usage_ledger;
DROP TABLE api_keys;
