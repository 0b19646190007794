-- pyglue.untrack_table(p_table, p_drop_columns): stop capturing changes of a table.
--
-- Drops the pyglue triggers, the table's change-log function and its entries in
-- pyglue.changed_rows, and the policies (turning row-level security off again if
-- track_table turned it on) and the dependencies declared for it, and forgets the table; with p_drop_columns also drops
-- sequence_id, should_update_sequence_id and their index. Its tombstones stay in
-- pyglue.deleted_rows until purged. Returns false when the table was not tracked.
-- Locks: ACCESS EXCLUSIVE on p_table.
create or replace function pyglue.untrack_table(p_table regclass, p_drop_columns boolean default false)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_rls_ours boolean;
    v_log_function regprocedure;
begin
    delete from pyglue.tracked_tables t where t.table_name = p_table
    returning t.rls_enabled_by_pyglue into v_rls_ours;
    if not found then
        return false;
    end if;
    perform pyglue.untrack_dependency(d.dependent_table, d.source_table)
    from pyglue.dependencies d where d.source_table = p_table;
    execute format('drop policy if exists pyglue_visible on %s', p_table);
    execute format('drop policy if exists pyglue_tenancy_isolation on %s', p_table);
    if v_rls_ours then
        execute format('alter table %s disable row level security', p_table);
    end if;
    execute format('revoke select on %s from pyglue_mapping_reader', p_table);
    execute format('drop trigger if exists _100_pyglue_flag_change on %s', p_table);
    execute format('drop trigger if exists _900_pyglue_log_delete on %s', p_table);
    execute format('drop trigger if exists _900_pyglue_log_truncate on %s', p_table);
    execute format('drop trigger if exists _900_pyglue_log_key_change on %s', p_table);
    select g.tgfoid::regprocedure into v_log_function
    from pg_trigger g where g.tgrelid = p_table and g.tgname = '_100_pyglue_log_update';
    execute format('drop trigger if exists _100_pyglue_log_insert on %s', p_table);
    execute format('drop trigger if exists _100_pyglue_log_update on %s', p_table);
    if v_log_function is not null then
        execute format('drop function %s', v_log_function);
    end if;
    delete from pyglue.changed_rows l where l.table_name = p_table;
    if p_drop_columns then
        execute format('alter table %s drop column if exists sequence_id,'
                       ' drop column if exists should_update_sequence_id', p_table);
    end if;
    return true;
end;
$$;

comment on function pyglue.untrack_table(regclass, boolean) is
    'Stop change capture on a table (optionally dropping its sequence columns). Returns false if it was not tracked.';
