-- Rollback of 0019: the search rows, their triggers and the TRUNCATE triggers go;
-- app.list_users and the users and events metrics triggers get back their 0017 definitions
-- (copied below), and the two trigram indexes come back.
drop trigger if exists _510_user_search_insert on app.users;
drop trigger if exists _510_user_search_update on app.users;
drop trigger if exists _510_user_search_delete on app.users;
drop trigger if exists _510_user_search_insert on app.contact_channels;
drop trigger if exists _510_user_search_update on app.contact_channels;
drop trigger if exists _510_user_search_delete on app.contact_channels;
drop trigger if exists _510_metrics_truncate on app.users;
drop trigger if exists _510_metrics_truncate on app.contact_channels;
drop trigger if exists _510_metrics_truncate on app.auth_methods;
drop trigger if exists _510_metrics_truncate on app.events;
drop trigger if exists _510_metrics_truncate on app.teams;
drop function if exists app._tg_truncate_metrics();
drop function if exists app._tg_user_search();
drop function if exists app._refresh_user_search(uuid[], uuid[]);
-- copied from sql/functions/app._tg_users_metrics.sql as of 0017_metrics
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

-- copied from sql/functions/app._tg_events_metrics.sql as of 0017_metrics
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
drop function if exists app._lock_user_activity(uuid[], boolean);
drop table if exists app.user_search;
do $trgm$
declare
    v_schema name;
begin
    if exists (select 1 from pg_extension where extname = 'pg_trgm') then
        select n.nspname into v_schema
        from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'pg_trgm';
        execute format('create index if not exists users_display_name_trgm_idx on app.users'
                       ' using gin (display_name %I.gin_trgm_ops)', v_schema);
        execute format('create index if not exists contact_channels_value_trgm_idx on app.contact_channels'
                       ' using gin (value %I.gin_trgm_ops)', v_schema);
    end if;
end;
$trgm$;

-- copied from sql/functions/app.list_users.sql as of 0017_metrics
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
