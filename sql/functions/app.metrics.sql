-- app.metrics(p_tenancy_id uuid, p_include_anonymous boolean default false, p_now timestamptz
-- default now()): the dashboard metrics of one tenancy as one jsonb object:
--   total_users          users (anonymous ones only with p_include_anonymous)
--   daily_users          sign-ups per UTC day, 31 days ending on p_now's UTC day, zero-filled:
--                        [{"date": "YYYY-MM-DD", "activity": n}, ...] oldest first
--   daily_active_users   distinct users with a '$user-activity' event per UTC day, same shape
--   users_by_country     {"DE": n, ...}: each user's country of their latest activity event
--                        that has one (ties: the larger event id)
--   recently_registered  the 100 latest sign-ups; recently_active: the 5 latest last_active_at
--                        (app.users.last_active_at); user objects: id, display_name,
--                        primary_email, signed_up_at, last_active_at
--   login_methods        [{"method": "password"|"otp"|"passkey"|<oauth provider>, "count": n}]:
--                        auth methods of the counted users, most used first
--   auth_overview        verified_users (primary email verified), unverified_users (the other
--                        counted users), anonymous_users (always counted), total_teams, mau:
--                        distinct non-anonymous users with activity in (p_now - 30 days, p_now]
-- Only existing users count (events outlive users; a deleted user's events count no more).
-- Reads the rollups that triggers keep current (app.metrics_counters, app.metrics_user_state),
-- so its cost does not grow with events. mau: when the tenancy has no activity after p_now
-- (the usual case), whole days come from counters of users' last active day and the
-- window's partial first day from the state index; otherwise from app.events (exact, slower).
-- Errors: none of its own; an unknown tenancy gives all zeros.
create or replace function app.metrics(p_tenancy_id uuid, p_include_anonymous boolean default false,
                                       p_now timestamptz default now())
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_today date := (p_now at time zone 'UTC')::date;
    v_first date := (p_now at time zone 'UTC')::date - 30;
    v_anon boolean[] := case when p_include_anonymous then array[false, true] else array[false] end;
    v_since timestamptz := p_now - interval '30 days';
    v_since_day date := ((p_now - interval '30 days') at time zone 'UTC')::date;
    v_total bigint;
    v_verified bigint;
    v_mau bigint;
begin
    select coalesce(sum(c.n), 0) into v_total from app.metrics_counters c
    where c.tenancy_id = p_tenancy_id and c.metric = 'signup' and c.is_anonymous = any (v_anon);
    select coalesce(sum(c.n), 0) into v_verified from app.metrics_counters c
    where c.tenancy_id = p_tenancy_id and c.metric = 'verified' and c.is_anonymous = any (v_anon);

    -- max() walks the (tenancy_id, event_type, occurred_at) index backwards to one row; an
    -- EXISTS with "> p_now" got a generic plan that scanned the table
    if coalesce((select max(e.occurred_at) from app.events e
                 where e.tenancy_id = p_tenancy_id and e.event_type = '$user-activity') <= p_now, true) then
        -- no activity after p_now, so every last activity is at or before it: whole days
        -- after the window's first day (today included) from the counters, the first day's
        -- part after p_now - 30 days from the state index (few users: inactive since)
        select coalesce((select sum(c.n) from app.metrics_counters c
                         where c.tenancy_id = p_tenancy_id and c.metric = 'last_active' and not c.is_anonymous
                           and c.bucket > to_char(v_since_day, 'YYYY-MM-DD')
                           and c.bucket <= to_char(v_today, 'YYYY-MM-DD')), 0)
             + (select count(*) from app.metrics_user_state s
                where s.tenancy_id = p_tenancy_id and not s.is_anonymous
                  and s.last_active_at > v_since
                  and s.last_active_at < (v_since_day + 1)::timestamp at time zone 'UTC')
          into v_mau;
    else
        select count(distinct e.user_id) into v_mau
        from app.events e
        join app.users u on u.tenancy_id = e.tenancy_id and u.id = e.user_id
        where e.tenancy_id = p_tenancy_id and e.event_type = '$user-activity'
          and e.occurred_at > v_since and e.occurred_at <= p_now and not u.is_anonymous;
    end if;

    return jsonb_build_object(
        'total_users', v_total,
        'daily_users', app._metrics_day_series(p_tenancy_id, 'signup', v_anon, v_first, v_today),
        'daily_active_users', app._metrics_day_series(p_tenancy_id, 'active', v_anon, v_first, v_today),
        'users_by_country', (
            select coalesce(jsonb_object_agg(x.bucket, x.n order by x.bucket), '{}')
            from (select c.bucket, sum(c.n) as n from app.metrics_counters c
                  where c.tenancy_id = p_tenancy_id and c.metric = 'country' and c.is_anonymous = any (v_anon)
                  group by c.bucket having sum(c.n) > 0) x),
        'recently_registered', (
            select coalesce(jsonb_agg(app._user_json(x.u) order by x.signed_up_at desc, x.id desc), '[]')
            from (select u, u.signed_up_at, u.id from app.users u
                  where u.tenancy_id = p_tenancy_id and u.is_anonymous = any (v_anon)
                  order by u.signed_up_at desc, u.id desc limit 100) x),
        'recently_active', (
            select coalesce(jsonb_agg(app._user_json(x.u) order by x.last_active_at desc, x.id desc), '[]')
            from (select u, u.last_active_at, u.id from app.users u
                  where u.tenancy_id = p_tenancy_id and u.is_anonymous = any (v_anon)
                    and u.last_active_at is not null
                  order by u.last_active_at desc, u.id desc limit 5) x),
        'login_methods', (
            select coalesce(jsonb_agg(jsonb_build_object('method', x.bucket, 'count', x.n)
                                      order by x.n desc, x.bucket), '[]')
            from (select c.bucket, sum(c.n) as n from app.metrics_counters c
                  where c.tenancy_id = p_tenancy_id and c.metric = 'method' and c.is_anonymous = any (v_anon)
                  group by c.bucket having sum(c.n) > 0) x),
        'auth_overview', jsonb_build_object(
            'verified_users', v_verified,
            'unverified_users', v_total - v_verified,
            'anonymous_users', (select coalesce(sum(c.n), 0) from app.metrics_counters c
                                where c.tenancy_id = p_tenancy_id and c.metric = 'signup' and c.is_anonymous),
            'total_teams', (select coalesce(sum(c.n), 0) from app.metrics_counters c
                            where c.tenancy_id = p_tenancy_id and c.metric = 'teams'),
            'mau', v_mau));
end;
$$;

comment on function app.metrics(uuid, boolean, timestamptz) is
    'Dashboard metrics of a tenancy as jsonb: totals, 31-day sign-up and active series, countries, recent users, login methods, overview.';
