-- pyglue._tg_log_delete(tenancy_column, key_columns): statement trigger of tracked tables.
--
-- AFTER DELETE (with the transition table pyglue_old_rows) and BEFORE TRUNCATE (reading
-- the whole table): one INSERT of a tombstone per removed row into pyglue.deleted_rows,
-- with the primary key and the full row as jsonb (minus the sequence columns). Runs in
-- the deleting transaction, so a rolled-back delete leaves no tombstone, and for rows
-- removed by foreign-key cascades too. SECURITY DEFINER so application roles that may
-- delete rows need no rights on schema pyglue.
create or replace function pyglue._tg_log_delete()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy_column name := tg_argv[0];
    v_key name[] := tg_argv[1]::name[];
    v_table text := format('%I.%I', tg_table_schema, tg_table_name);
    v_source text;
begin
    v_source := case tg_op when 'DELETE' then 'pyglue_old_rows' else v_table end;
    execute format(
        'insert into pyglue.deleted_rows (tenancy_id, table_name, primary_key, data)'
        ' select r.%I, $1, jsonb_build_object(%s),'
        '        to_jsonb(r) - ''sequence_id'' - ''should_update_sequence_id'''
        ' from %s r',
        v_tenancy_column,
        (select string_agg(format('%L, r.%I', k, k), ', ') from unnest(v_key) as k),
        v_source)
    using v_table;
    return null;
end;
$$;

comment on function pyglue._tg_log_delete() is
    'Trigger of tracked tables: write a tombstone per deleted or truncated row into pyglue.deleted_rows.';
