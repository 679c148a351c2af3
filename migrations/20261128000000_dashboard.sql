-- The dashboard's detection latency reads the live incidents recorded lately.
CREATE INDEX incidents_created_at_idx ON incidents (created_at);
