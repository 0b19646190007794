-- app._apply_latest_activity(p_tenancy_ids, p_user_ids, p_last_at, p_country_codes,
-- p_country_at, p_country_event_ids): fold inserted activity events into the users' state:
-- the last active time becomes the later of stored and new; the latest country moves to the
-- new candidate when it is later by (occurred_at, event id). The "country" and
-- "last_active" counters move by the difference. Only users with state (existing users)
-- change; a user created later reads its events itself (app._refresh_user_metrics).
-- Locks the state rows (FOR UPDATE, key order) and compares against their latest version.
-- STRICT: no activity events, nothing to do.
create or replace function app._apply_latest_activity(p_tenancy_ids uuid[], p_user_ids uuid[],
                                                      p_last_at timestamptz[], p_country_codes text[],
                                                      p_country_at timestamptz[], p_country_event_ids uuid[])
returns void
language plpgsql
strict
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    -- one statement; the candidates come with their locked state row (a join of two
    -- unsized lists could be planned as a quadratic nested loop)
    with o as (
        select s.tenancy_id, s.user_id, s.is_anonymous, s.last_active_at, s.country_code, s.country_at,
               s.country_event_id, c.last_at, c.country_code as c_country, c.country_at as c_country_at,
               c.country_event_id as c_country_event_id
        from unnest(p_tenancy_ids, p_user_ids, p_last_at, p_country_codes, p_country_at, p_country_event_ids)
             as c(tenancy_id, user_id, last_at, country_code, country_at, country_event_id)
        join app.metrics_user_state s on s.tenancy_id = c.tenancy_id and s.user_id = c.user_id
        order by s.tenancy_id, s.user_id
        for update of s
    ),
    n as (
        select o.tenancy_id, o.user_id, o.is_anonymous,
               o.last_active_at as o_last, o.country_code as o_country,
               greatest(o.last_active_at, o.last_at) as f_last,
               t.moves,
               case when t.moves then o.c_country else o.country_code end as f_country,
               case when t.moves then o.c_country_at else o.country_at end as f_country_at,
               case when t.moves then o.c_country_event_id else o.country_event_id end as f_country_event_id
        from o
        cross join lateral (
            select o.c_country_at is not null
                   and (o.country_at is null
                        or (o.c_country_at, o.c_country_event_id) > (o.country_at, o.country_event_id)) as moves
        ) t
    ),
    upd as (
        update app.metrics_user_state s
        set last_active_at = n.f_last, country_code = n.f_country, country_at = n.f_country_at,
            country_event_id = n.f_country_event_id
        from n
        where s.tenancy_id = n.tenancy_id and s.user_id = n.user_id
          and (n.moves or n.f_last is distinct from n.o_last)
    ),
    deltas (tenancy_id, metric, bucket, is_anonymous, d) as (
        select tenancy_id, 'country', o_country, is_anonymous, -1 from n where moves and o_country is not null
        union all
        select tenancy_id, 'country', f_country, is_anonymous, 1 from n where moves
        union all
        select tenancy_id, 'last_active', coalesce(to_char((o_last at time zone 'UTC')::date, 'YYYY-MM-DD'), o_last::text), is_anonymous, -1
        from n where o_last is not null and f_last is distinct from o_last
        union all
        select tenancy_id, 'last_active', coalesce(to_char((f_last at time zone 'UTC')::date, 'YYYY-MM-DD'), f_last::text), is_anonymous, 1
        from n where f_last is distinct from o_last
    )
    insert into app.metrics_counters as k (tenancy_id, metric, bucket, is_anonymous, n)
    select d.tenancy_id, d.metric, d.bucket, d.is_anonymous, sum(d.d)
    from deltas d
    group by 1, 2, 3, 4
    having sum(d.d) <> 0
    order by 1, 2, 3, 4
    on conflict (tenancy_id, metric, bucket, is_anonymous) do update set n = k.n + excluded.n;
end;
$$;

comment on function app._apply_latest_activity(uuid[], uuid[], timestamptz[], text[], timestamptz[], uuid[]) is
    'Fold inserted activity events into users'' last active time and latest country, moving the counters.';
