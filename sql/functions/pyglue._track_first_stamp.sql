-- pyglue._track_first_stamp(p_table): let webhook events tell an insert from an update.
--
-- Adds first_sequence_id bigint to a tracked table and a BEFORE UPDATE row trigger
-- (_050_pyglue_first_stamp, so it fires before the change flag) that copies the
-- sequence id the sequencer gives a row the first time it stamps it. A webhook event is
-- an insert when the row's first stamp is past the endpoint's cursor (the endpoint never
-- received an earlier event of that row), else an update. Rows stamped before this ran
-- keep null (an update for every endpoint: they existed before). Only tables a webhook
-- subscribes to get it (add_webhook, and the pyglue.tracked_tables trigger for tables
-- tracked later while an all-tables webhook exists). Idempotent: no DDL when present.
-- Locks: ACCESS EXCLUSIVE on p_table, the first time only.
create or replace function pyglue._track_first_stamp(p_table regclass)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if exists (select 1 from pg_trigger g where g.tgrelid = p_table and g.tgname = '_050_pyglue_first_stamp') then
        return;
    end if;
    execute format('alter table %s add column if not exists first_sequence_id bigint', p_table);
    execute format(
        'create or replace trigger _050_pyglue_first_stamp before update on %s for each row'
        ' when (old.sequence_id is null and new.sequence_id is not null)'
        ' execute function pyglue._tg_first_stamp()', p_table);
end;
$$;

comment on function pyglue._track_first_stamp(regclass) is
    'Add first_sequence_id and the trigger recording a row''s first sequence id (webhook insert vs update). Idempotent.';
