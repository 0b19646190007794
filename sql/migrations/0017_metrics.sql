-- metrics (issue 12): dashboard metrics from rollups kept by statement triggers in the same
-- transaction as the user, channel, auth method, team or event write (never a cron, never
-- stale), the TTL cache pyglue.cache_entries and app.metrics_cached, and the keyset user list
-- app.list_users with substring search (pg_trgm GIN indexes where the extension is
-- available; the embedded server has none, and the function falls back to scans there).
-- depends: 0016_item_ledger_chunks

-- per user and UTC day: the number of '$user-activity' events (daily active users, and what
-- a user's appearance, removal or anonymous flip moves)
create table if not exists app.metrics_active_days (
    tenancy_id uuid not null references app.tenancies (id) on delete cascade,
    user_id uuid not null,
    day date not null,
    events bigint not null,
    constraint metrics_active_days_pkey primary key (tenancy_id, user_id, day),
    constraint metrics_active_days_events_check check (events >= 0)
);

-- per existing user: what its counters hold, so a change moves them by the difference
create table if not exists app.metrics_user_state (
    tenancy_id uuid not null references app.tenancies (id) on delete cascade,
    user_id uuid not null,
    is_anonymous boolean not null,
    signup_day date not null,
    verified boolean not null,
    methods text[] not null,
    last_active_at timestamptz,
    country_code text,
    country_at timestamptz,
    country_event_id uuid,
    constraint metrics_user_state_pkey primary key (tenancy_id, user_id)
);
-- monthly active users: the partial first and last day of the 30-day window
create index if not exists metrics_user_state_last_active_idx
    on app.metrics_user_state (tenancy_id, is_anonymous, last_active_at);

-- counters: metric 'signup' (bucket: UTC day), 'active' (UTC day), 'last_active' (UTC day of
-- a user's last activity), 'country' (code), 'method' (kind or oauth provider), 'verified'
-- and 'teams' (bucket ''), split by the users' anonymous flag
create table if not exists app.metrics_counters (
    tenancy_id uuid not null references app.tenancies (id) on delete cascade,
    metric text not null,
    bucket text not null,
    is_anonymous boolean not null,
    n bigint not null,
    constraint metrics_counters_pkey primary key (tenancy_id, metric, bucket, is_anonymous)
);

-- TTL cache of computed values (app.metrics_cached); expired rows are purged on misses
create table if not exists pyglue.cache_entries (
    namespace text not null,
    key text not null,
    value jsonb not null,
    expires_at timestamptz not null,
    created_at timestamptz not null default clock_timestamp(),
    constraint cache_entries_pkey primary key (namespace, key)
);
create index if not exists cache_entries_expires_idx on pyglue.cache_entries (expires_at);

-- substring search of app.list_users: trigram GIN indexes where pg_trgm can be installed
-- (Debian's contrib has it; the embedded pgserver does not, and list_users scans there)
do $trgm$
declare
    v_schema name;
begin
    if exists (select 1 from pg_available_extensions where name = 'pg_trgm') then
        create extension if not exists pg_trgm;
        select n.nspname into v_schema
        from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'pg_trgm';
        execute format('create index if not exists users_display_name_trgm_idx on app.users'
                       ' using gin (display_name %I.gin_trgm_ops)', v_schema);
        execute format('create index if not exists contact_channels_value_trgm_idx on app.contact_channels'
                       ' using gin (value %I.gin_trgm_ops)', v_schema);
    end if;
end;
$trgm$;

-- copied from sql/functions/app._user_json.sql
-- app._user_json(p_user app.users): the user object of app.metrics and app.list_users:
-- id, display_name, primary_email (the primary email channel's value, or null),
-- signed_up_at, last_active_at, is_anonymous. One index lookup in app.contact_channels.
create or replace function app._user_json(p_user app.users)
returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select jsonb_build_object(
        'id', p_user.id,
        'display_name', p_user.display_name,
        'primary_email', (select c.value from app.contact_channels c
                          where c.tenancy_id = p_user.tenancy_id and c.user_id = p_user.id
                            and c.type = 'email' and c.is_primary),
        'signed_up_at', p_user.signed_up_at,
        'last_active_at', p_user.last_active_at,
        'is_anonymous', p_user.is_anonymous)
$$;

comment on function app._user_json(app.users) is
    'A user as the jsonb object of app.metrics and app.list_users, with its primary email.';

-- copied from sql/functions/app._metrics_day_series.sql
-- app._metrics_day_series(p_tenancy_id, p_metric, p_anon, p_first, p_last): one counter of
-- app.metrics_counters as a zero-filled day series [{"date": "YYYY-MM-DD", "activity": n}]
-- from p_first to p_last (UTC days, inclusive), summed over the anonymous flags in p_anon.
create or replace function app._metrics_day_series(p_tenancy_id uuid, p_metric text, p_anon boolean[],
                                                   p_first date, p_last date)
returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select jsonb_agg(jsonb_build_object('date', d.day, 'activity', coalesce(c.n, 0)) order by d.day)
    from (select to_char(g, 'YYYY-MM-DD') as day
          from generate_series(p_first::timestamp, p_last::timestamp, interval '1 day') as g) d
    left join (select c.bucket, sum(c.n) as n from app.metrics_counters c
               where c.tenancy_id = p_tenancy_id and c.metric = p_metric and c.is_anonymous = any (p_anon)
                 and c.bucket between to_char(p_first, 'YYYY-MM-DD') and to_char(p_last, 'YYYY-MM-DD')
               group by c.bucket) c on c.bucket = d.day
$$;

comment on function app._metrics_day_series(uuid, text, boolean[], date, date) is
    'One metrics counter as a zero-filled UTC day series of {date, activity}.';

-- copied from sql/functions/app._refresh_user_metrics.sql
-- app._refresh_user_metrics(p_tenancy_ids, p_user_ids, p_recompute_activity, p_lock):
-- recompute the metrics state of the given users (pairs of the two arrays) from the source
-- tables and move the rollup counters by the difference to the stored state, in one
-- statement. A user that no longer exists loses its state and every count it added; a user
-- that appears adds them. This "recompute the affected keys" shape is what makes the
-- rollups right whatever order cascaded deletes and updates fire their triggers in.
-- Parameters: p_recompute_activity re-reads the latest activity (last active time, latest
-- country) from app.events, for event updates and deletes; otherwise the stored values are
-- kept (a user without state reads them from app.events). p_lock takes the users rows
-- (FOR NO KEY UPDATE, key order) and the state rows (FOR UPDATE) before reading, so two
-- transactions refreshing one user serialize and the second one reads what the first
-- committed; inserted users are invisible to others and need no lock.
-- Keys of tenancies that no longer exist (a tenancy being deleted) are skipped.
-- Returns nothing; raises nothing of its own.
create or replace function app._refresh_user_metrics(p_tenancy_ids uuid[], p_user_ids uuid[],
                                                     p_recompute_activity boolean, p_lock boolean)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_lock then
        perform 1 from app.users u
        where (u.tenancy_id, u.id) in (select k.t, k.u from unnest(p_tenancy_ids, p_user_ids) as k(t, u))
        order by u.tenancy_id, u.id
        for no key update of u;
        perform 1 from app.metrics_user_state s
        where (s.tenancy_id, s.user_id) in (select k.t, k.u from unnest(p_tenancy_ids, p_user_ids) as k(t, u))
        order by s.tenancy_id, s.user_id
        for update of s;
    end if;
    -- a new statement: after the locks, so it sees what a transaction we waited for committed
    with k as (
        select distinct k.t as tenancy_id, k.u as user_id
        from unnest(p_tenancy_ids, p_user_ids) as k(t, u)
        where exists (select 1 from app.tenancies t where t.id = k.t)
    ),
    fresh as (
        select u.tenancy_id, u.id as user_id, u.is_anonymous,
               (u.signed_up_at at time zone 'UTC')::date as signup_day,
               exists (select 1 from app.contact_channels c
                       where c.tenancy_id = u.tenancy_id and c.user_id = u.id
                         and c.type = 'email' and c.is_primary and c.is_verified) as verified,
               coalesce((select array_agg(coalesce(a.provider, a.kind) order by coalesce(a.provider, a.kind))
                         from app.auth_methods a
                         where a.tenancy_id = u.tenancy_id and a.user_id = u.id), '{}') as methods,
               case when s.user_id is null or p_recompute_activity then la.last_at else s.last_active_at end
                   as last_active_at,
               case when s.user_id is null or p_recompute_activity then lc.country_code else s.country_code end
                   as country_code,
               case when s.user_id is null or p_recompute_activity then lc.occurred_at else s.country_at end
                   as country_at,
               case when s.user_id is null or p_recompute_activity then lc.id else s.country_event_id end
                   as country_event_id
        from k
        join app.users u on u.tenancy_id = k.tenancy_id and u.id = k.user_id
        left join app.metrics_user_state s on s.tenancy_id = k.tenancy_id and s.user_id = k.user_id
        left join lateral (
            select max(e.occurred_at) as last_at
            from app.events e
            where (s.user_id is null or p_recompute_activity)
              and e.tenancy_id = u.tenancy_id and e.user_id = u.id and e.event_type = '$user-activity'
        ) la on true
        left join lateral (
            select e.country_code, e.occurred_at, e.id
            from app.events e
            where (s.user_id is null or p_recompute_activity)
              and e.tenancy_id = u.tenancy_id and e.user_id = u.id and e.event_type = '$user-activity'
              and e.country_code is not null
            order by e.occurred_at desc, e.id desc
            limit 1
        ) lc on true
    ),
    pair as (
        select key.tenancy_id, key.user_id,
               o.is_anonymous as o_anon, o.signup_day as o_day, o.verified as o_verified, o.methods as o_methods,
               o.country_code as o_country, o.last_active_at as o_last,
               f.is_anonymous as f_anon, f.signup_day as f_day, f.verified as f_verified, f.methods as f_methods,
               f.country_code as f_country, f.last_active_at as f_last
        -- a FULL JOIN of the two (a hash or merge join, never a nested loop: these lists come
        -- from arrays the planner cannot size, and a nested loop over both is quadratic)
        from (select s.* from app.metrics_user_state s join k on s.tenancy_id = k.tenancy_id and s.user_id = k.user_id) o
        full join fresh f on f.tenancy_id = o.tenancy_id and f.user_id = o.user_id
        cross join lateral (select coalesce(o.tenancy_id, f.tenancy_id) as tenancy_id,
                                   coalesce(o.user_id, f.user_id) as user_id) key
    ),
    -- day buckets are 'YYYY-MM-DD'; an infinite time (a timestamptz may be one) is its own
    -- bucket ('infinity', '-infinity'), which no day series reads
    deltas (tenancy_id, metric, bucket, is_anonymous, d) as (
        select tenancy_id, 'signup', coalesce(to_char(o_day, 'YYYY-MM-DD'), o_day::text), o_anon, -1 from pair where o_anon is not null
        union all
        select tenancy_id, 'signup', coalesce(to_char(f_day, 'YYYY-MM-DD'), f_day::text), f_anon, 1 from pair where f_anon is not null
        union all
        select tenancy_id, 'verified', '', o_anon, -1 from pair where o_verified
        union all
        select tenancy_id, 'verified', '', f_anon, 1 from pair where f_verified
        union all
        select p.tenancy_id, 'method', m.m, p.o_anon, -1 from pair p cross join unnest(p.o_methods) as m(m)
        union all
        select p.tenancy_id, 'method', m.m, p.f_anon, 1 from pair p cross join unnest(p.f_methods) as m(m)
        union all
        select tenancy_id, 'country', o_country, o_anon, -1 from pair where o_country is not null
        union all
        select tenancy_id, 'country', f_country, f_anon, 1 from pair where f_country is not null
        union all
        select tenancy_id, 'last_active', coalesce(to_char((o_last at time zone 'UTC')::date, 'YYYY-MM-DD'), o_last::text), o_anon, -1
        from pair where o_last is not null
        union all
        select tenancy_id, 'last_active', coalesce(to_char((f_last at time zone 'UTC')::date, 'YYYY-MM-DD'), f_last::text), f_anon, 1
        from pair where f_last is not null
        union all
        -- active days move only when the user appears, goes or changes its anonymous flag
        select p.tenancy_id, 'active', coalesce(to_char(a.day, 'YYYY-MM-DD'), a.day::text), x.anon, x.d
        from pair p
        join app.metrics_active_days a on a.tenancy_id = p.tenancy_id and a.user_id = p.user_id
        cross join lateral (values (p.o_anon, -1), (p.f_anon, 1)) as x(anon, d)
        where p.o_anon is distinct from p.f_anon and x.anon is not null
    ),
    bumped as (
        insert into app.metrics_counters as c (tenancy_id, metric, bucket, is_anonymous, n)
        select d.tenancy_id, d.metric, d.bucket, d.is_anonymous, sum(d.d)
        from deltas d
        group by 1, 2, 3, 4
        having sum(d.d) <> 0
        order by 1, 2, 3, 4
        on conflict (tenancy_id, metric, bucket, is_anonymous) do update set n = c.n + excluded.n
    ),
    gone as (
        delete from app.metrics_user_state s
        using pair p
        where s.tenancy_id = p.tenancy_id and s.user_id = p.user_id and p.f_anon is null
    )
    insert into app.metrics_user_state as s (tenancy_id, user_id, is_anonymous, signup_day, verified, methods,
                                             last_active_at, country_code, country_at, country_event_id)
    select f.tenancy_id, f.user_id, f.is_anonymous, f.signup_day, f.verified, f.methods,
           f.last_active_at, f.country_code, f.country_at, f.country_event_id
    from fresh f
    order by f.tenancy_id, f.user_id
    on conflict (tenancy_id, user_id) do update
        set is_anonymous = excluded.is_anonymous, signup_day = excluded.signup_day, verified = excluded.verified,
            methods = excluded.methods, last_active_at = excluded.last_active_at,
            country_code = excluded.country_code, country_at = excluded.country_at,
            country_event_id = excluded.country_event_id;
end;
$$;

comment on function app._refresh_user_metrics(uuid[], uuid[], boolean, boolean) is
    'Recompute the metrics state of the given users and move the rollup counters by the difference.';

-- copied from sql/functions/app._apply_activity.sql
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

-- copied from sql/functions/app._apply_latest_activity.sql
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

-- copied from sql/functions/app._tg_users_metrics.sql
-- app._tg_users_metrics(): statement-level AFTER INSERT / UPDATE / DELETE trigger of
-- app.users (UPDATE only of the columns metrics read: tenancy_id, id, is_anonymous,
-- signed_up_at). Refreshes the metrics state of every user the statement added, changed or
-- removed (app._refresh_user_metrics), in the same transaction: sign-ups per day, the
-- anonymous split of every counter, and the counts a deleted user leaves.
-- SECURITY DEFINER: a role that may write users need not be able to write rollups.
create or replace function app._tg_users_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    -- a transition table the trigger does not have cannot be named: one branch per operation
    if tg_op = 'INSERT' then
        perform app._refresh_user_metrics(array_agg(n.tenancy_id), array_agg(n.id), false, false)
        from new_rows n;
    elsif tg_op = 'DELETE' then
        perform app._refresh_user_metrics(array_agg(o.tenancy_id), array_agg(o.id), false, true)
        from old_rows o;
    else
        -- a FULL JOIN is planned as a hash or merge join, never as a nested loop over two
        -- transition tables (the sequencer's stamping updates are large and change nothing here)
        perform app._refresh_user_metrics(array_agg(x.tenancy_id), array_agg(x.id), false, true)
        from new_rows n
        full join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
        cross join lateral (values (n.tenancy_id, n.id), (o.tenancy_id, o.id)) as x(tenancy_id, id)
        where x.id is not null
          and (n.id is null or o.id is null
               or n.is_anonymous <> o.is_anonymous or n.signed_up_at <> o.signed_up_at)
        having count(*) > 0;
    end if;
    return null;
end;
$$;

comment on function app._tg_users_metrics() is
    'Statement trigger of app.users: refresh the metrics state of added, changed and removed users.';

-- copied from sql/functions/app._tg_user_facts_metrics.sql
-- app._tg_user_facts_metrics(): statement-level AFTER INSERT / UPDATE / DELETE trigger of
-- app.contact_channels (verified primary email) and app.auth_methods (login methods): both
-- have tenancy_id and user_id. Refreshes the metrics state of each user whose rows the
-- statement touched (old and new owner when a row moved), locking them first, in the same
-- transaction. Rows of users deleted by cascade find no user: the users trigger already
-- removed (or will remove) that user's counts, whichever fires first.
create or replace function app._tg_user_facts_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        perform app._refresh_user_metrics(array_agg(k.tenancy_id), array_agg(k.user_id), false, true)
        from (select distinct n.tenancy_id, n.user_id from new_rows n) k;
    elsif tg_op = 'DELETE' then
        perform app._refresh_user_metrics(array_agg(k.tenancy_id), array_agg(k.user_id), false, true)
        from (select distinct o.tenancy_id, o.user_id from old_rows o) k;
    elsif tg_table_name = 'contact_channels' then
        -- only what metrics read (the sequencer's stamping updates touch none of it); a FULL
        -- JOIN is planned as a hash or merge join, never a nested loop over transition tables
        perform app._refresh_user_metrics(array_agg(k.tenancy_id), array_agg(k.user_id), false, true)
        from (select distinct x.tenancy_id, x.user_id
              from new_rows n
              full join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
              cross join lateral (values (n.tenancy_id, n.user_id), (o.tenancy_id, o.user_id)) as x(tenancy_id, user_id)
              where x.user_id is not null
                and (n.id is null or o.id is null
                     or (n.user_id, n.type, n.is_primary, n.is_verified) is distinct from (o.user_id, o.type, o.is_primary, o.is_verified))) k
        having count(*) > 0;
    else
        perform app._refresh_user_metrics(array_agg(k.tenancy_id), array_agg(k.user_id), false, true)
        from (select distinct x.tenancy_id, x.user_id
              from new_rows n
              full join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
              cross join lateral (values (n.tenancy_id, n.user_id), (o.tenancy_id, o.user_id)) as x(tenancy_id, user_id)
              where x.user_id is not null
                and (n.id is null or o.id is null
                     or (n.user_id, n.kind, n.provider) is distinct from (o.user_id, o.kind, o.provider))) k
        having count(*) > 0;
    end if;
    return null;
end;
$$;

comment on function app._tg_user_facts_metrics() is
    'Statement trigger of app.contact_channels and app.auth_methods: refresh the metrics state of the users touched.';

-- copied from sql/functions/app._tg_events_metrics.sql
-- app._tg_events_metrics(): statement-level AFTER INSERT / UPDATE / DELETE trigger of
-- app.events. Only '$user-activity' events with a user count. Inserts add to the users'
-- active days (app._apply_activity) and fold into their last active time and latest
-- country (app._apply_latest_activity): no per-row work, two set-based calls. Deletes and
-- updates subtract (and add) active days, then re-read last activity and latest country of
-- the users concerned from app.events (app._refresh_user_metrics), since a deleted event may
-- have been the latest one.
create or replace function app._tg_events_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
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

-- copied from sql/functions/app._tg_teams_metrics.sql
-- app._tg_teams_metrics(): statement-level AFTER INSERT / DELETE trigger of app.teams: keeps
-- the per-tenancy "teams" counter (total_teams of app.metrics) in the same transaction.
-- Tenancies that no longer exist (deleted with their teams) are skipped.
create or replace function app._tg_teams_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        insert into app.metrics_counters as c (tenancy_id, metric, bucket, is_anonymous, n)
        select n.tenancy_id, 'teams', '', false, count(*) from new_rows n group by 1 order by 1
        on conflict (tenancy_id, metric, bucket, is_anonymous) do update set n = c.n + excluded.n;
    else
        insert into app.metrics_counters as c (tenancy_id, metric, bucket, is_anonymous, n)
        select o.tenancy_id, 'teams', '', false, -count(*) from old_rows o
        where exists (select 1 from app.tenancies t where t.id = o.tenancy_id)
        group by 1 order by 1
        on conflict (tenancy_id, metric, bucket, is_anonymous) do update set n = c.n + excluded.n;
    end if;
    return null;
end;
$$;

comment on function app._tg_teams_metrics() is
    'Statement trigger of app.teams: keep the per-tenancy team counter.';

-- copied from sql/functions/app._rebuild_metrics.sql
-- app._rebuild_metrics(p_tenancy_id uuid default null): rebuild the metrics rollups
-- (app.metrics_active_days, app.metrics_user_state, app.metrics_counters) of one tenancy, or
-- of all when null, from the source tables, set-based. The migration backfills with it; tests
-- compare the trigger-maintained rollups with a rebuild. Takes SHARE locks on app.users,
-- app.events, app.contact_channels, app.auth_methods and app.teams so no write slips between
-- the delete and the rebuild. Returns the number of users whose state was built.
create or replace function app._rebuild_metrics(p_tenancy_id uuid default null)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_users bigint;
begin
    lock table app.users, app.events, app.contact_channels, app.auth_methods, app.teams in share mode;
    delete from app.metrics_counters where p_tenancy_id is null or tenancy_id = p_tenancy_id;
    delete from app.metrics_user_state where p_tenancy_id is null or tenancy_id = p_tenancy_id;
    delete from app.metrics_active_days where p_tenancy_id is null or tenancy_id = p_tenancy_id;

    insert into app.metrics_active_days (tenancy_id, user_id, day, events)
    select e.tenancy_id, e.user_id, (e.occurred_at at time zone 'UTC')::date, count(*)
    from app.events e
    where e.event_type = '$user-activity' and e.user_id is not null
      and (p_tenancy_id is null or e.tenancy_id = p_tenancy_id)
    group by 1, 2, 3;

    perform app._refresh_user_metrics(array_agg(u.tenancy_id), array_agg(u.id), true, false)
    from app.users u
    where p_tenancy_id is null or u.tenancy_id = p_tenancy_id;
    get diagnostics v_users = row_count;

    insert into app.metrics_counters (tenancy_id, metric, bucket, is_anonymous, n)
    select t.tenancy_id, 'teams', '', false, count(*)
    from app.teams t
    where p_tenancy_id is null or t.tenancy_id = p_tenancy_id
    group by 1;

    select count(*) into v_users from app.metrics_user_state
    where p_tenancy_id is null or tenancy_id = p_tenancy_id;
    return v_users;
end;
$$;

comment on function app._rebuild_metrics(uuid) is
    'Rebuild the metrics rollups of one tenancy (or all) from the source tables; returns the users built.';

-- copied from sql/functions/app.metrics.sql
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

-- copied from sql/functions/pyglue.purge_cache_entries.sql
-- pyglue.purge_cache_entries(p_namespace text default null): delete the expired rows of
-- pyglue.cache_entries (of one namespace, or all). Cached functions call it on every miss,
-- so the table holds at most the keys used within one TTL; it can also run from anywhere.
-- Returns the number of rows deleted. Takes row locks on the deleted rows only; rows locked
-- by a writer are skipped (SKIP LOCKED) and purged next time.
create or replace function pyglue.purge_cache_entries(p_namespace text default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_deleted bigint;
begin
    delete from pyglue.cache_entries c
    where (c.namespace, c.key) in (select e.namespace, e.key from pyglue.cache_entries e
                                   where e.expires_at <= clock_timestamp()
                                     and (p_namespace is null or e.namespace = p_namespace)
                                   for update skip locked);
    get diagnostics v_deleted = row_count;
    return v_deleted;
end;
$$;

comment on function pyglue.purge_cache_entries(text) is
    'Delete expired rows of pyglue.cache_entries (one namespace or all); returns how many.';

-- copied from sql/functions/app.metrics_cached.sql
-- app.metrics_cached(p_tenancy_id, p_include_anonymous, p_now, p_ttl interval default
-- '1 hour'): app.metrics through the TTL cache pyglue.cache_entries (namespace
-- 'app.metrics'). The key holds every parameter, with p_now as its UTC day (so a cached day
-- series never lags across midnight, and calls with now() within one day share a row):
-- '<tenancy>|<include_anonymous>|<UTC day>|<ttl>'. A hit returns the stored value; on a miss
-- the caller takes a transaction advisory lock on a hash of the key, looks again (a new
-- statement, so it sees a value another session committed while it waited), and only then
-- computes, stores (upsert: one row per key) and purges expired rows. So concurrent misses
-- compute once; the others wait for the first to commit and reuse its row.
-- Locks: pg_advisory_xact_lock(hashtextextended('pyglue.cache_entries|app.metrics|' || key, 0)),
-- held to the end of the caller's transaction (call it outside long transactions; under
-- REPEATABLE READ a waiter cannot see the committed row and computes again).
-- Errors: p_ttl must be positive (22023).
create or replace function app.metrics_cached(p_tenancy_id uuid, p_include_anonymous boolean default false,
                                              p_now timestamptz default now(), p_ttl interval default '1 hour')
returns jsonb
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_key text := format('%s|%s|%s|%s', p_tenancy_id, p_include_anonymous,
                         to_char(p_now at time zone 'UTC', 'YYYY-MM-DD'), p_ttl);
    v_value jsonb;
begin
    if p_ttl is null or p_ttl <= interval '0' then
        raise exception 'p_ttl must be a positive interval, got %', coalesce(p_ttl::text, 'null')
            using errcode = '22023';
    end if;
    select c.value into v_value from pyglue.cache_entries c
    where c.namespace = 'app.metrics' and c.key = v_key and c.expires_at > clock_timestamp();
    if found then
        return v_value;
    end if;
    perform pg_advisory_xact_lock(hashtextextended('pyglue.cache_entries|app.metrics|' || v_key, 0));
    select c.value into v_value from pyglue.cache_entries c
    where c.namespace = 'app.metrics' and c.key = v_key and c.expires_at > clock_timestamp();
    if found then
        return v_value;
    end if;
    v_value := app.metrics(p_tenancy_id, p_include_anonymous, p_now);
    insert into pyglue.cache_entries as c (namespace, key, value, expires_at)
    values ('app.metrics', v_key, v_value, clock_timestamp() + p_ttl)
    on conflict (namespace, key) do update set value = excluded.value, expires_at = excluded.expires_at,
                                               created_at = clock_timestamp();
    perform pyglue.purge_cache_entries('app.metrics');
    return v_value;
end;
$$;

comment on function app.metrics_cached(uuid, boolean, timestamptz, interval) is
    'app.metrics through the TTL cache pyglue.cache_entries: one computation per key at a time; expired rows purged.';

-- copied from sql/functions/app.list_users.sql
-- app.list_users(p_tenancy_id uuid, p_limit integer default 50, p_cursor text default null,
-- p_query text default null, p_team_id uuid default null, p_include_anonymous boolean
-- default false, p_desc boolean default false): one page of a tenancy's users ordered by
-- (signed_up_at, id), ascending or (p_desc) descending, as jsonb
-- {"items": [user objects as in app.metrics], "next_cursor": text | null}. Pass next_cursor
-- back as p_cursor (with the same filters and direction) for the next page; null means the
-- last page. Keyset pagination: a page costs the same at the start and at the end.
-- p_query: case-insensitive substring of the display name or of any contact channel value
-- (LIKE wildcards in it are literal). p_team_id: members of that team only.
-- How a filtered page is found: first by walking the (tenancy_id, signed_up_at, id) index
-- from the cursor, testing each user, for at most 2,000 users (fast when matches are
-- common); when that does not fill the page, from the set of matching users (the pg_trgm GIN
-- indexes where the extension is installed, a scan of users and channels where it is not;
-- or the team's members), sorted by the key.
-- Errors (22023): p_limit above 200 ("p_limit 500 exceeds the maximum page size 200") or
-- below 1; a malformed cursor ("malformed cursor 'x'").
create or replace function app.list_users(p_tenancy_id uuid, p_limit integer default 50, p_cursor text default null,
                                          p_query text default null, p_team_id uuid default null,
                                          p_include_anonymous boolean default false, p_desc boolean default false)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    c_max_limit constant integer := 200;
    c_walk constant integer := 2000;
    v_ts timestamptz;
    v_id uuid;
    v_parts text[];
    v_pattern text := case when nullif(p_query, '') is null then null
                           else '%' || replace(replace(replace(p_query, '\', '\\'), '%', '\%'), '_', '\_') || '%' end;
    v_anon boolean[] := case when p_include_anonymous then array[false, true] else array[false] end;
    v_op text := case when p_desc then '<' else '>' end;
    v_dir text := case when p_desc then 'desc' else 'asc' end;
    v_keyset text;
    v_filter text;
    v_rows jsonb[];
    v_keys text[];
    v_more boolean;
begin
    if p_limit is null or p_limit > c_max_limit then
        raise exception 'p_limit % exceeds the maximum page size %', coalesce(p_limit::text, 'null'), c_max_limit
            using errcode = '22023', hint = format('pass a p_limit between 1 and %s', c_max_limit);
    elsif p_limit < 1 then
        raise exception 'p_limit % is below the minimum page size 1', p_limit
            using errcode = '22023', hint = format('pass a p_limit between 1 and %s', c_max_limit);
    end if;
    if p_cursor is not null then
        v_parts := regexp_match(p_cursor, '^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$');
        begin
            v_ts := v_parts[1]::timestamptz;
            v_id := v_parts[2]::uuid;
        exception when others then
            v_ts := null;
        end;
        if v_ts is null then
            raise exception 'malformed cursor %', quote_literal(p_cursor)
                using errcode = '22023', hint = 'pass the next_cursor of a previous page unchanged';
        end if;
    end if;

    v_keyset := case when v_ts is null then 'true'
                     else format('(u.signed_up_at, u.id) %s ($2, $3)', v_op) end;
    v_filter := 'u.is_anonymous = any ($4)'
        || case when v_pattern is null then ''
                else ' and (u.display_name ilike $5 or exists (select 1 from app.contact_channels c'
                     || ' where c.tenancy_id = u.tenancy_id and c.user_id = u.id and c.value ilike $5))' end
        || case when p_team_id is null then ''
                else ' and exists (select 1 from app.team_members m where m.tenancy_id = u.tenancy_id'
                     || ' and m.team_id = $6 and m.user_id = u.id)' end;

    -- 1. walk the key index from the cursor (all the way when only the anonymous flag filters)
    execute format(
        'select array_agg(app._user_json(w.r) order by w.signed_up_at %1$s, w.id %1$s),'
        '       array_agg(to_char(w.signed_up_at at time zone ''UTC'', ''YYYY-MM-DD"T"HH24:MI:SS.US"Z"'') || ''/'' || w.id'
        '                 order by w.signed_up_at %1$s, w.id %1$s)'
        ' from (select u.r, u.signed_up_at, u.id'
        '       from (select u as r, u.tenancy_id, u.id, u.signed_up_at, u.is_anonymous, u.display_name'
        '             from app.users u where u.tenancy_id = $1 and %2$s'
        '             order by u.signed_up_at %1$s, u.id %1$s limit $8) u'
        '       where %3$s order by u.signed_up_at %1$s, u.id %1$s limit $7) w',
        v_dir, v_keyset, v_filter)
    into v_rows, v_keys
    using p_tenancy_id, v_ts, v_id, v_anon, v_pattern, p_team_id, p_limit + 1,
          case when v_pattern is null and p_team_id is null then null else c_walk end;

    -- 2. not filled within the walk and users remain: page through the matching set instead
    if coalesce(cardinality(v_rows), 0) <= p_limit and (v_pattern is not null or p_team_id is not null) then
        execute format('select count(*) >= $4 from (select 1 from app.users u where u.tenancy_id = $1 and %s'
                       ' order by u.signed_up_at %s, u.id %s limit $4) w', v_keyset, v_dir, v_dir)
        into v_more using p_tenancy_id, v_ts, v_id, c_walk;
        if v_more then
            execute format(
                'with candidates as (%4$s)'
                ' select array_agg(app._user_json(w.r) order by w.signed_up_at %1$s, w.id %1$s),'
                '        array_agg(to_char(w.signed_up_at at time zone ''UTC'', ''YYYY-MM-DD"T"HH24:MI:SS.US"Z"'') || ''/'' || w.id'
                '                  order by w.signed_up_at %1$s, w.id %1$s)'
                ' from (select u as r, u.signed_up_at, u.id'
                '       from candidates k join app.users u on u.tenancy_id = $1 and u.id = k.user_id'
                '       where %2$s and %3$s order by u.signed_up_at %1$s, u.id %1$s limit $7) w',
                v_dir, v_keyset, v_filter,
                case when v_pattern is not null then
                    'select u.id as user_id from app.users u where u.tenancy_id = $1 and u.display_name ilike $5'
                    ' union select c.user_id from app.contact_channels c where c.tenancy_id = $1 and c.value ilike $5'
                else
                    'select m.user_id from app.team_members m where m.tenancy_id = $1 and m.team_id = $6'
                end)
            into v_rows, v_keys
            using p_tenancy_id, v_ts, v_id, v_anon, v_pattern, p_team_id, p_limit + 1;
        end if;
    end if;

    return jsonb_build_object(
        'items', coalesce(to_jsonb(v_rows[1:p_limit]), '[]'),
        'next_cursor', case when coalesce(cardinality(v_rows), 0) > p_limit then v_keys[p_limit] end);
end;
$$;

comment on function app.list_users(uuid, integer, text, text, uuid, boolean, boolean) is
    'One keyset page of a tenancy''s users by (signed_up_at, id), with search, team and anonymous filters: {items, next_cursor}.';

create trigger _500_metrics_insert after insert on app.users
    referencing new table as new_rows for each statement execute function app._tg_users_metrics();
create trigger _500_metrics_update after update on app.users
    referencing old table as old_rows new table as new_rows for each statement execute function app._tg_users_metrics();
create trigger _500_metrics_delete after delete on app.users
    referencing old table as old_rows for each statement execute function app._tg_users_metrics();
create trigger _500_metrics_insert after insert on app.contact_channels
    referencing new table as new_rows for each statement execute function app._tg_user_facts_metrics();
create trigger _500_metrics_update after update on app.contact_channels
    referencing old table as old_rows new table as new_rows for each statement execute function app._tg_user_facts_metrics();
create trigger _500_metrics_delete after delete on app.contact_channels
    referencing old table as old_rows for each statement execute function app._tg_user_facts_metrics();
create trigger _500_metrics_insert after insert on app.auth_methods
    referencing new table as new_rows for each statement execute function app._tg_user_facts_metrics();
create trigger _500_metrics_update after update on app.auth_methods
    referencing old table as old_rows new table as new_rows for each statement execute function app._tg_user_facts_metrics();
create trigger _500_metrics_delete after delete on app.auth_methods
    referencing old table as old_rows for each statement execute function app._tg_user_facts_metrics();
create trigger _500_metrics_insert after insert on app.events
    referencing new table as new_rows for each statement execute function app._tg_events_metrics();
create trigger _500_metrics_update after update on app.events
    referencing old table as old_rows new table as new_rows for each statement execute function app._tg_events_metrics();
create trigger _500_metrics_delete after delete on app.events
    referencing old table as old_rows for each statement execute function app._tg_events_metrics();
create trigger _500_metrics_insert after insert on app.teams
    referencing new table as new_rows for each statement execute function app._tg_teams_metrics();
create trigger _500_metrics_delete after delete on app.teams
    referencing old table as old_rows for each statement execute function app._tg_teams_metrics();

-- rollups of the rows that exist already
select app._rebuild_metrics();
