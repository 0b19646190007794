-- pyglue._tg_log_key_change(tenancy_column, key_columns): AFTER UPDATE row trigger of
-- tracked tables, fired (by its WHEN clause) only when the primary key changes. To a
-- target the old key is gone: it gets a tombstone, stamped before the row's new version
-- like any tombstone, so the target deletes the old key and inserts the new one.
-- SECURITY DEFINER so application roles need no rights on schema pyglue.
create or replace function pyglue._tg_log_key_change()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old jsonb := to_jsonb(old) - 'sequence_id' - 'should_update_sequence_id';
begin
    insert into pyglue.deleted_rows (tenancy_id, table_name, primary_key, data)
    select (v_old ->> tg_argv[0])::uuid, format('%I.%I', tg_table_schema, tg_table_name),
           (select jsonb_object_agg(k, v_old -> k) from unnest(tg_argv[1]::name[]) as k), v_old;
    return null;
end;
$$;

comment on function pyglue._tg_log_key_change() is
    'Trigger of tracked tables: a tombstone for the old key when a row''s primary key changes.';
