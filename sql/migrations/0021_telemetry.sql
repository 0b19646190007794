-- telemetry (issue 14): what each worker did, recorded in the database so the dashboard and
-- the Prometheus metrics of any process read the same numbers: sequencer passes (count,
-- rows stamped, seconds, the last one) per worker, pages and rows applied per worker,
-- target and mapping, and sync runs and errors per worker and target; and
-- pyglue.retry_request, which requeues one dead request (the dashboard's retry button).
-- depends: 0020_webhooks

create table if not exists pyglue.worker_telemetry (
    worker            text primary key,
    started_at        timestamptz not null default now(),
    last_seen_at      timestamptz not null default now(),
    sequencer_passes  bigint not null default 0,
    rows_stamped      bigint not null default 0,
    pass_seconds      double precision not null default 0,
    last_pass_at      timestamptz,
    last_pass_rows    bigint,
    last_pass_seconds double precision
);
comment on table pyglue.worker_telemetry is 'Per worker: sequencer passes, rows stamped, seconds spent, the last pass (pyglue.record_telemetry)';

create table if not exists pyglue.sync_telemetry (
    worker        text not null references pyglue.worker_telemetry (worker) on delete cascade,
    target_id     bigint not null references pyglue.sync_targets (id) on delete cascade,
    mapping_name  text not null,
    pages_applied bigint not null default 0,
    rows_applied  bigint not null default 0,
    last_page_at  timestamptz,
    primary key (worker, target_id, mapping_name)
);
comment on table pyglue.sync_telemetry is 'Per worker, target and mapping: pages and rows applied (pyglue.record_telemetry)';
create index if not exists sync_telemetry_target_idx on pyglue.sync_telemetry (target_id);

create table if not exists pyglue.target_telemetry (
    worker        text not null references pyglue.worker_telemetry (worker) on delete cascade,
    target_id     bigint not null references pyglue.sync_targets (id) on delete cascade,
    runs          bigint not null default 0,
    errors        bigint not null default 0,
    last_run_at   timestamptz,
    last_error_at timestamptz,
    primary key (worker, target_id)
);
comment on table pyglue.target_telemetry is 'Per worker and target: syncs run and how many failed (pyglue.record_telemetry)';
create index if not exists target_telemetry_target_idx on pyglue.target_telemetry (target_id);

-- copied from sql/functions/pyglue.record_telemetry.sql
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

-- copied from sql/functions/pyglue.retry_request.sql
-- pyglue.retry_request(p_id): give one dead request another chance (the dashboard's retry
-- button). The dead request is removed and its tenancy enqueued afresh (attempts 0, run
-- now), merging with a request of the tenancy already pending; its error is kept in
-- neither (it stays in the target's last_error and the logs).
-- Returns: the id of the tenancy's pending request.
-- Errors: P0002 when no request p_id exists or it is not dead (naming its status).
-- Locks: the request row (FOR UPDATE); then as pyglue.enqueue_sync.
create or replace function pyglue.retry_request(p_id bigint)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_request pyglue.outgoing_requests;
begin
    select * into v_request from pyglue.outgoing_requests r where r.id = p_id for update;
    if not found then
        raise exception 'request % does not exist', p_id using errcode = 'P0002';
    end if;
    if v_request.status <> 'dead' then
        raise exception 'request % is %, not dead', p_id, v_request.status using errcode = 'P0002';
    end if;
    delete from pyglue.outgoing_requests r where r.id = p_id;
    return pyglue.enqueue_sync(v_request.tenancy_id);
end;
$$;

comment on function pyglue.retry_request(bigint) is
    'Requeue one dead sync request (its tenancy is enqueued afresh). Returns the pending request id.';

