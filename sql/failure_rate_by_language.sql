-- analytics.failure_rate_by_language (table): one row per language over all projects; jobs
-- without a language form their own group, shown as NULL. Deleted jobs are left out.
-- Columns:
--   language     VARCHAR  the group,
--   total_jobs   BIGINT   jobs in the group,
--   succeeded    BIGINT   jobs in state SUCCEED,
--   failed       BIGINT   jobs in state FAILED,
--   in_progress  BIGINT   jobs in any other state (they may still finish either way),
--   failure_rate DOUBLE   failed / (succeeded + failed); NULL when no job has finished,
--   waiting_on_user         BIGINT  of in_progress, jobs waiting on the user (a *_FAILED state
--                                   other than FAILED, USER_REVIEW_REJECT, USER_RESULT_REVIEW;
--                                   analytics.waits_on in sql/_macros.sql),
--   in_progress_by_service  BIGINT  of in_progress, jobs the service is working on (any other
--                                   state); the two add up to in_progress.
CREATE OR REPLACE TABLE analytics.failure_rate_by_language AS
SELECT *
FROM analytics.failure_rate_by(analytics.job_outcomes, language)
ORDER BY total_jobs DESC, language NULLS LAST;
