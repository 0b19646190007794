-- 0026: billing.verify_ledger and pyglue.sync_status run with jit = off, as
-- billing.transactions does since 0022. On a server with JIT on (Debian's packages) their
-- cost estimates crossed jit_above_cost and every call compiled its query, for no gain:
-- - verify_ledger's planner sizes each history's fold (billing._item_points, a
--   set-returning function) at 1,000 rows, so a ledger of a few histories compiled: about
--   25-220 ms a call for a query that runs in under 1 ms (the test harness calls it after
--   every test: 15.8 s of JIT in one Debian run of the suite);
-- - sync_status (polled by the dashboard and `pyglue sync status`) compiled 6-30 ms a call.
-- The function files carry the same SET clause, which is all that changes (the drift test
-- compares the two).
-- depends: 0025_change_log

alter function billing.verify_ledger() set jit = off;
alter function pyglue.sync_status(uuid) set jit = off;
