-- analytics.failure_rate_by_job_type (table): one row per job_type over all projects; jobs
-- without a job_type form their own group, shown as NULL. Deleted jobs are left out.
-- Columns:
--   job_type     VARCHAR  the group,
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
CREATE OR REPLACE TABLE analytics.failure_rate_by_job_type AS
SELECT *
FROM analytics.failure_rate_by(analytics.job_outcomes, job_type)
ORDER BY total_jobs DESC, job_type NULLS LAST;
