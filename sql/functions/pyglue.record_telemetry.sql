-- pyglue.record_telemetry(p_worker, ...): a worker adds what it did since its last call to
-- its telemetry rows (the dashboard and the Prometheus metrics read them). Counters only
-- grow; "last" columns are replaced when the call brings a newer value.
--
-- p_passes, p_rows_stamped, p_pass_seconds: sequencer passes run, rows they stamped and
-- the seconds they took, since the last call; p_last_pass_at / _rows / _seconds: the
-- latest pass (null when none ran).
-- p_pages: jsonb array of {"target_id", "mapping", "pages", "rows", "at"}: pages and rows
-- applied per target and mapping, the last at "at".
-- p_runs: jsonb array of {"tenancy_id", "target", "runs", "errors", "at", "error_at"}:
-- syncs of a target run and how many of them failed.
-- Entries of targets that no longer exist are ignored. Rows of workers not seen for 7
-- days are purged.
-- Locks: the worker's telemetry rows (upsert).
create or replace function pyglue.record_telemetry(p_worker text,
                                                   p_passes bigint default 0,
                                                   p_rows_stamped bigint default 0,
                                                   p_pass_seconds double precision default 0,
                                                   p_last_pass_at timestamptz default null,
                                                   p_last_pass_rows bigint default null,
                                                   p_last_pass_seconds double precision default null,
                                                   p_pages jsonb default '[]',
                                                   p_runs jsonb default '[]')
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_worker is null or p_worker = '' then
        raise exception 'worker must be named, got %', coalesce(quote_literal(p_worker), 'null')
            using errcode = '22004';
    end if;
    insert into pyglue.worker_telemetry as w
        (worker, sequencer_passes, rows_stamped, pass_seconds, last_pass_at, last_pass_rows, last_pass_seconds)
    values (p_worker, coalesce(p_passes, 0), coalesce(p_rows_stamped, 0), coalesce(p_pass_seconds, 0),
            p_last_pass_at, p_last_pass_rows, p_last_pass_seconds)
    on conflict (worker) do update
        set last_seen_at = now(),
            sequencer_passes = w.sequencer_passes + excluded.sequencer_passes,
            rows_stamped = w.rows_stamped + excluded.rows_stamped,
            pass_seconds = w.pass_seconds + excluded.pass_seconds,
            last_pass_at = coalesce(excluded.last_pass_at, w.last_pass_at),
            last_pass_rows = case when excluded.last_pass_at is null then w.last_pass_rows
                                  else excluded.last_pass_rows end,
            last_pass_seconds = case when excluded.last_pass_at is null then w.last_pass_seconds
                                     else excluded.last_pass_seconds end;

    insert into pyglue.sync_telemetry as s (worker, target_id, mapping_name, pages_applied, rows_applied, last_page_at)
    select p_worker, t.id, x.mapping, x.pages, x.rows, x.at
    from jsonb_to_recordset(coalesce(p_pages, '[]')) as x(target_id bigint, mapping text, pages bigint, rows bigint,
                                                           at timestamptz)
    join pyglue.sync_targets t on t.id = x.target_id
    on conflict (worker, target_id, mapping_name) do update
        set pages_applied = s.pages_applied + excluded.pages_applied,
            rows_applied = s.rows_applied + excluded.rows_applied,
            last_page_at = greatest(s.last_page_at, excluded.last_page_at);

    insert into pyglue.target_telemetry as g (worker, target_id, runs, errors, last_run_at, last_error_at)
    select p_worker, t.id, x.runs, x.errors, x.at, x.error_at
    from jsonb_to_recordset(coalesce(p_runs, '[]')) as x(tenancy_id uuid, target text, runs bigint, errors bigint,
                                                          at timestamptz, error_at timestamptz)
    join pyglue.sync_targets t on t.tenancy_id = x.tenancy_id and t.name = x.target
    on conflict (worker, target_id) do update
        set runs = g.runs + excluded.runs,
            errors = g.errors + excluded.errors,
            last_run_at = greatest(g.last_run_at, excluded.last_run_at),
            last_error_at = greatest(g.last_error_at, excluded.last_error_at);

    delete from pyglue.worker_telemetry w where w.last_seen_at < now() - interval '7 days';
end;
$$;

comment on function pyglue.record_telemetry(text, bigint, bigint, double precision, timestamptz, bigint,
                                            double precision, jsonb, jsonb) is
    'Add a worker''s sequencer passes, pages applied per target and mapping, and sync runs and errors to its telemetry.';
