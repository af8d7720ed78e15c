-- Read models, decisions and projector bookkeeping.
--
-- Everything here is derived from the Kafka log by the projector and can be rebuilt from it.
-- Rows are never hard-deleted: a deleted user or post keeps its row (with deleted_at set) so that
-- later events against it are decided the same way on every replay.

-- Users, as GET /v1/users/{id} shows them.
CREATE TABLE users (
    id           uuid PRIMARY KEY,
    display_name text        NOT NULL,
    bio          text,
    -- Live (not deleted) posts of this user, maintained by the projector.
    post_count   bigint      NOT NULL DEFAULT 0 CHECK (post_count >= 0),
    -- 1 on registration, +1 for every applied event of this user.
    version      bigint      NOT NULL CHECK (version >= 1),
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    deleted_at   timestamptz
);

-- Posts. created_at is the time the command API accepted the post, so it is the same on replay.
CREATE TABLE posts (
    id             uuid PRIMARY KEY,
    author_id      uuid        NOT NULL REFERENCES users (id),
    title          text        NOT NULL,
    body           text        NOT NULL,
    version        bigint      NOT NULL CHECK (version >= 1),
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    deleted_at     timestamptz,
    -- Set when the author is deleted: the post disappears with its author.
    author_deleted boolean     NOT NULL DEFAULT false
);

-- Keyset pagination, newest first, over visible posts only: (created_at, id) never changes, so a
-- cursor on it visits every item exactly once while other posts are inserted or deleted.
CREATE INDEX posts_feed ON posts (created_at DESC, id DESC)
    WHERE deleted_at IS NULL AND NOT author_deleted;
CREATE INDEX posts_by_author ON posts (author_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- One row per decided command: what GET /v1/commands/{id} answers.
CREATE TABLE decisions (
    command_id   uuid PRIMARY KEY,
    status       text        NOT NULL CHECK (status IN ('applied', 'rejected')),
    reason       text CHECK (reason IN ('version_conflict', 'not_found', 'already_exists', 'idempotency_key_reused')),
    aggregate_id uuid        NOT NULL,
    -- The aggregate's version after the event, for applied commands.
    version      bigint,
    event_id     uuid        NOT NULL,
    event_type   text        NOT NULL,
    kafka_partition integer  NOT NULL,
    kafka_offset bigint      NOT NULL,
    decided_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'applied') = (reason IS NULL)),
    CHECK ((status = 'applied') = (version IS NOT NULL))
);

-- Which command first used an Idempotency-Key in its scope (the path's user; nil for sign-ups).
-- A different command with the same key is rejected with idempotency_key_reused.
CREATE TABLE idempotency_keys (
    scope      uuid NOT NULL,
    key        text NOT NULL,
    command_id uuid NOT NULL,
    PRIMARY KEY (scope, key)
);

-- The projector's position in the log, advanced in the same transaction as the read models.
-- epoch fences instances: claiming a partition increments it, and a batch commits only if the
-- epoch it read at its claim is still current and next_offset is where the batch starts.
CREATE TABLE projector_offsets (
    topic       text    NOT NULL,
    partition   integer NOT NULL CHECK (partition >= 0),
    next_offset bigint  NOT NULL CHECK (next_offset >= 0),
    epoch       bigint  NOT NULL,
    owner       text    NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Records that could not be decoded. The partition moves on past them; nothing is dropped silently.
CREATE TABLE dead_letters (
    topic         text    NOT NULL,
    partition     integer NOT NULL,
    kafka_offset  bigint  NOT NULL,
    record_key    bytea,
    payload       bytea,
    headers       jsonb   NOT NULL DEFAULT '{}',
    error         text    NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, kafka_offset)
);
