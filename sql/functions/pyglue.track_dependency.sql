-- pyglue.track_dependency(p_table, p_source, p_columns, p_source_columns, p_watch):
-- re-flag rows of a tracked table when rows of another table they are synced with change.
--
-- A mapping that reads a second table (the users mapping reads each user's primary email
-- from app.contact_channels) declares it; this installs triggers on p_table that flag the
-- p_source rows whose p_source_columns equal the changed row's p_columns (old and new
-- values, so a row moved from one source row to another flags both): statement triggers
-- with transition tables for INSERT and DELETE, a row trigger for UPDATE limited by its
-- WHEN clause to changes of p_watch or p_columns (default: every column but the sequencer's),
-- so the sequencer's own stamping of p_table never re-flags anything.
--
-- Correct under concurrency: the trigger takes a row lock on every source row it concerns,
-- also on rows already flagged, in the writing transaction. The sequencer skips locked rows
-- (SKIP LOCKED), so it cannot stamp a source row while a transaction that changes what the
-- mapping reads for it is still open, and stamp it with the old data read; after the
-- commit the row is still flagged and a later pass stamps it.
--
-- Idempotent: an identical declaration changes nothing (no DDL, no lock); a changed one
-- replaces the triggers. Returns true when triggers were (re)installed.
-- Errors: 22023 p_source not tracked, p_table in schema pyglue or equal to p_source,
-- column lists empty or of different lengths; 42703 a column that does not exist.
-- Locks: SHARE ROW EXCLUSIVE on p_table while its triggers are created.
create or replace function pyglue.track_dependency(p_table regclass, p_source regclass, p_columns name[],
                                                   p_source_columns name[], p_watch name[] default null)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_watch name[];
    v_missing text;
    v_prefix text := '_500_pyglue_reflag_' || left(md5(p_source::text), 8);
    v_args text;
begin
    if not exists (select 1 from pyglue.tracked_tables t where t.table_name = p_source) then
        raise exception 'cannot track a dependency of %: it is not tracked (call pyglue.track_table first)', p_source
            using errcode = '22023';
    end if;
    if p_table = p_source or (select c.relnamespace::regnamespace::text from pg_class c where c.oid = p_table) = 'pyglue' then
        raise exception 'cannot track % as a dependency of %', p_table, p_source using errcode = '22023';
    end if;
    if coalesce(cardinality(p_columns), 0) = 0 or cardinality(p_columns) <> coalesce(cardinality(p_source_columns), 0) then
        raise exception 'dependency % -> %: columns % and % must be non-empty lists of the same length',
            p_table, p_source, p_columns, p_source_columns using errcode = '22023';
    end if;
    select string_agg(format('%s.%I', x.tab, x.col), ', ') into v_missing
    from (select p_table as tab, unnest(p_columns || coalesce(p_watch, '{}')) as col
          union all select p_source, unnest(p_source_columns)) x
    where not exists (select 1 from pg_attribute a
                      where a.attrelid = x.tab and a.attname = x.col and a.attnum > 0 and not a.attisdropped);
    if v_missing is not null then
        raise exception 'dependency % -> %: no column %', p_table, p_source, v_missing using errcode = '42703';
    end if;

    select array_agg(a.attname order by a.attnum) into v_watch
    from pg_attribute a
    where a.attrelid = p_table and a.attnum > 0 and not a.attisdropped
      and a.attname not in ('sequence_id', 'should_update_sequence_id')
      and (p_watch is null or a.attname = any (p_watch || p_columns));

    if exists (select 1 from pyglue.dependencies d
               where d.dependent_table = p_table and d.source_table = p_source and d.columns = p_columns
                 and d.source_columns = p_source_columns and d.watch_columns = v_watch) then
        return false;
    end if;

    v_args := format('%L, %L, %L', p_source::text, p_columns::text, p_source_columns::text);
    execute format('create or replace trigger %I after insert on %s referencing new table as pyglue_dependent_rows'
                   ' for each statement execute function pyglue._tg_reflag_source(%s)',
                   v_prefix || '_insert', p_table, v_args);
    execute format('create or replace trigger %I after delete on %s referencing old table as pyglue_dependent_rows'
                   ' for each statement execute function pyglue._tg_reflag_source(%s)',
                   v_prefix || '_delete', p_table, v_args);
    execute format('create or replace trigger %I after update on %s for each row when ((%s) is distinct from (%s))'
                   ' execute function pyglue._tg_reflag_source(%s)',
                   v_prefix || '_update', p_table,
                   (select string_agg(format('old.%I', c), ', ') from unnest(v_watch) as c),
                   (select string_agg(format('new.%I', c), ', ') from unnest(v_watch) as c),
                   v_args);
    insert into pyglue.dependencies as d (dependent_table, source_table, columns, source_columns, watch_columns)
    values (p_table, p_source, p_columns, p_source_columns, v_watch)
    on conflict (dependent_table, source_table) do update
        set columns = excluded.columns, source_columns = excluded.source_columns,
            watch_columns = excluded.watch_columns, updated_at = now();
    return true;
end;
$$;

comment on function pyglue.track_dependency(regclass, regclass, name[], name[], name[]) is
    'Re-flag rows of a tracked table when the rows of another table that a mapping reads for them change. Idempotent.';
