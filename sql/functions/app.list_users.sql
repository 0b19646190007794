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
