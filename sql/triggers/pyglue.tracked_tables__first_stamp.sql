-- Keep the first-stamp column (pyglue._track_first_stamp) in step with tracking: a table
-- tracked while a webhook subscribes to every table gets it, so its events say insert or
-- update from the start; a table no longer tracked loses it before untrack_table can drop
-- sequence_id (the first-stamp trigger's WHEN clause depends on that column).
create or replace function pyglue.tg_tracked_tables__first_stamp()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        if exists (select 1 from pyglue.webhooks w where w.tables is null) then
            perform pyglue._track_first_stamp(new.table_name);
        end if;
    elsif to_regclass(old.table_name::text) is not null then
        perform pyglue._untrack_first_stamp(old.table_name);
    end if;
    return null;
end;
$$;

comment on function pyglue.tg_tracked_tables__first_stamp() is
    'Trigger: add the first-stamp column to tables tracked while an all-tables webhook exists; drop it when a table is untracked.';

create or replace trigger _500_first_stamp
    after insert or delete on pyglue.tracked_tables
    for each row execute function pyglue.tg_tracked_tables__first_stamp();
