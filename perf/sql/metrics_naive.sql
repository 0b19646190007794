-- The straightforward dashboard query without rollups (the baseline of perf/bench_metrics.py):
-- the same numbers as app.metrics, computed from app.users, app.events, app.contact_channels
-- and app.auth_methods at read time.
with u as (
    select * from app.users where tenancy_id = %(tenancy_id)s and (%(anon)s or not is_anonymous)
),
days as (
    select to_char(g, 'YYYY-MM-DD') as day
    from generate_series(((%(now)s::timestamptz at time zone 'UTC')::date - 30)::timestamp,
                         (%(now)s::timestamptz at time zone 'UTC')::date::timestamp, interval '1 day') g
),
activity as (
    select e.user_id, e.occurred_at, e.country_code, e.id
    from app.events e join u on u.id = e.user_id
    where e.tenancy_id = %(tenancy_id)s and e.event_type = '$user-activity'
)
select jsonb_build_object(
    'total_users', (select count(*) from u),
    'daily_users', (select jsonb_agg(jsonb_build_object('date', d.day, 'activity',
                        (select count(*) from u where to_char(u.signed_up_at at time zone 'UTC', 'YYYY-MM-DD') = d.day))
                        order by d.day) from days d),
    'daily_active_users', (select jsonb_agg(jsonb_build_object('date', d.day, 'activity', coalesce(a.n, 0)) order by d.day)
                           from days d left join (select to_char(occurred_at at time zone 'UTC', 'YYYY-MM-DD') as day,
                                                         count(distinct user_id) as n
                                                  from activity group by 1) a on a.day = d.day),
    'users_by_country', (select coalesce(jsonb_object_agg(country_code, n order by country_code), '{{}}')
                         from (select country_code, count(*) as n
                               from (select distinct on (user_id) user_id, country_code from activity
                                     where country_code is not null
                                     order by user_id, occurred_at desc, id desc) l
                               group by 1) c),
    'login_methods', (select coalesce(jsonb_agg(jsonb_build_object('method', m, 'count', n) order by n desc, m), '[]')
                      from (select coalesce(a.provider, a.kind) as m, count(*) as n
                            from app.auth_methods a join u on u.id = a.user_id
                            where a.tenancy_id = %(tenancy_id)s group by 1) x),
    'verified_users', (select count(*) from u where exists (
                           select 1 from app.contact_channels c where c.tenancy_id = u.tenancy_id and c.user_id = u.id
                             and c.type = 'email' and c.is_primary and c.is_verified)),
    'mau', (select count(distinct e.user_id) from app.events e
            join app.users x on x.tenancy_id = e.tenancy_id and x.id = e.user_id and not x.is_anonymous
            where e.tenancy_id = %(tenancy_id)s and e.event_type = '$user-activity'
              and e.occurred_at > %(now)s::timestamptz - interval '30 days' and e.occurred_at <= %(now)s::timestamptz)
) as m
