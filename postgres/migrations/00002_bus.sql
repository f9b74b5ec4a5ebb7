-- The event bus: turns get a table of their own, the outbox holds only records for the bus
-- (turn.Outbox), dead letters are kept per bus record, and the outbox relay holds a lease.
-- sqlite/migrations/00002_bus.sql mirrors it.

-- +goose Up
-- One row per accepted turn; id is the event id of the user message that started it. A turn
-- is 'pending' until a terminal event of it is appended. Done rows stay, so that a turn the
-- bus delivers twice is seen as finished; they go with their session.
CREATE TABLE turns (
    id         uuid PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    tenant     text NOT NULL,
    persona_id text NOT NULL DEFAULT '',
    seq        bigint NOT NULL,
    status     text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    created_at timestamptz NOT NULL
);

-- Pending turns in acceptance order: created_at (which never moves back within a session),
-- then seq within a session.
CREATE INDEX turns_pending ON turns (created_at, seq, id) WHERE status = 'pending';
CREATE INDEX turns_session ON turns (session_id);

-- Accepted turns were outbox rows with dedupe_key 'turn:<id>'; those of deleted sessions
-- are left behind.
INSERT INTO turns (id, session_id, tenant, persona_id, seq, status, created_at)
SELECT substr(o.dedupe_key, 6)::uuid, s.id, o.payload->>'tenant', coalesce(o.payload->>'persona_id', ''),
       (o.payload->>'seq')::bigint, CASE o.status WHEN 'done' THEN 'done' ELSE 'pending' END, o.created_at
FROM outbox o JOIN sessions s ON s.id = (o.payload->>'session_id')::uuid
WHERE o.topic = 'conversation.inbound' AND o.dedupe_key LIKE 'turn:%'
ORDER BY o.id;

DELETE FROM outbox WHERE topic = 'conversation.inbound' AND dedupe_key LIKE 'turn:%';

-- Every row left is unsent: the relay reads them by id and deletes them once sent.
DROP INDEX outbox_pending;

-- Dead letters, once per (topic, partition, offset); key holds the raw bytes of the record
-- key. Rows from before (no version wrote any) get distinct negative offsets.
ALTER TABLE dlq
    ALTER COLUMN key DROP DEFAULT,
    ALTER COLUMN key TYPE bytea USING convert_to(key, 'UTF8'),
    ALTER COLUMN key SET DEFAULT '\x'::bytea,
    ADD COLUMN partition integer NOT NULL DEFAULT -1,
    ADD COLUMN "offset" bigint NOT NULL DEFAULT -1;
UPDATE dlq SET "offset" = -id;
ALTER TABLE dlq ALTER COLUMN partition DROP DEFAULT, ALTER COLUMN "offset" DROP DEFAULT;
CREATE UNIQUE INDEX dlq_record ON dlq (topic, partition, "offset");

-- Named leases, such as the outbox relay's. expires_at is the database's clock, which
-- every replica reads.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE leases;

DROP INDEX dlq_record;
ALTER TABLE dlq
    DROP COLUMN "offset",
    DROP COLUMN partition,
    ALTER COLUMN key DROP DEFAULT,
    ALTER COLUMN key TYPE text USING encode(key, 'escape'),
    ALTER COLUMN key SET DEFAULT '';

-- Before, the outbox held only turns and nothing relayed it: unsent bus records go.
DELETE FROM outbox WHERE dedupe_key IS NULL;
INSERT INTO outbox (topic, key, payload, status, dedupe_key, created_at)
SELECT 'conversation.inbound', session_id::text,
       jsonb_build_object('turn_id', id, 'session_id', session_id, 'tenant', tenant, 'persona_id', persona_id, 'seq', seq),
       status, 'turn:' || id, created_at
FROM turns ORDER BY created_at, seq, id;
CREATE INDEX outbox_pending ON outbox (topic, id) WHERE status = 'pending';

DROP TABLE turns;
