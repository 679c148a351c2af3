-- The dashboard's detection latency reads the live incidents recorded lately.
CREATE INDEX incidents_created_at_idx ON incidents (created_at);
-- The overview counts each service's incidents still being worked.
CREATE INDEX incidents_open_service_idx ON incidents (service_id)
    WHERE status IN ('OPEN', 'IN_PROGRESS');
