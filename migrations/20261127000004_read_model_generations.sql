-- The catalogue of read-model generations, kept by `projector rebuild`.
--
-- A generation is a whole read model (every table of these migrations) in a schema of its own,
-- projected from the log: `public` is the one the services use today, `generation_<n>` are
-- rebuilds. The catalogue is not part of any generation: it lives in `public` only, whichever
-- generation is active. These migrations also run inside each generation's schema (with that
-- schema alone on the search_path), so this one does nothing there.
DO $$
BEGIN
    IF current_schema() = 'public' THEN
        CREATE TABLE public.read_model_generations (
            -- The schema holding the generation.
            name         text PRIMARY KEY,
            -- building: being projected (a rebuild resumes it); ready: verified equal to the
            -- live read model; active: the one the services use; retired: was active;
            -- failed: differed from the live read model when verified (kept for inspection).
            state        text        NOT NULL
                CHECK (state IN ('building', 'ready', 'active', 'retired', 'failed')),
            created_at   timestamptz NOT NULL DEFAULT now(),
            -- When it was verified (ready or failed).
            completed_at timestamptz,
            -- Events projected into it, as of its last rebuild run; NULL for the live one,
            -- whose count is its projector_offsets.
            events       bigint CHECK (events >= 0)
        );
        INSERT INTO public.read_model_generations (name, state) VALUES ('public', 'active');
    END IF;
END
$$;
