-- app._analyze_if_stale(p_rows bigint, p_tables regclass[]): before a refresh of p_rows users
-- reads p_tables, ANALYZE those of them that are not empty now, were analyzed once
-- (pg_class.reltuples not -1), and whose statistics were taken when they held fewer rows
-- than this one batch (reltuples below p_rows) or hold no column statistics (pg_stats) at
-- all: an ANALYZE whose transaction rolled back leaves its row count in pg_class but not its
-- column statistics. Nothing for batches under 1,000 rows or for empty tables.
-- Why: a table analyzed while it held no live rows (emptied, rolled back, or analyzed right
-- after the migrations) is planned as holding none, and a bulk load then made each per-user
-- lookup of the refresh triggers walk the whole tenancy through the smallest index that
-- starts with tenancy_id: quadratic. 10,000 users then their 10,000 emails in one
-- transaction (perf/bench_bulk_load.py): 0.4 s + 37 s without this, 0.9 s + 0.6 s with it
-- (embedded). Tables never analyzed are left alone: the planner sizes them by their pages,
-- and the refreshes' key joins did well there (analyzing them cost 0.55 s a load).
-- ANALYZE counts the rows of the calling transaction and runs as the tables' owner (security
-- definer). SKIP_LOCKED: a table another session analyzes or vacuums is skipped, not waited
-- for; the lock it takes (SHARE UPDATE EXCLUSIVE, held to the end of the transaction) does
-- not block readers or writers. Its warning when it skips is kept from the client.
create or replace function app._analyze_if_stale(p_rows bigint, p_tables regclass[])
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set client_min_messages = error
as $$
declare
    v_table regclass;
begin
    if p_rows < 1000 then
        return;
    end if;
    for v_table in
        select c.oid::regclass
        from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        where c.oid = any(p_tables) and c.reltuples >= 0 and pg_relation_size(c.oid) > 0
          and (c.reltuples < p_rows
               or not exists (select 1 from pg_stats s where s.schemaname = n.nspname and s.tablename = c.relname))
        order by c.oid
    loop
        execute format('analyze (skip_locked) %s', v_table);
    end loop;
end;
$$;

comment on function app._analyze_if_stale(bigint, regclass[]) is
    'ANALYZE the given tables whose statistics predate a batch of p_rows rows (1,000 or more), before a bulk refresh reads them.';
