-- app._tg_events_metrics(): statement-level AFTER INSERT / UPDATE / DELETE trigger of
-- app.events. Only '$user-activity' events with a user count. Inserts add to the users'
-- active days (app._apply_activity) and fold into their last active time and latest
-- country (app._apply_latest_activity): no per-row work, two set-based calls. Deletes and
-- updates subtract (and add) active days, then re-read last activity and latest country of
-- the users concerned from app.events (app._refresh_user_metrics), since a deleted event may
-- have been the latest one. The tenancies' metrics lock is taken shared first
-- (app._lock_user_activity): a user being created meanwhile is then either seen here or
-- reads these events itself.
create or replace function app._tg_events_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op in ('INSERT', 'UPDATE') then
        perform app._lock_user_activity(array_agg(n.tenancy_id), false)
        from new_rows n where n.event_type = '$user-activity' and n.user_id is not null;
    end if;
    if tg_op in ('DELETE', 'UPDATE') then
        perform app._lock_user_activity(array_agg(o.tenancy_id), false)
        from old_rows o where o.event_type = '$user-activity' and o.user_id is not null;
    end if;
    if tg_op = 'INSERT' then
        perform app._apply_activity(array_agg(a.tenancy_id), array_agg(a.user_id), array_agg(a.day), array_agg(a.n))
        from (select n.tenancy_id, n.user_id, (n.occurred_at at time zone 'UTC')::date as day, count(*) as n
              from new_rows n
              where n.event_type = '$user-activity' and n.user_id is not null
              group by 1, 2, 3) a;
        perform app._apply_latest_activity(array_agg(l.tenancy_id), array_agg(l.user_id), array_agg(l.last_at),
                                           array_agg(l.country_code), array_agg(l.country_at),
                                           array_agg(l.country_event_id))
        from (select n.tenancy_id, n.user_id, max(n.occurred_at) as last_at,
                     (array_agg(n.country_code order by n.occurred_at desc, n.id desc)
                          filter (where n.country_code is not null))[1] as country_code,
                     (array_agg(n.occurred_at order by n.occurred_at desc, n.id desc)
                          filter (where n.country_code is not null))[1] as country_at,
                     (array_agg(n.id order by n.occurred_at desc, n.id desc)
                          filter (where n.country_code is not null))[1] as country_event_id
              from new_rows n
              where n.event_type = '$user-activity' and n.user_id is not null
              group by 1, 2) l;
    elsif tg_op = 'DELETE' then
        perform app._apply_activity(array_agg(a.tenancy_id), array_agg(a.user_id), array_agg(a.day), array_agg(-a.n))
        from (select o.tenancy_id, o.user_id, (o.occurred_at at time zone 'UTC')::date as day, count(*) as n
              from old_rows o
              where o.event_type = '$user-activity' and o.user_id is not null
              group by 1, 2, 3) a;
        perform app._refresh_user_metrics(array_agg(k.tenancy_id), array_agg(k.user_id), true, true)
        from (select distinct o.tenancy_id, o.user_id from old_rows o
              where o.event_type = '$user-activity' and o.user_id is not null) k
        having count(*) > 0;
    else
        perform app._apply_activity(array_agg(a.tenancy_id), array_agg(a.user_id), array_agg(a.day), array_agg(a.n))
        from (select x.tenancy_id, x.user_id, (x.occurred_at at time zone 'UTC')::date as day, sum(x.d) as n
              from (select n.tenancy_id, n.user_id, n.occurred_at, 1 as d from new_rows n
                    where n.event_type = '$user-activity' and n.user_id is not null
                    union all
                    select o.tenancy_id, o.user_id, o.occurred_at, -1 from old_rows o
                    where o.event_type = '$user-activity' and o.user_id is not null) x
              group by 1, 2, 3) a;
        perform app._refresh_user_metrics(array_agg(k.tenancy_id), array_agg(k.user_id), true, true)
        from (select n.tenancy_id, n.user_id from new_rows n
              where n.event_type = '$user-activity' and n.user_id is not null
              union
              select o.tenancy_id, o.user_id from old_rows o
              where o.event_type = '$user-activity' and o.user_id is not null) k
        having count(*) > 0;
    end if;
    return null;
end;
$$;

comment on function app._tg_events_metrics() is
    'Statement trigger of app.events: maintain active days, last activity and latest country of users.';
