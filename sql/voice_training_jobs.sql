-- analytics.voice_training_jobs (view): one row per voice-training job the source still
-- lists, at its newest known version (deleted jobs, those with deleted_at set in the
-- warehouse, are left out).
-- Columns: every column of the contract table voice_training_jobs, same names and types
-- (project_id, job_id, job_type, ..., extra, synced_at); deleted_at is dropped because it is
-- always NULL here, and the warehouse's bookkeeping of the current version (valid_from,
-- observed_at, row_hash: see analytics.voice_training_job_history) as well.
-- phone and the URL columns are shown as stored: masked at ingestion under the default
-- personal-data policy. Model refresh refuses to run over unmasked values unless told the
-- raw policy is intended (see pipelines/models.py).
CREATE OR REPLACE VIEW analytics.voice_training_jobs AS
SELECT COLUMNS(lambda c: c NOT IN ('deleted_at', 'valid_from', 'observed_at', 'row_hash'))
FROM main.voice_training_jobs
WHERE analytics.still_listed(deleted_at);
