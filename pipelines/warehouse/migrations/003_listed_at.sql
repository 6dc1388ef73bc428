-- When the window was listed, by the source's clock: a creation day listed completely at
-- T holds every change before T, so change capture can start there (listed_days()).
ALTER TABLE sync_windows ADD COLUMN IF NOT EXISTS listed_at TIMESTAMPTZ;
