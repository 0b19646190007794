-- 0022: billing.transactions runs with jit = off. Its query's cost estimate is far above
-- jit_above_cost, so on a server with JIT on (Debian's packages) every call compiled it:
-- 1-2 s a page instead of milliseconds. sql/functions/billing.transactions.sql carries the
-- same SET clause, which is all that changes (the drift test compares the two).
-- depends: 0021_telemetry

alter function billing.transactions(uuid, text, text, timestamptz, timestamptz, integer, timestamptz, text)
    set jit = off;
