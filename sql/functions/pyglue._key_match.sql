-- pyglue._key_match(p_table, p_row, p_log): the join condition of a tracked table's rows
-- (alias p_row) to entries of pyglue.changed_rows (alias p_log), one typed equality per
-- primary key column, so the row side is probed through the table's primary key:
-- "r.tenancy_id = (l.primary_key ->> 'tenancy_id')::uuid and r.id = (...)::uuid".
-- The entries hold the key as jsonb_build_object of its columns (pyglue.track_table's log
-- function), whose text form every key type reads back.
create or replace function pyglue._key_match(p_table regclass, p_row text, p_log text)
returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select string_agg(format('%s.%I = (%s.primary_key ->> %L)::%s', p_row, a.attname, p_log, a.attname,
                             format_type(a.atttypid, a.atttypmod)), ' and ' order by k.ord)
    from pyglue.tracked_tables t
    cross join lateral unnest(t.key_columns) with ordinality as k(attname, ord)
    join pg_attribute a on a.attrelid = t.table_name and a.attname = k.attname
    where t.table_name = p_table;
$$;

comment on function pyglue._key_match(regclass, text, text) is
    'Join condition of a tracked table''s rows to their pyglue.changed_rows entries, by primary key.';
