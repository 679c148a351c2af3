-- Indexes for reading archived samples and rollups without a service filter, and for listing
-- services by department or first sight.

CREATE INDEX metric_samples_metric_idx ON metric_samples (metric_type, recorded_at);
CREATE INDEX metric_rollups_minute_idx ON metric_rollups (minute);
CREATE INDEX metric_rollups_metric_idx ON metric_rollups (metric_type, minute);
CREATE INDEX services_department_idx ON services (department_id, id);
CREATE INDEX services_first_seen_idx ON services (first_seen_at, id);
