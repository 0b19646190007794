-- pyglue.purge_cache_entries(p_namespace text default null): delete the expired rows of
-- pyglue.cache_entries (of one namespace, or all). Cached functions call it on every miss,
-- so the table holds at most the keys used within one TTL; it can also run from anywhere.
-- Returns the number of rows deleted. Takes row locks on the deleted rows only; rows locked
-- by a writer are skipped (SKIP LOCKED) and purged next time.
create or replace function pyglue.purge_cache_entries(p_namespace text default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_deleted bigint;
begin
    delete from pyglue.cache_entries c
    where (c.namespace, c.key) in (select e.namespace, e.key from pyglue.cache_entries e
                                   where e.expires_at <= clock_timestamp()
                                     and (p_namespace is null or e.namespace = p_namespace)
                                   for update skip locked);
    get diagnostics v_deleted = row_count;
    return v_deleted;
end;
$$;

comment on function pyglue.purge_cache_entries(text) is
    'Delete expired rows of pyglue.cache_entries (one namespace or all); returns how many.';
