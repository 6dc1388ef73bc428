-- analytics.top_failure_codes (table): one row per job_failed_code among jobs in state FAILED
-- (a failure without a code is its own group, shown as NULL), over all projects. Deleted jobs
-- are left out.
-- Columns:
--   job_failed_code     VARCHAR      the code,
--   most_common_reason  VARCHAR      the job_failed_reason seen most often with this code (ties:
--                                    alphabetically first); NULL when no job gave a reason,
--   jobs                BIGINT       failed jobs with this code,
--   share_of_failures   DOUBLE       jobs / all failed jobs (the column sums to 1),
--   last_seen           TIMESTAMPTZ  newest lastupdate_time among those jobs.
CREATE OR REPLACE TABLE analytics.top_failure_codes AS
WITH failed AS (
    SELECT job_failed_code, job_failed_reason, lastupdate_time
    FROM analytics.job_outcomes
    WHERE outcome = 'failed'
),
reasons AS (
    SELECT
        job_failed_code,
        job_failed_reason,
        row_number() OVER (
            PARTITION BY job_failed_code
            ORDER BY count(*) DESC, job_failed_reason
        ) AS rank
    FROM failed
    WHERE job_failed_reason IS NOT NULL
    GROUP BY job_failed_code, job_failed_reason
),
codes AS (
    SELECT job_failed_code, count(*) AS jobs, max(lastupdate_time) AS last_seen
    FROM failed
    GROUP BY job_failed_code
)
SELECT
    c.job_failed_code,
    r.job_failed_reason AS most_common_reason,
    c.jobs,
    c.jobs::DOUBLE / (SELECT count(*) FROM failed) AS share_of_failures,
    c.last_seen
FROM codes AS c
LEFT JOIN reasons AS r
    ON r.job_failed_code IS NOT DISTINCT FROM c.job_failed_code AND r.rank = 1
ORDER BY c.jobs DESC, c.job_failed_code NULLS LAST;
