-- 0028: bulk loads no longer go quadratic in the search-row and metrics refreshes.
-- - app._refresh_user_search finds the users gone by a join on the key, not NOT EXISTS, and
--   app._refresh_user_metrics reads the stored state once by a join on the key, not a left
--   join of the table. Where a tenancy looked small to the planner (many small tenancies
--   analyzed, then a big one loaded; or pages of dead rows never analyzed), those probes
--   took an index on tenancy_id alone and walked the whole tenancy per user: 2,000 users
--   and their emails read 6.2M rows, now 186k.
-- - Refreshes of 1,000 users or more first ANALYZE the tables they read that were analyzed
--   with fewer rows than the batch, or whose column statistics a rolled-back ANALYZE took
--   away (app._analyze_if_stale). Tables analyzed while empty (emptied, rolled back, or
--   analyzed right after the migrations): 10,000 users then their emails took 0.4 s + 37 s,
--   now 0.9 s + 0.5 s (embedded, perf/bench_bulk_load.py).
-- depends: 0027_sequencer_walks_the_log_by_key

-- copied from sql/functions/app._analyze_if_stale.sql
-- app._analyze_if_stale(p_rows bigint, p_tables regclass[]): before a refresh of p_rows users
-- reads p_tables, ANALYZE those of them that are not empty now, were analyzed once
-- (pg_class.reltuples not -1), and whose statistics were taken when they held fewer rows
-- than this one batch (reltuples below p_rows) or hold no column statistics (pg_stats) at
-- all: an ANALYZE whose transaction rolled back leaves its row count in pg_class but not its
-- column statistics. Nothing for batches under 1,000 rows or for empty tables.
-- Why: a table analyzed while it held no live rows (emptied, rolled back, or analyzed right
-- after the migrations) is planned as holding none, and a bulk load then made each per-user
-- lookup of the refresh triggers walk the whole tenancy through the smallest index that
-- starts with tenancy_id: quadratic. 10,000 users then their 10,000 emails in one
-- transaction (perf/bench_bulk_load.py): 0.4 s + 37 s without this, 0.9 s + 0.6 s with it
-- (embedded). Tables never analyzed are left alone: the planner sizes them by their pages,
-- and the refreshes' key joins did well there (analyzing them cost 0.55 s a load).
-- ANALYZE counts the rows of the calling transaction and runs as the tables' owner (security
-- definer). SKIP_LOCKED: a table another session analyzes or vacuums is skipped, not waited
-- for; the lock it takes (SHARE UPDATE EXCLUSIVE, held to the end of the transaction) does
-- not block readers or writers. Its warning when it skips is kept from the client.
create or replace function app._analyze_if_stale(p_rows bigint, p_tables regclass[])
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set client_min_messages = error
as $$
declare
    v_table regclass;
begin
    if p_rows < 1000 then
        return;
    end if;
    for v_table in
        select c.oid::regclass
        from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        where c.oid = any(p_tables) and c.reltuples >= 0 and pg_relation_size(c.oid) > 0
          and (c.reltuples < p_rows
               or not exists (select 1 from pg_stats s where s.schemaname = n.nspname and s.tablename = c.relname))
        order by c.oid
    loop
        execute format('analyze (skip_locked) %s', v_table);
    end loop;
end;
$$;

comment on function app._analyze_if_stale(bigint, regclass[]) is
    'ANALYZE the given tables whose statistics predate a batch of p_rows rows (1,000 or more), before a bulk refresh reads them.';

-- copied from sql/functions/app._refresh_user_search.sql
-- app._refresh_user_search(p_tenancy_ids uuid[], p_user_ids uuid[]): bring the search rows of
-- these users (app.user_search) up to date with app.users and app.contact_channels: the
-- lower-cased display name and channel values, one per line, beside the sign-up key and the
-- anonymous flag; users that no longer exist lose their row.
-- Concurrent writers of the same user: the rows are locked first (key order), then read again
-- by the next statements, which in READ COMMITTED see every change committed before the lock
-- was granted, so the last writer to commit never leaves a haystack that misses the
-- other's channel. STRICT: nothing to do for null arrays.
-- A batch of 1,000 users or more first has the statistics of the tables it reads refreshed
-- if they predate it (app._analyze_if_stale): a bulk load into tables analyzed while empty
-- would otherwise plan every lookup below as a walk of the whole tenancy.
create or replace function app._refresh_user_search(p_tenancy_ids uuid[], p_user_ids uuid[])
returns void
language plpgsql
strict
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform app._analyze_if_stale(cardinality(p_user_ids), '{app.users, app.contact_channels, app.user_search}');

    perform 1
    from app.user_search s
    where (s.tenancy_id, s.user_id) in (select k.t, k.u from unnest(p_tenancy_ids, p_user_ids) as k(t, u))
    order by s.tenancy_id, s.user_id
    for update of s;

    insert into app.user_search as s (tenancy_id, user_id, signed_up_at, is_anonymous, haystack)
    select u.tenancy_id, u.id, u.signed_up_at, u.is_anonymous,
           lower(coalesce(u.display_name, '')) || coalesce(ch.lines, '')
    from (select distinct k.t, k.u from unnest(p_tenancy_ids, p_user_ids) as k(t, u)) k
    join app.users u on u.tenancy_id = k.t and u.id = k.u
    left join lateral (
        select string_agg(chr(10) || lower(c.value), '' order by c.id) as lines
        from app.contact_channels c
        where c.tenancy_id = u.tenancy_id and c.user_id = u.id
    ) ch on true
    order by 1, 2
    on conflict (tenancy_id, user_id) do update
        set signed_up_at = excluded.signed_up_at, is_anonymous = excluded.is_anonymous, haystack = excluded.haystack
        where (s.signed_up_at, s.is_anonymous, s.haystack)
              is distinct from (excluded.signed_up_at, excluded.is_anonymous, excluded.haystack);

    -- the users gone: the keys less those found by a join (not NOT EXISTS: an anti join
    -- stops at a first match, and where a tenancy looks small to the planner it looked each
    -- key up through an index on tenancy_id alone, walking a big tenancy per key)
    delete from app.user_search s
    using (select k.t, k.u from unnest(p_tenancy_ids, p_user_ids) as k(t, u)
           except
           select u.tenancy_id, u.id
           from unnest(p_tenancy_ids, p_user_ids) as k(t, u)
           join app.users u on u.tenancy_id = k.t and u.id = k.u) as gone
    where s.tenancy_id = gone.t and s.user_id = gone.u;
end;
$$;

comment on function app._refresh_user_search(uuid[], uuid[]) is
    'Recompute the app.user_search rows (lower-cased name and channel values) of the given users.';

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
-- Keys of tenancies that no longer exist (a tenancy being deleted) are skipped. A batch of
-- 1,000 users or more first has stale statistics of the tables it reads refreshed
-- (app._analyze_if_stale), as app._refresh_user_search does.
-- Returns nothing; raises nothing of its own.
create or replace function app._refresh_user_metrics(p_tenancy_ids uuid[], p_user_ids uuid[],
                                                     p_recompute_activity boolean, p_lock boolean)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform app._analyze_if_stale(cardinality(p_user_ids),
                                  '{app.users, app.metrics_user_state, app.contact_channels, app.auth_methods,
                                    app.events, app.metrics_active_days, app.metrics_counters}');
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
    -- the stored state of these users, read once (a join by key, which the planner takes
    -- through the primary key even where a tenancy looks small to it) for fresh and pair
    o as (
        select s.* from app.metrics_user_state s join k on s.tenancy_id = k.tenancy_id and s.user_id = k.user_id
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
        left join o s on s.tenancy_id = k.tenancy_id and s.user_id = k.user_id
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
        from o
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
