-- pyglue.pending_changes(): rows waiting for the sequencer, per tracked table and for
-- tombstones ('pyglue.deleted_rows'). A table's flagged rows are counted through their
-- entries in pyglue.changed_rows (pyglue._unsequenced_rows), not by scanning the table.
-- Returns: (table_name, pending) for every tracked table, zeros included.
create or replace function pyglue.pending_changes()
returns table (table_name text, pending bigint)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_table regclass;
begin
    table_name := 'pyglue.deleted_rows';
    select count(*) into pending from pyglue.deleted_rows d where d.should_update_sequence_id;
    return next;
    for v_table in
        select t.table_name from pyglue.tracked_tables t join pg_class c on c.oid = t.table_name
        order by t.table_name::text
    loop
        table_name := v_table::text;
        pending := pyglue._unsequenced_rows(v_table, null, null);
        return next;
    end loop;
end;
$$;

comment on function pyglue.pending_changes() is
    'Rows flagged for the sequencer, per tracked table and for tombstones.';
