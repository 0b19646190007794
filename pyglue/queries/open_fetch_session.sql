-- Name the tenancy the mapping fetch in this transaction may read (pyglue._fetch_tenancy);
-- written before the transaction turns read-only, so the fetch itself cannot change it.
insert into pyglue.fetch_sessions (backend_pid, tenancy_id, xact)
values (pg_backend_pid(), %(tenancy_id)s, pg_current_xact_id())
on conflict (backend_pid) do update
    set tenancy_id = excluded.tenancy_id, xact = excluded.xact, started_at = now()
