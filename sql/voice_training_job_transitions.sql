-- analytics.voice_training_job_transitions (view): one row per observed state change of a
-- job the source still lists (deleted jobs left out).
-- Columns:
--   project_id  VARCHAR      project the job belongs to,
--   job_id      VARCHAR      the job,
--   from_state  VARCHAR      state before the change (NULL for the first observed version),
--   to_state    VARCHAR      state after the change,
--   changed_at  TIMESTAMPTZ  when the new state took effect.
CREATE OR REPLACE VIEW analytics.voice_training_job_transitions AS
WITH changes AS (FROM main.voice_training_job_transitions), jobs AS (FROM main.voice_training_jobs)
SELECT project_id, job_id, from_state, to_state, changed_at
FROM analytics.without_deleted_jobs(changes, jobs);
