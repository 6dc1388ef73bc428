-- analytics.job_outcomes (table): one row per job the source still lists, reduced to what the
-- aggregate models need: its outcome and, once it finished, how long it took.
-- Incremental: a sync's refresh rebuilds only the rows of the jobs that changed (see
-- pipelines/incremental.py); the table models read this table.
-- incremental_by: project_id, job_id, create_time
-- Columns:
--   project_id, job_id    VARCHAR      the job's key,
--   job_type, tag, language, state, job_failed_code, job_failed_reason
--                         VARCHAR      as in voice_training_jobs,
--   outcome               VARCHAR      'succeeded' (state SUCCEED), 'failed' (state FAILED),
--                                      'in_progress' (any other state, NULL included),
--   create_time, lastupdate_time
--                         TIMESTAMPTZ  as in voice_training_jobs,
--   finished_at           TIMESTAMPTZ  for finished jobs: valid_from of the job's first history
--                                      version in a terminal state (SUCCEED or FAILED); without
--                                      such a version, lastupdate_time. NULL while in progress,
--   finish_seconds        DOUBLE       finished_at - create_time in seconds (NULL while in
--                                      progress),
--   waits_on              VARCHAR      for a job in progress, the side that must act next:
--                                      'user' or 'service' (analytics.waits_on in
--                                      sql/_macros.sql says which states are which); NULL once
--                                      finished,
--   waiting_on_user       BOOLEAN      in progress and waiting on the user (a *_FAILED state
--                                      other than FAILED, USER_REVIEW_REJECT, USER_RESULT_REVIEW),
--   in_progress_by_service BOOLEAN     in progress and waiting on the service (any other
--                                      non-terminal state, NULL included); with waiting_on_user
--                                      it splits outcome 'in_progress' in two.
CREATE OR REPLACE TABLE analytics.job_outcomes AS
-- The first terminal version of a job is one of the versions a newer one replaced (a handful
-- of jobs) or its current version: the jobs row, whose valid_from the warehouse keeps beside
-- it (when its row_hash says it is a version of record; see analytics.voice_training_job_history).
-- Reading the history view instead aggregated a row per job (0.5 s of 1.1 at a million jobs);
-- reading analytics.voice_training_jobs, which leaves valid_from out, joined the jobs table
-- to itself for it (0.95 s at a million jobs, 0.38 s reading the table once).
WITH first_terminal_replaced AS (
    SELECT project_id, job_id, min(valid_from) AS finished_at
    FROM main.voice_training_job_past_versions
    WHERE analytics.is_terminal(state)
    GROUP BY project_id, job_id
),
jobs AS (
    SELECT
        j.project_id,
        j.job_id,
        j.job_type,
        j.tag,
        j.language,
        j.state,
        j.job_failed_code,
        j.job_failed_reason,
        CASE j.state
            WHEN 'SUCCEED' THEN 'succeeded'
            WHEN 'FAILED' THEN 'failed'
            ELSE 'in_progress'
        END AS outcome,
        j.create_time,
        j.lastupdate_time,
        CASE
            WHEN analytics.is_terminal(j.state)
                THEN coalesce(
                    least(ft.finished_at, CASE WHEN j.row_hash IS NOT NULL THEN j.valid_from END),
                    j.lastupdate_time
                )
        END AS finished_at,
        analytics.waits_on(j.state) AS waits_on
    FROM main.voice_training_jobs AS j
    LEFT JOIN first_terminal_replaced AS ft
        ON ft.project_id = j.project_id AND ft.job_id = j.job_id
    WHERE analytics.still_listed(j.deleted_at) AND analytics.in_refresh_scope(j.project_id, j.job_id, j.create_time)
)
SELECT
    * EXCLUDE (waits_on),
    epoch(finished_at) - epoch(create_time) AS finish_seconds,
    waits_on,
    waits_on IS NOT DISTINCT FROM 'user' AS waiting_on_user,
    waits_on IS NOT DISTINCT FROM 'service' AS in_progress_by_service
FROM jobs;
