-- analytics.weekly_job_stats (table): one row per creation week (UTC; weeks start on
-- Monday) and project_id, counting the jobs created in that period. Deleted jobs are left out.
-- Columns:
--   week_start          DATE     first day of the period (UTC),
--   project_id          VARCHAR  the project,
--   jobs_created        BIGINT   jobs created in the period,
--   succeeded           BIGINT   of those, jobs now in state SUCCEED,
--   failed              BIGINT   of those, jobs now in state FAILED,
--   failure_rate        DOUBLE   failed / (succeeded + failed); NULL when none has finished,
--   p50_finish_seconds  DOUBLE   median seconds from creation to the terminal state, over the
--                                finished jobs (NULL when none has finished),
--   p90_finish_seconds  DOUBLE   90th percentile of the same (linear interpolation).
CREATE OR REPLACE TABLE analytics.weekly_job_stats AS
SELECT * RENAME (period_start AS week_start)
FROM analytics.job_stats_by(analytics.job_outcomes, 'week')
ORDER BY week_start, project_id;
