-- pyglue._tg_flag_change(): BEFORE UPDATE row trigger of tracked tables (see track_table).
-- The trigger's WHEN clause already limits it to application updates of synced rows;
-- this only sets the flag the sequencer looks for.
create or replace function pyglue._tg_flag_change()
returns trigger
language plpgsql
as $$
begin
    new.should_update_sequence_id := true;
    return new;
end;
$$;

comment on function pyglue._tg_flag_change() is
    'Trigger of tracked tables: flag a changed row for the sequencer.';
