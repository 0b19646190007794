-- pyglue._untrack_first_stamp(p_table): drop what pyglue._track_first_stamp added (the
-- trigger and the first_sequence_id column); called when a table stops being tracked (the
-- trigger's WHEN clause depends on sequence_id, which untrack_table may drop) and by the
-- rollback of 0019. A table without them is left alone.
-- Locks: ACCESS EXCLUSIVE on p_table.
create or replace function pyglue._untrack_first_stamp(p_table regclass)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select 1 from pg_trigger g where g.tgrelid = p_table and g.tgname = '_050_pyglue_first_stamp') then
        return;
    end if;
    execute format('drop trigger _050_pyglue_first_stamp on %s', p_table);
    execute format('alter table %s drop column if exists first_sequence_id', p_table);
end;
$$;

comment on function pyglue._untrack_first_stamp(regclass) is
    'Drop the first-stamp trigger and column of a table (see _track_first_stamp).';
