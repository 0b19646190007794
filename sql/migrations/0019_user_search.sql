-- user search rows (issue 12): app.user_search holds per user the lower-cased display name
-- and contact channel values (one per line) beside the sign-up key and the anonymous flag,
-- kept by statement triggers of app.users and app.contact_channels in the same transaction.
-- app.list_users walks these narrow rows instead of users joined to channels, and searches
-- them with one trigram GIN index (where pg_trgm is installed) instead of two, or by a scan
-- of the narrow rows where it is not. TRUNCATE of a metrics source rebuilds the rollups. A
-- per-tenancy metrics lock makes an activity event and the creation of its user, written at
-- the same time, see one another (app._lock_user_activity).
-- depends: 0018_refunds

create table if not exists app.user_search (
    tenancy_id uuid not null references app.tenancies (id) on delete cascade,
    user_id uuid not null,
    signed_up_at timestamptz not null,
    is_anonymous boolean not null,
    haystack text not null,
    constraint user_search_pkey primary key (tenancy_id, user_id)
);
comment on table app.user_search is
    'Per user: lower-cased display name and contact channel values, one per line, for app.list_users; kept by trigger.';
-- the walk of app.list_users: key order from a cursor
create index if not exists user_search_key_idx on app.user_search (tenancy_id, signed_up_at, user_id);

-- the trigram indexes of 0017 are replaced by one on the search rows
drop index if exists app.users_display_name_trgm_idx;
drop index if exists app.contact_channels_value_trgm_idx;
do $trgm$
declare
    v_schema name;
begin
    select n.nspname into v_schema
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'pg_trgm';
    if v_schema is not null then
        execute format('create index if not exists user_search_haystack_trgm_idx on app.user_search'
                       ' using gin (haystack %I.gin_trgm_ops)', v_schema);
    end if;
end;
$trgm$;

-- copied from sql/functions/app._lock_user_activity.sql
-- app._lock_user_activity(p_tenancy_ids uuid[], p_exclusive boolean): the metrics lock of
-- each distinct tenancy (a transaction advisory lock, in tenancy order), exclusive for a
-- statement that creates, deletes or re-keys users or flips their anonymous flag, shared for
-- one that writes activity events. Without it an event committed while its user was being
-- created (two transactions in flight) was missed by both: the event's trigger found no user
-- state to fold into, and the user's refresh read events before the event was committed.
-- With it the later of the two waits for the earlier to commit, and then reads what it wrote.
-- Event writers do not wait for each other; user writers of one tenancy already wait for one
-- another on the day's sign-up counter row. STRICT: null arrays lock nothing.
create or replace function app._lock_user_activity(p_tenancy_ids uuid[], p_exclusive boolean)
returns void
language plpgsql
strict
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy uuid;
begin
    for v_tenancy in select distinct t from unnest(p_tenancy_ids) as t where t is not null order by 1 loop
        if p_exclusive then
            perform pg_advisory_xact_lock(hashtextextended('app.metrics user activity|' || v_tenancy, 0));
        else
            perform pg_advisory_xact_lock_shared(hashtextextended('app.metrics user activity|' || v_tenancy, 0));
        end if;
    end loop;
end;
$$;

comment on function app._lock_user_activity(uuid[], boolean) is
    'Per-tenancy metrics lock: exclusive for user creation/deletion/flag changes, shared for activity events.';

-- copied from sql/functions/app._tg_users_metrics.sql
-- app._tg_users_metrics(): statement-level AFTER INSERT / UPDATE / DELETE trigger of
-- app.users (UPDATE only of the columns metrics read: tenancy_id, id, is_anonymous,
-- signed_up_at). Refreshes the metrics state of every user the statement added, changed or
-- removed (app._refresh_user_metrics), in the same transaction: sign-ups per day, the
-- anonymous split of every counter, and the counts a deleted user leaves.
-- Takes the tenancies' metrics lock exclusively first (app._lock_user_activity), so an
-- activity event written at the same time is either seen by the refresh or sees the state.
-- SECURITY DEFINER: a role that may write users need not be able to write rollups.
create or replace function app._tg_users_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy_ids uuid[];
    v_user_ids uuid[];
begin
    -- a transition table the trigger does not have cannot be named: one branch per operation
    if tg_op = 'INSERT' then
        select array_agg(n.tenancy_id), array_agg(n.id) into v_tenancy_ids, v_user_ids from new_rows n;
    elsif tg_op = 'DELETE' then
        select array_agg(o.tenancy_id), array_agg(o.id) into v_tenancy_ids, v_user_ids from old_rows o;
    else
        -- a FULL JOIN is planned as a hash or merge join, never as a nested loop over two
        -- transition tables (the sequencer's stamping updates are large and change nothing here)
        select array_agg(x.tenancy_id), array_agg(x.id) into v_tenancy_ids, v_user_ids
        from new_rows n
        full join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
        cross join lateral (values (n.tenancy_id, n.id), (o.tenancy_id, o.id)) as x(tenancy_id, id)
        where x.id is not null
          and (n.id is null or o.id is null
               or n.is_anonymous <> o.is_anonymous or n.signed_up_at <> o.signed_up_at);
    end if;
    if v_user_ids is not null then
        perform app._lock_user_activity(v_tenancy_ids, true);
        -- inserted users are invisible to others: no row locks needed
        perform app._refresh_user_metrics(v_tenancy_ids, v_user_ids, false, tg_op <> 'INSERT');
    end if;
    return null;
end;
$$;

comment on function app._tg_users_metrics() is
    'Statement trigger of app.users: refresh the metrics state of added, changed and removed users.';

-- copied from sql/functions/app._tg_events_metrics.sql
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

-- copied from sql/functions/app._refresh_user_search.sql
-- app._refresh_user_search(p_tenancy_ids uuid[], p_user_ids uuid[]): bring the search rows of
-- these users (app.user_search) up to date with app.users and app.contact_channels: the
-- lower-cased display name and channel values, one per line, beside the sign-up key and the
-- anonymous flag; users that no longer exist lose their row.
-- Concurrent writers of the same user: the rows are locked first (key order), then read again
-- by the next statements, which in READ COMMITTED see every change committed before the lock
-- was granted, so the last writer to commit never leaves a haystack that misses the
-- other's channel. STRICT: nothing to do for null arrays.
create or replace function app._refresh_user_search(p_tenancy_ids uuid[], p_user_ids uuid[])
returns void
language plpgsql
strict
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
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

    delete from app.user_search s
    using unnest(p_tenancy_ids, p_user_ids) as k(t, u)
    where s.tenancy_id = k.t and s.user_id = k.u
      and not exists (select 1 from app.users u where u.tenancy_id = k.t and u.id = k.u);
end;
$$;

comment on function app._refresh_user_search(uuid[], uuid[]) is
    'Recompute the app.user_search rows (lower-cased name and channel values) of the given users.';

-- copied from sql/functions/app._tg_user_search.sql
-- app._tg_user_search(): statement-level AFTER INSERT / UPDATE / DELETE trigger of app.users
-- and app.contact_channels: the users the statement touched get their search rows
-- recomputed (app._refresh_user_search) in the same transaction. An update that changes no
-- searched column (display_name, signed_up_at, is_anonymous of a user; user_id, value of a
-- channel), such as the sequencer's stamping, costs one join of the transition tables.
create or replace function app._tg_user_search()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_table_name = 'users' then
        if tg_op = 'INSERT' then
            perform app._refresh_user_search(array_agg(n.tenancy_id), array_agg(n.id)) from new_rows n;
        elsif tg_op = 'DELETE' then
            perform app._refresh_user_search(array_agg(o.tenancy_id), array_agg(o.id)) from old_rows o;
        else
            perform app._refresh_user_search(array_agg(k.tenancy_id), array_agg(k.id))
            from (select n.tenancy_id, n.id from new_rows n
                  left join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
                  where (n.display_name, n.signed_up_at, n.is_anonymous)
                        is distinct from (o.display_name, o.signed_up_at, o.is_anonymous)
                  union
                  select o.tenancy_id, o.id from old_rows o
                  where not exists (select 1 from new_rows n where n.tenancy_id = o.tenancy_id and n.id = o.id)) k;
        end if;
    elsif tg_op = 'INSERT' then
        perform app._refresh_user_search(array_agg(n.tenancy_id), array_agg(n.user_id)) from new_rows n;
    elsif tg_op = 'DELETE' then
        perform app._refresh_user_search(array_agg(o.tenancy_id), array_agg(o.user_id)) from old_rows o;
    else
        perform app._refresh_user_search(array_agg(k.tenancy_id), array_agg(k.user_id))
        from (select n.tenancy_id, n.user_id from new_rows n
              left join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
              where (n.user_id, n.value) is distinct from (o.user_id, o.value)
              union
              select o.tenancy_id, o.user_id from old_rows o
              left join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
              where (n.user_id, n.value) is distinct from (o.user_id, o.value)) k;
    end if;
    return null;
end;
$$;

comment on function app._tg_user_search() is
    'Statement trigger of app.users and app.contact_channels: recompute the touched users'' search rows.';

-- copied from sql/functions/app._tg_truncate_metrics.sql
-- app._tg_truncate_metrics(): statement-level AFTER TRUNCATE trigger of app.users,
-- app.contact_channels, app.auth_methods, app.events and app.teams. A TRUNCATE has no
-- transition table, so the rollups it leaves behind are rebuilt from what remains, in the
-- truncating transaction: the metrics rollups (app._rebuild_metrics) and, for users and
-- channels, the search rows. Costs a rebuild of every tenancy: TRUNCATE is a rare,
-- whole-table operation.
create or replace function app._tg_truncate_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform app._rebuild_metrics(null);
    if tg_table_name in ('users', 'contact_channels') then
        delete from app.user_search;
        perform app._refresh_user_search(array_agg(u.tenancy_id), array_agg(u.id)) from app.users u;
    end if;
    return null;
end;
$$;

comment on function app._tg_truncate_metrics() is
    'TRUNCATE trigger of the metrics sources: rebuild the metrics rollups and search rows from what remains.';

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
-- How a filtered page is found: the search rows app.user_search (lower-cased name and
-- channel values, kept by trigger) are walked from the cursor in key order, at most 20,000
-- of them (a few milliseconds; a page of a common term fills early); when that does not fill
-- the page and users remain (setting app.list_users_walk changes the 20,000), the matching
-- set is taken instead (the pg_trgm GIN index of
-- app.user_search where the extension is installed, else a scan of the narrow search rows;
-- or the team's members) and sorted by the key.
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
    -- the setting lets tests make the walk short, so its fallback runs on small data
    c_walk constant integer := coalesce(nullif(current_setting('app.list_users_walk', true), '')::integer, 20000);
    v_ts timestamptz;
    v_id uuid;
    v_parts text[];
    v_pattern text := case when nullif(p_query, '') is null then null
                           else '%' || replace(replace(replace(p_query, '\', '\\'), '%', '\%'), '_', '\_') || '%' end;
    v_needle text := lower(nullif(p_query, ''));
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
                     else format('(s.signed_up_at, s.user_id) %s ($2, $3)', v_op) end;
    -- a line break in the query could match across two values of the haystack: those
    -- matches are checked on the values themselves
    v_filter := 's.is_anonymous = any ($4)'
        || case when v_needle is null then ''
                when position(chr(10) in v_needle) = 0 then ' and strpos(s.haystack, $5) > 0'
                else ' and strpos(s.haystack, $5) > 0 and (exists (select 1 from app.users u where u.tenancy_id = $1'
                     || ' and u.id = s.user_id and u.display_name ilike $9) or exists (select 1 from app.contact_channels c'
                     || ' where c.tenancy_id = $1 and c.user_id = s.user_id and c.value ilike $9))' end
        || case when p_team_id is null then ''
                else ' and exists (select 1 from app.team_members m where m.tenancy_id = $1'
                     || ' and m.team_id = $6 and m.user_id = s.user_id)' end;

    -- 1. walk the search rows from the cursor (all the way when only the anonymous flag filters)
    execute format(
        'select array_agg(app._user_json(u) order by w.signed_up_at %1$s, w.user_id %1$s),'
        '       array_agg(to_char(w.signed_up_at at time zone ''UTC'', ''YYYY-MM-DD"T"HH24:MI:SS.US"Z"'') || ''/'' || w.user_id'
        '                 order by w.signed_up_at %1$s, w.user_id %1$s)'
        ' from (select s.user_id, s.signed_up_at'
        '       from (select s.user_id, s.signed_up_at, s.is_anonymous, s.haystack'
        '             from app.user_search s where s.tenancy_id = $1 and %2$s'
        '             order by s.signed_up_at %1$s, s.user_id %1$s limit $8) s'
        '       where %3$s order by s.signed_up_at %1$s, s.user_id %1$s limit $7) w'
        ' join app.users u on u.tenancy_id = $1 and u.id = w.user_id',
        v_dir, v_keyset, v_filter)
    into v_rows, v_keys
    using p_tenancy_id, v_ts, v_id, v_anon, v_needle, p_team_id, p_limit + 1,
          case when v_needle is null and p_team_id is null then null else c_walk end, v_pattern;

    -- 2. not filled within the walk and users remain: page through the matching set instead
    if coalesce(cardinality(v_rows), 0) <= p_limit and (v_needle is not null or p_team_id is not null) then
        execute format('select count(*) >= $4 from (select 1 from app.user_search s where s.tenancy_id = $1 and %s'
                       ' order by s.signed_up_at %s, s.user_id %s limit $4) w', v_keyset, v_dir, v_dir)
        into v_more using p_tenancy_id, v_ts, v_id, c_walk;
        if v_more then
            execute format(
                'select array_agg(app._user_json(u) order by w.signed_up_at %1$s, w.user_id %1$s),'
                '       array_agg(to_char(w.signed_up_at at time zone ''UTC'', ''YYYY-MM-DD"T"HH24:MI:SS.US"Z"'') || ''/'' || w.user_id'
                '                 order by w.signed_up_at %1$s, w.user_id %1$s)'
                ' from (select s.user_id, s.signed_up_at from app.user_search s'
                '       where s.tenancy_id = $1 and %2$s and %3$s and %4$s'
                '       order by s.signed_up_at %1$s, s.user_id %1$s limit $7) w'
                ' join app.users u on u.tenancy_id = $1 and u.id = w.user_id',
                v_dir, v_keyset, v_filter,
                case when v_needle is not null then 's.haystack like $10'
                     else 's.user_id in (select m.user_id from app.team_members m where m.tenancy_id = $1 and m.team_id = $6)' end)
            into v_rows, v_keys
            using p_tenancy_id, v_ts, v_id, v_anon, v_needle, p_team_id, p_limit + 1, null::integer, v_pattern,
                  lower(v_pattern);
        end if;
    end if;

    return jsonb_build_object(
        'items', coalesce(to_jsonb(v_rows[1:p_limit]), '[]'),
        'next_cursor', case when coalesce(cardinality(v_rows), 0) > p_limit then v_keys[p_limit] end);
end;
$$;

comment on function app.list_users(uuid, integer, text, text, uuid, boolean, boolean) is
    'One keyset page of a tenancy''s users by (signed_up_at, id), with search, team and anonymous filters: {items, next_cursor}.';

create trigger _510_user_search_insert after insert on app.users
    referencing new table as new_rows for each statement execute function app._tg_user_search();
create trigger _510_user_search_update after update on app.users
    referencing old table as old_rows new table as new_rows for each statement execute function app._tg_user_search();
create trigger _510_user_search_delete after delete on app.users
    referencing old table as old_rows for each statement execute function app._tg_user_search();
create trigger _510_user_search_insert after insert on app.contact_channels
    referencing new table as new_rows for each statement execute function app._tg_user_search();
create trigger _510_user_search_update after update on app.contact_channels
    referencing old table as old_rows new table as new_rows for each statement execute function app._tg_user_search();
create trigger _510_user_search_delete after delete on app.contact_channels
    referencing old table as old_rows for each statement execute function app._tg_user_search();
create trigger _510_metrics_truncate after truncate on app.users
    for each statement execute function app._tg_truncate_metrics();
create trigger _510_metrics_truncate after truncate on app.contact_channels
    for each statement execute function app._tg_truncate_metrics();
create trigger _510_metrics_truncate after truncate on app.auth_methods
    for each statement execute function app._tg_truncate_metrics();
create trigger _510_metrics_truncate after truncate on app.events
    for each statement execute function app._tg_truncate_metrics();
create trigger _510_metrics_truncate after truncate on app.teams
    for each statement execute function app._tg_truncate_metrics();

-- search rows of the users that exist already
select app._refresh_user_search(array_agg(u.tenancy_id), array_agg(u.id)) from app.users u;
