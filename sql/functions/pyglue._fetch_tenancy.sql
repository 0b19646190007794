-- pyglue._fetch_tenancy(): the tenancy a mapping fetch may read, or null.
--
-- Mapping queries run over their own login (pyglue_fetch, or the one PYGLUE_FETCH_DSN
-- names), whose only privileges are those of pyglue_mapping_reader. Before a fetch, the
-- engine's main connection writes (the fetch session's pid and backend start, the id of
-- the fetch transaction, the tenancy) into pyglue.fetch_sessions and commits; the
-- row-level security policies of the reader compare against this function. The fetch
-- login cannot write that table or read it, and a row left for an earlier transaction
-- or an earlier session with the same pid does not count.
-- SECURITY DEFINER: the reader has no access to pyglue.fetch_sessions.
create or replace function pyglue._fetch_tenancy()
returns uuid
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select s.tenancy_id
    from pyglue.fetch_sessions s
    where s.backend_pid = pg_backend_pid() and s.xact = pg_current_xact_id_if_assigned()
      and s.backend_start = (select a.backend_start from pg_stat_get_activity(pg_backend_pid()) a);
$$;

comment on function pyglue._fetch_tenancy() is
    'The tenancy the current mapping fetch may read (row-level security of pyglue_mapping_reader), or null.';
