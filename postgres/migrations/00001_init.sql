-- The schema of DESIGN.md §4 in PostgreSQL types. Times are timestamptz at microsecond
-- precision; payloads are jsonb. sqlite/migrations mirrors it.

-- +goose Up
CREATE TABLE sessions (
    id         uuid PRIMARY KEY,
    tenant     text NOT NULL,
    persona_id text NOT NULL DEFAULT '',
    subject    text NOT NULL DEFAULT '',
    title      text NOT NULL DEFAULT '',
    metadata   jsonb NOT NULL DEFAULT '{}',
    -- last_seq is the seq of the session's last event. Writers take the row lock by
    -- incrementing it, which orders them per session across processes.
    last_seq   bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Listing: a tenant's sessions, most recently updated first, keyset-paged by (updated_at, id).
CREATE INDEX sessions_tenant_updated ON sessions (tenant, updated_at DESC, id DESC);

-- Append-only: one row per persisted event; payload is the whole sa01-v1 envelope.
CREATE TABLE session_events (
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    event_id   uuid NOT NULL UNIQUE,
    type       text NOT NULL,
    role       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (session_id, seq)
);

-- Transactional outbox. An accepted turn is a row with topic 'conversation.inbound',
-- key = session id and dedupe_key 'turn:<user event id>'; it stays 'pending' until a
-- terminal event of the turn is appended.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           text NOT NULL,
    key             text NOT NULL,
    payload         jsonb NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    dedupe_key      text UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Only pending rows are ever scanned; done rows stay out of the index.
CREATE INDEX outbox_pending ON outbox (topic, id) WHERE status = 'pending';

CREATE TABLE idempotency_keys (
    tenant       text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    session_id   uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    event_id     uuid NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant, key)
);

CREATE INDEX idempotency_keys_session ON idempotency_keys (session_id);

-- Records a consumer could not handle. payload is the raw record value: a poison record
-- need not be valid JSON.
CREATE TABLE dlq (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      text NOT NULL,
    key        text NOT NULL DEFAULT '',
    payload    bytea NOT NULL,
    headers    jsonb NOT NULL DEFAULT '{}',
    error      text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dlq_topic ON dlq (topic, id);

-- +goose Down
DROP TABLE dlq;
DROP TABLE idempotency_keys;
DROP TABLE outbox;
DROP TABLE session_events;
DROP TABLE sessions;
