-- The per-aggregate event history: what GET /v1/streams/{aggregate_id}/events answers.
--
-- One row per APPLIED event, written by the projector in the same transaction that applies it,
-- so a stream never shows an event the read models do not reflect, nor the other way round.
-- Rejected events are not history (GET /v1/commands/{id} tells about them), and a retried
-- append of a command already decided adds nothing. Like every table here it is derived from
-- the log: a replay writes the same rows.
CREATE TABLE aggregate_events (
    -- The user or post the event belongs to (a post's events are not in its author's stream).
    aggregate_id    uuid        NOT NULL,
    -- The aggregate's version after this event: 1 for the creation, then +1 per applied event,
    -- so a stream's versions have no gaps.
    version         bigint      NOT NULL CHECK (version >= 1),
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    aggregate_type  text        NOT NULL CHECK (aggregate_type IN ('user', 'post')),
    -- The envelope's accepted_at (when the command API accepted the command), never the time
    -- of projection, so it is the same on replay.
    occurred_at     timestamptz NOT NULL,
    -- The payload in the NEWEST schema version of its type, as the projector decoded (and
    -- upcast) it: readers never need to know older shapes. Deletions have {}.
    data            jsonb       NOT NULL,
    -- Where the event sits in the log, to trace a row back to its record.
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    -- Also the index of the stream read: WHERE aggregate_id = $1 AND version >= $2 ORDER BY version.
    PRIMARY KEY (aggregate_id, version)
);
