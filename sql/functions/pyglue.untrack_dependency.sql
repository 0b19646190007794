-- pyglue.untrack_dependency(p_table, p_source): drop the triggers track_dependency
-- installed on p_table for p_source. Returns false when there was no such dependency.
-- Locks: SHARE ROW EXCLUSIVE on p_table while its triggers are dropped.
create or replace function pyglue.untrack_dependency(p_table regclass, p_source regclass)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_prefix text := '_500_pyglue_reflag_' || left(md5(p_source::text), 8);
begin
    delete from pyglue.dependencies d where d.dependent_table = p_table and d.source_table = p_source;
    if not found then
        return false;
    end if;
    execute format('drop trigger if exists %I on %s', v_prefix || '_insert', p_table);
    execute format('drop trigger if exists %I on %s', v_prefix || '_delete', p_table);
    execute format('drop trigger if exists %I on %s', v_prefix || '_update', p_table);
    return true;
end;
$$;

comment on function pyglue.untrack_dependency(regclass, regclass) is
    'Remove a dependency installed by pyglue.track_dependency. Returns false if there was none.';
