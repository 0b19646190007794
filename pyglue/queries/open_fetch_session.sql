-- Name the tenancy the fetch transaction (pid, backend start, xact) of the fetch login may
-- read (pyglue._fetch_tenancy). Run on its own and committed by the main connection before
-- the fetch reads, without waiting for the WAL flush (the binding dies with the fetch's
-- session anyway); the fetch login can neither write nor read pyglue.fetch_sessions.
with bound as (
    insert into pyglue.fetch_sessions (backend_pid, backend_start, tenancy_id, xact)
    values (%(pid)s, %(backend_start)s, %(tenancy_id)s, %(xact)s)
    on conflict (backend_pid) do update
        set backend_start = excluded.backend_start, tenancy_id = excluded.tenancy_id, xact = excluded.xact,
            started_at = now()
    returning 1
)
select set_config('synchronous_commit', 'off', true) from bound
