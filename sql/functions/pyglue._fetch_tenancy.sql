-- pyglue._fetch_tenancy(): the tenancy a mapping fetch may read, or null.
--
-- The sync engine writes (backend pid, tenancy, its transaction id) into
-- pyglue.fetch_sessions, then makes the transaction read-only and switches to
-- pyglue_mapping_reader before running the mapping's query. The row-level security
-- policies for that role compare against this function. A mapping query can change a
-- setting, but it cannot write this row (read-only transaction, no grant), and a row
-- left by an earlier transaction of the same backend does not count.
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
    where s.backend_pid = pg_backend_pid() and s.xact = pg_current_xact_id_if_assigned();
$$;

comment on function pyglue._fetch_tenancy() is
    'The tenancy the current mapping fetch may read (row-level security of pyglue_mapping_reader), or null.';
