-- pyglue._session_alive(p_pid, p_started): whether the database session that holds a
-- claim still exists (same pid and start time, so a reused pid does not count). A claim
-- with no recorded session (p_pid null), or a session whose start time this role may not
-- see, counts as alive: then only the lease decides.
-- SECURITY DEFINER: reads pg_stat_get_activity as the owner, who may see every session.
create or replace function pyglue._session_alive(p_pid integer, p_started timestamptz)
returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select p_pid is null or exists (
        select 1 from pg_stat_get_activity(p_pid) a
        where a.pid = p_pid and (a.backend_start = p_started or a.backend_start is null));
$$;

comment on function pyglue._session_alive(integer, timestamptz) is
    'Whether the session (pid, start time) holding a claim still exists.';
