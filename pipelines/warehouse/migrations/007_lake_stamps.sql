-- A lake mark that stands for changes to the jobs' stamps alone (synced_at, deleted_at: jobs
-- listed again without a new version, marked deleted, or no longer deleted): the partition's
-- file is then rewritten by replacing those two columns (pipelines/warehouse/lake_splice.py),
-- the other columns' bytes kept. Any other mark of the partition sets it false; marks made
-- before this column existed are whole.
ALTER TABLE lake_dirty ADD COLUMN IF NOT EXISTS stamps_only BOOLEAN DEFAULT false;
