-- pyglue.register_mapping(p_name, p_source_table): tell the database which tracked table
-- a mapping exports (its rows and tombstones), so sync_status can count pending rows and
-- purge_deleted_rows knows which tombstones a target still needs. Idempotent.
-- Errors: 42P01 unknown table; 22023 table not tracked.
create or replace function pyglue.register_mapping(p_name text, p_source_table regclass)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select 1 from pyglue.tracked_tables t where t.table_name = p_source_table) then
        raise exception 'mapping %: source table % is not tracked (call pyglue.track_table first)', p_name, p_source_table
            using errcode = '22023';
    end if;
    insert into pyglue.sync_mappings as m (name, source_table)
    values (p_name, p_source_table::text)
    on conflict (name) do update set source_table = excluded.source_table, updated_at = now()
        where m.source_table is distinct from excluded.source_table;
end;
$$;

comment on function pyglue.register_mapping(text, regclass) is
    'Record which tracked table a sync mapping exports (for status and tombstone retention).';
