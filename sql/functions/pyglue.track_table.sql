-- pyglue.track_table(p_table, p_tenancy_column): make a table syncable.
--
-- Adds sequence_id and should_update_sequence_id (existing rows start flagged, so they
-- sync once), the (tenancy, sequence_id) index the fetch reads, a BEFORE UPDATE trigger
-- that re-flags a row whenever anything but the sequencer changes it, and DELETE and
-- TRUNCATE triggers that write tombstones to pyglue.deleted_rows in the same transaction
-- (rows removed by foreign-key cascades included). Idempotent: a second call changes
-- nothing but the recorded tenancy column.
--
-- The sequencer finds flagged rows through pyglue.changed_rows, not through an index on
-- the flag: AFTER INSERT and AFTER UPDATE statement triggers append the key of every
-- flagged row they wrote (a function of this table's own, pyglue._tg_log_change_<table>_<hash>,
-- whose INSERT is static SQL and so planned once per session). An index on the flag made
-- every application update of a synced row a non-HOT update, since the flag flips:
-- 36-49 us instead of 14-19 per row for 100-row avatar updates on 1,000,000 users (#13); the
-- log costs about 3 us. Rows already flagged when the table is first tracked (all of
-- them) are logged here; the flagged partial index of tables tracked before 0025 is
-- dropped.
--
-- A primary key change writes a tombstone for the old key (row trigger, WHEN the key
-- differs), so targets drop the old key.
--
-- Tenant isolation for sync mappings: grants SELECT to pyglue_mapping_reader and adds a
-- restrictive row-level security policy for that role keyed by pyglue._fetch_tenancy()
-- (which a mapping query cannot change), called once per query through a sub-select so
-- it is an index condition next to the query's own (called per row, the planner kept
-- the email lookup of the users mapping from using tenancy and user together).
-- The policy also binds roles that inherit from the reader: grant membership with
-- NOINHERIT (owners and superusers are exempt from row-level security anyway).
-- What other roles see does not change: if row-level security
-- was off, it is turned on with a permissive policy for everyone (using true); if the
-- table already had its own policies, only the reader gets a permissive one.
--
-- Parameters: p_table, any ordinary table with a primary key; p_tenancy_column, its uuid
-- column naming the tenancy (default tenancy_id).
-- Errors: 42809 not an ordinary table or a pyglue table; 42P16 no primary key;
-- 42703 no such column; 42804 tenancy column is not uuid.
-- Locks: ACCESS EXCLUSIVE on p_table while its columns, triggers and policies are added.
create or replace function pyglue.track_table(p_table regclass, p_tenancy_column name default 'tenancy_id')
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_relname name;
    v_relkind "char";
    v_schema name;
    v_key name[];
    v_tenancy_type regtype;
    v_had_rls boolean;
    v_rls_ours boolean;
    v_log_function text;
    v_key_json text;
    v_old_function regprocedure;
begin
    select c.relname, c.relkind, n.nspname, c.relrowsecurity into v_relname, v_relkind, v_schema, v_had_rls
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = p_table;
    if v_relkind is distinct from 'r' or v_schema = 'pyglue' then
        raise exception 'cannot track %: not an ordinary table outside schema pyglue', p_table
            using errcode = '42809';
    end if;

    select array_agg(a.attname order by k.ord) into v_key
    from pg_index i
    cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = p_table and i.indisprimary;
    if v_key is null then
        raise exception 'cannot track %: it has no primary key', p_table
            using errcode = '42P16', hint = 'Tombstones identify deleted rows by primary key.';
    end if;

    select a.atttypid::regtype into v_tenancy_type
    from pg_attribute a
    where a.attrelid = p_table and a.attname = p_tenancy_column and a.attnum > 0 and not a.attisdropped;
    if v_tenancy_type is null then
        raise exception 'cannot track %: it has no column %', p_table, quote_ident(p_tenancy_column)
            using errcode = '42703';
    end if;
    if v_tenancy_type <> 'uuid'::regtype then
        raise exception 'cannot track %: tenancy column % is %, not uuid', p_table, quote_ident(p_tenancy_column), v_tenancy_type
            using errcode = '42804';
    end if;

    execute format(
        'alter table %s add column if not exists sequence_id bigint,'
        ' add column if not exists should_update_sequence_id boolean not null default true', p_table);
    execute format('drop index if exists %I.%I', v_schema, left(v_relname, 40) || '_pyglue_flagged_idx');
    execute format('create index if not exists %I on %s (%I, sequence_id)',
                   left(v_relname, 40) || '_pyglue_sequence_idx', p_table, p_tenancy_column);
    -- Fires only for a row not yet flagged whose sequence_id is unchanged: application
    -- updates of synced rows. The sequencer's own stamp changes sequence_id, so it never
    -- re-flags; rows already flagged cost nothing.
    execute format(
        'create or replace trigger _100_pyglue_flag_change before update on %s for each row'
        ' when (not new.should_update_sequence_id and new.sequence_id is not distinct from old.sequence_id)'
        ' execute function pyglue._tg_flag_change()', p_table);
    -- the change log (see the header): a function named after the table (readable, and the
    -- same in every database), SECURITY DEFINER as the tombstone trigger's, so roles that
    -- write the table need no rights on schema pyglue
    v_log_function := format('pyglue.%I', left('_tg_log_change_' || v_schema || '_' || v_relname, 50)
                                          || '_' || left(md5(format('%I.%I', v_schema, v_relname)), 8));
    v_key_json := (select string_agg(format('%L, r.%I', k, k), ', ') from unnest(v_key) as k);
    execute format(
        'create or replace function %s() returns trigger language plpgsql security definer'
        ' set search_path = pg_catalog, pg_temp as $log$ begin'
        ' insert into pyglue.changed_rows (table_name, tenancy_id, primary_key)'
        ' select tg_relid, r.%I, jsonb_build_object(%s) from pyglue_new_rows r where r.should_update_sequence_id;'
        ' return null; end $log$',
        v_log_function, p_tenancy_column, v_key_json);
    execute format('comment on function %s() is %L', v_log_function,
                   format('Trigger of %s: log the flagged rows a statement wrote, for the sequencer.', p_table));
    select g.tgfoid::regprocedure into v_old_function
    from pg_trigger g where g.tgrelid = p_table and g.tgname = '_100_pyglue_log_update';
    execute format(
        'create or replace trigger _100_pyglue_log_insert after insert on %s'
        ' referencing new table as pyglue_new_rows for each statement execute function %s()', p_table, v_log_function);
    execute format(
        'create or replace trigger _100_pyglue_log_update after update on %s'
        ' referencing new table as pyglue_new_rows for each statement execute function %s()', p_table, v_log_function);
    if v_old_function <> to_regprocedure(v_log_function || '()') then
        execute format('drop function %s', v_old_function);  -- of the table's name before a rename
    end if;
    if v_old_function is null then
        execute format(
            'insert into pyglue.changed_rows (table_name, tenancy_id, primary_key)'
            ' select $1, r.%I, jsonb_build_object(%s) from %s r where r.should_update_sequence_id',
            p_tenancy_column, v_key_json, p_table)
        using p_table;
    end if;
    execute format(
        'create or replace trigger _900_pyglue_log_delete after delete on %s'
        ' referencing old table as pyglue_old_rows for each statement'
        ' execute function pyglue._tg_log_delete(%L, %L)', p_table, p_tenancy_column, v_key::text);
    execute format(
        'create or replace trigger _900_pyglue_log_truncate before truncate on %s for each statement'
        ' execute function pyglue._tg_log_delete(%L, %L)', p_table, p_tenancy_column, v_key::text);
    execute format(
        'create or replace trigger _900_pyglue_log_key_change after update on %s for each row'
        ' when ((%s) is distinct from (%s)) execute function pyglue._tg_log_key_change(%L, %L)',
        p_table,
        (select string_agg(format('old.%I', k), ', ') from unnest(v_key) as k),
        (select string_agg(format('new.%I', k), ', ') from unnest(v_key) as k),
        p_tenancy_column, v_key::text);

    -- row-level security for mapping reads (see the header)
    select t.rls_enabled_by_pyglue into v_rls_ours from pyglue.tracked_tables t where t.table_name = p_table;
    v_rls_ours := coalesce(v_rls_ours, not v_had_rls);
    execute format('grant usage on schema %I to pyglue_mapping_reader', v_schema);
    execute format('grant select on %s to pyglue_mapping_reader', p_table);
    execute format('drop policy if exists pyglue_visible on %s', p_table);
    execute format('drop policy if exists pyglue_tenancy_isolation on %s', p_table);
    execute format('create policy pyglue_visible on %s as permissive to %s using (true)',
                   p_table, case when v_rls_ours then 'public' else 'pyglue_mapping_reader' end);
    execute format(
        'create policy pyglue_tenancy_isolation on %s as restrictive to pyglue_mapping_reader'
        ' using (%I = (select pyglue._fetch_tenancy()))', p_table, p_tenancy_column);
    execute format('alter table %s enable row level security', p_table);

    insert into pyglue.tracked_tables (table_name, tenancy_column, key_columns, rls_enabled_by_pyglue)
    values (p_table, p_tenancy_column, v_key, v_rls_ours)
    on conflict (table_name) do update
        set tenancy_column = excluded.tenancy_column, key_columns = excluded.key_columns;
end;
$$;

comment on function pyglue.track_table(regclass, name) is
    'Make a table with a primary key syncable: sequence columns, index, change log and delete triggers. Idempotent.';
