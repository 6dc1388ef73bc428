-- The content columns a splice mark's partition changed in place besides the stamps: new versions
-- of jobs the partition holds already, its jobs still the same jobs (none appended, none moved in
-- or out by a changed creation day). The lake export splices these columns into the partition's
-- file with the stamps (pipelines/warehouse/lake_splice.py). A mark with stamps_only true is a
-- splice mark; NULL or an empty list here means the stamps alone. A whole mark (stamps_only
-- false) ignores it.
ALTER TABLE lake_dirty ADD COLUMN IF NOT EXISTS in_place VARCHAR[];
