-- How a post's body is meant to be rendered: the `format` of post.published, schema version 2.
--
-- Version 1 events have no format and are upcast to 'plain' when decoded (events/src/upcast.rs):
-- contract v1 stores and shows a body exactly as sent, so every post it made is plain text.
-- The DEFAULT says the same for rows projected before this column existed. The projector writes
-- the event's format on every insert. Contract v1's reads do not show this column.
ALTER TABLE posts
    ADD COLUMN format text NOT NULL DEFAULT 'plain' CHECK (format IN ('plain', 'markdown'));
