-- What the query API's status page (GET /status) shows of each partition, kept beside its
-- offset so that a look costs one small read, never a count over decisions or dead_letters
-- (which grow with every command).
--
-- The projector adds a batch's counts in the same statement that advances next_offset, so
-- they are exactly the decisions and dead letters of the offsets below next_offset: a batch
-- that rolls back adds nothing, a duplicate (a command already decided) is not counted.
ALTER TABLE projector_offsets
    -- The partition's log end (the offset its next record will get) as the projector last
    -- heard it from the broker, when it last committed; never below next_offset. NULL until a
    -- projector that knows it has committed. The lag is log_end_offset - next_offset.
    ADD COLUMN log_end_offset bigint CHECK (log_end_offset >= 0),
    ADD COLUMN applied bigint NOT NULL DEFAULT 0 CHECK (applied >= 0),
    -- Rejections by reason: one column per reason of decisions.reason.
    ADD COLUMN rejected_version_conflict bigint NOT NULL DEFAULT 0
        CHECK (rejected_version_conflict >= 0),
    ADD COLUMN rejected_not_found bigint NOT NULL DEFAULT 0 CHECK (rejected_not_found >= 0),
    ADD COLUMN rejected_already_exists bigint NOT NULL DEFAULT 0
        CHECK (rejected_already_exists >= 0),
    ADD COLUMN rejected_idempotency_key_reused bigint NOT NULL DEFAULT 0
        CHECK (rejected_idempotency_key_reused >= 0),
    ADD COLUMN dead_letters bigint NOT NULL DEFAULT 0 CHECK (dead_letters >= 0);

-- What was projected before this migration, counted once. decisions has no topic column: a
-- read model holds one topic's projection, so its decisions are counted for that topic; in a
-- database whose offsets name several topics they cannot be told apart, and are left at 0.
UPDATE projector_offsets AS o
SET applied = c.applied,
    rejected_version_conflict = c.version_conflict,
    rejected_not_found = c.not_found,
    rejected_already_exists = c.already_exists,
    rejected_idempotency_key_reused = c.idempotency_key_reused
FROM (
    SELECT kafka_partition,
           count(*) FILTER (WHERE status = 'applied') AS applied,
           count(*) FILTER (WHERE reason = 'version_conflict') AS version_conflict,
           count(*) FILTER (WHERE reason = 'not_found') AS not_found,
           count(*) FILTER (WHERE reason = 'already_exists') AS already_exists,
           count(*) FILTER (WHERE reason = 'idempotency_key_reused') AS idempotency_key_reused
    FROM decisions
    GROUP BY kafka_partition
) AS c
WHERE o.partition = c.kafka_partition
  AND (SELECT count(DISTINCT topic) FROM projector_offsets) = 1;

UPDATE projector_offsets AS o
SET dead_letters = d.dead_letters
FROM (
    SELECT topic, partition, count(*) AS dead_letters FROM dead_letters GROUP BY topic, partition
) AS d
WHERE o.topic = d.topic AND o.partition = d.partition;
