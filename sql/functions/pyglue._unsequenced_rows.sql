-- pyglue._unsequenced_rows(p_table, p_tenancy_id, p_after): rows of a tracked table that
-- wait for the sequencer (flagged), in one tenancy (all when p_tenancy_id is null), whose
-- last stamp, if any, is not past p_after (any stamp when p_after is null): what a reader
-- at cursor p_after will receive besides the rows with sequence_id > p_after. Counted
-- through pyglue.changed_rows (the flagged rows' entries, a row changed twice has two),
-- not by scanning the table.
create or replace function pyglue._unsequenced_rows(p_table regclass, p_tenancy_id uuid, p_after bigint)
returns bigint
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count bigint;
begin
    execute format(
        'select count(*) from (select distinct l.primary_key from pyglue.changed_rows l join %s r on %s'
        ' where l.table_name = $1 and ($2 is null or l.tenancy_id = $2) and r.should_update_sequence_id'
        '   and ($3 is null or coalesce(r.sequence_id, 0) <= $3)) x',
        p_table, pyglue._key_match(p_table, 'r', 'l'))
    into v_count using p_table, p_tenancy_id, p_after;
    return v_count;
end;
$$;

comment on function pyglue._unsequenced_rows(regclass, uuid, bigint) is
    'Rows of a tracked table (in a tenancy) flagged for the sequencer and not stamped past a cursor.';
