-- app._apply_activity(p_tenancy_ids, p_user_ids, p_days, p_deltas): add p_deltas activity
-- events to each (tenancy, user, UTC day) of app.metrics_active_days (negative for deleted
-- events). A day row that appears adds 1 to that day's "active" counter of its user (when the
-- user exists, under its anonymous flag); a row that drops to 0 events is deleted and
-- subtracts 1. Upserts take the rows in key order; the xmax = 0 test tells a row this
-- statement created from one it updated, also when another transaction created it first.
-- Removals update rows that exist (their events were counted when inserted).
-- Rows of tenancies that no longer exist are skipped (their rollups go by cascade).
-- STRICT: a statement without activity events passes null arrays and does nothing.
create or replace function app._apply_activity(p_tenancy_ids uuid[], p_user_ids uuid[], p_days date[],
                                               p_deltas bigint[])
returns void
language plpgsql
strict
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    with d as (
        select x.t as tenancy_id, x.u as user_id, x.day, sum(x.delta) as delta
        from unnest(p_tenancy_ids, p_user_ids, p_days, p_deltas) as x(t, u, day, delta)
        where exists (select 1 from app.tenancies t where t.id = x.t)
        group by 1, 2, 3
        having sum(x.delta) <> 0
    ),
    added as (
        insert into app.metrics_active_days as a (tenancy_id, user_id, day, events)
        select d.tenancy_id, d.user_id, d.day, d.delta from d where d.delta > 0 order by 1, 2, 3
        on conflict (tenancy_id, user_id, day) do update set events = a.events + excluded.events
        returning a.tenancy_id, a.user_id, a.day, a.events, (a.xmax = 0) as created
    ),
    -- a removal is an UPDATE: the CHECK of an INSERT sees the proposed negative row first
    removed as (
        update app.metrics_active_days a set events = a.events + d.delta
        from d
        where d.delta < 0 and a.tenancy_id = d.tenancy_id and a.user_id = d.user_id and a.day = d.day
        returning a.tenancy_id, a.user_id, a.day, a.events, false as created
    ),
    changed as (
        select * from added
        union all
        select * from removed
    )
    insert into app.metrics_counters as c (tenancy_id, metric, bucket, is_anonymous, n)
    select ch.tenancy_id, 'active', coalesce(to_char(ch.day, 'YYYY-MM-DD'), ch.day::text), s.is_anonymous,
           sum(case when ch.created then 1 else -1 end)
    from changed ch
    join app.metrics_user_state s on s.tenancy_id = ch.tenancy_id and s.user_id = ch.user_id
    where ch.created or ch.events = 0
    group by 1, 2, 3, 4
    order by 1, 2, 3, 4
    on conflict (tenancy_id, metric, bucket, is_anonymous) do update set n = c.n + excluded.n;

    delete from app.metrics_active_days a
    using unnest(p_tenancy_ids, p_user_ids, p_days) as x(t, u, day)
    where a.tenancy_id = x.t and a.user_id = x.u and a.day = x.day and a.events = 0;
end;
$$;

comment on function app._apply_activity(uuid[], uuid[], date[], bigint[]) is
    'Add activity event counts to per-user UTC days and move the daily active counters for days that appear or empty.';
