-- Indexes that tansu 0.6's sqlite storage lacks, applied to its database file right after the
-- broker has created its tables (tansu runs its DDL before it accepts connections), at every start
-- of a tansu that this project runs: `./dev` (up, broker, test, bench, chaos, fuzz) and
-- test-support's `OwnBroker`. Idempotent, so a restart on the same file costs nothing.
--
-- header: tansu-storage 0.6.0 creates it (ddl/040-header.sql) with no key and no index, and serves
-- a fetch with one header query per fetched record (sql/header_fetch.sql, `... and r.offset_id =
-- $4`): without this index each of those is a full scan of every header ever written, so fetching
-- slows down as the log grows and starves appends. The same columns are the foreign key to
-- `record`, whose cascading deletes (retention, topic deletion) scan `header` per record without it.
create index if not exists header_by_record on header (topition, offset_id);

-- watermark: one row per partition of every topic, with no index on the partition it belongs to;
-- every produce and every partition of every fetch reads its partition's row (sql/watermark_select
-- and its variants) with a scan of the whole table, which grows with the topics and partitions
-- the broker holds (the tests' broker: a topic per test).
create index if not exists watermark_by_topition on watermark (topition);
