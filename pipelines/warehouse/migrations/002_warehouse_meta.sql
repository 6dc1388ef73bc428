-- Facts about the file itself (for now: which algorithm produced history.row_hash).
CREATE TABLE IF NOT EXISTS warehouse_meta (key VARCHAR, value VARCHAR, updated_at TIMESTAMPTZ);
