-- The event bus: turns get a table of their own, the outbox holds only records for the bus
-- (turn.Outbox), dead letters are kept per bus record, and the outbox relay holds a lease.
-- postgres/migrations/00002_bus.sql mirrors it.

-- +goose Up
-- One row per accepted turn; id is the event id of the user message that started it. A turn
-- is 'pending' until a terminal event of it is appended. Done rows stay, so that a turn the
-- bus delivers twice is seen as finished; they go with their session.
CREATE TABLE turns (
    id         TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    tenant     TEXT NOT NULL,
    persona_id TEXT NOT NULL DEFAULT '',
    seq        INTEGER NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    created_at INTEGER NOT NULL
) STRICT;

-- Pending turns in acceptance order: created_at, then seq within a session.
CREATE INDEX turns_pending ON turns (created_at, seq, id) WHERE status = 'pending';
CREATE INDEX turns_session ON turns (session_id);

-- Accepted turns were outbox rows with dedupe_key 'turn:<id>'; those of deleted sessions
-- are left behind.
INSERT INTO turns (id, session_id, tenant, persona_id, seq, status, created_at)
SELECT substr(o.dedupe_key, 6), s.id, json_extract(o.payload, '$.tenant'),
       coalesce(json_extract(o.payload, '$.persona_id'), ''), json_extract(o.payload, '$.seq'),
       CASE o.status WHEN 'done' THEN 'done' ELSE 'pending' END, o.created_at
FROM outbox o JOIN sessions s ON s.id = json_extract(o.payload, '$.session_id')
WHERE o.topic = 'conversation.inbound' AND o.dedupe_key LIKE 'turn:%'
ORDER BY o.id;

-- The outbox again, without the turns and with AUTOINCREMENT: records are deleted once
-- sent, and ids must keep increasing even when the table runs empty.
CREATE TABLE outbox_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    topic           TEXT NOT NULL,
    key             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    headers         TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    dedupe_key      TEXT UNIQUE,
    created_at      INTEGER NOT NULL
) STRICT;

INSERT INTO outbox_new
SELECT * FROM outbox
WHERE NOT (topic = 'conversation.inbound' AND coalesce(dedupe_key, '') LIKE 'turn:%')
ORDER BY id;

DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;

-- Records a consumer could not handle, once per (topic, partition, offset). key and payload
-- are the raw bytes of the record.
CREATE TABLE dlq (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    "offset"   INTEGER NOT NULL,
    key        BLOB NOT NULL DEFAULT x'',
    payload    BLOB NOT NULL,
    headers    TEXT NOT NULL DEFAULT '{}',
    error      TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX dlq_record ON dlq (topic, partition, "offset");
CREATE INDEX dlq_topic ON dlq (topic, id);

-- Named leases, such as the outbox relay's.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

-- +goose Down
DROP TABLE leases;
DROP TABLE dlq;

-- Before, the outbox held only turns and nothing relayed it: unsent bus records go.
DELETE FROM outbox WHERE dedupe_key IS NULL;
INSERT INTO outbox (topic, key, payload, status, dedupe_key, created_at)
SELECT 'conversation.inbound', session_id,
       json_object('turn_id', id, 'session_id', session_id, 'tenant', tenant, 'persona_id', persona_id, 'seq', seq),
       status, 'turn:' || id, created_at
FROM turns ORDER BY created_at, seq, id;
CREATE INDEX outbox_topic_status ON outbox (topic, status, id);

DROP TABLE turns;
