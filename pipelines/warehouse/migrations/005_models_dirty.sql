-- The creation days (UTC) of each project whose jobs changed in a way the SQL models read:
-- a job appended, a new version of one, a job marked deleted or listed again. Marked in the
-- transaction that writes the change; a refresh rebuilds the rows of analytics.job_outcomes
-- of those days (see pipelines/models.py) and clears the marks in its own transaction.
-- A NULL create_day stands for the jobs without a create_time (the lake has no file for them,
-- but the models count them).
CREATE TABLE IF NOT EXISTS models_dirty (project_id VARCHAR, create_day DATE);
