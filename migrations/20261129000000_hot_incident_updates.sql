-- An open incident's row is rewritten each time its `updated` transition is recorded: counts,
-- last value, peak and sample sequence. None of those columns is indexed any more, and pages
-- keep room for a new row version, so Postgres can update the row in place (a HOT update)
-- without touching the table's dozen indexes, the trigram index among them. That was most of
-- the cost of recording updates, and what stalled openings queued behind them.
--
-- The evaluator's start-up query for sequence watermarks (`last_sample_seq > floor`) now
-- reads the table instead of this index; it runs once per partition taken over.
DROP INDEX incidents_last_sample_seq_idx;
-- New pages only; existing rows get the room as they move.
ALTER TABLE incidents SET (fillfactor = 70);
