-- analytics.voice_training_job_transitions (view): one row per observed state change of a
-- job the source still lists (deleted jobs left out).
-- Columns:
--   project_id  VARCHAR      project the job belongs to,
--   job_id      VARCHAR      the job,
--   from_state  VARCHAR      state before the change (NULL for the first observed version),
--   to_state    VARCHAR      state after the change,
--   changed_at  TIMESTAMPTZ  when the new state took effect.
CREATE OR REPLACE VIEW analytics.voice_training_job_transitions AS
SELECT t.project_id, t.job_id, t.from_state, t.to_state, t.changed_at
FROM main.voice_training_job_transitions AS t
WHERE NOT EXISTS (
    SELECT 1
    FROM main.voice_training_jobs AS d
    WHERE d.deleted_at IS NOT NULL
      AND d.project_id = t.project_id
      AND d.job_id = t.job_id
);
