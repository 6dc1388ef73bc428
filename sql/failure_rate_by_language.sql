-- analytics.failure_rate_by_language (table): one row per language over all projects; jobs
-- without a language form their own group, shown as NULL. Deleted jobs are left out.
-- Columns:
--   language     VARCHAR  the group,
--   total_jobs   BIGINT   jobs in the group,
--   succeeded    BIGINT   jobs in state SUCCEED,
--   failed       BIGINT   jobs in state FAILED,
--   in_progress  BIGINT   jobs in any other state (they may still finish either way),
--   failure_rate DOUBLE   failed / (succeeded + failed); NULL when no job has finished.
CREATE OR REPLACE TABLE analytics.failure_rate_by_language AS
WITH counts AS (
    SELECT
        language,
        count(*) AS total_jobs,
        count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,
        count(*) FILTER (WHERE outcome = 'failed') AS failed,
        count(*) FILTER (WHERE outcome = 'in_progress') AS in_progress
    FROM analytics.job_outcomes
    GROUP BY language
)
SELECT
    *,
    CASE WHEN succeeded + failed > 0 THEN failed::DOUBLE / (succeeded + failed) END AS failure_rate
FROM counts
ORDER BY total_jobs DESC, language NULLS LAST;
