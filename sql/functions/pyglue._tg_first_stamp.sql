-- pyglue._tg_first_stamp(): BEFORE UPDATE row trigger of tables webhooks subscribe to (see
-- pyglue._track_first_stamp). Its WHEN clause limits it to the sequencer's first stamp of a
-- row; this keeps that id.
create or replace function pyglue._tg_first_stamp()
returns trigger
language plpgsql
as $$
begin
    new.first_sequence_id := new.sequence_id;
    return new;
end;
$$;

comment on function pyglue._tg_first_stamp() is
    'Trigger of webhook-subscribed tables: keep the sequence id of a row''s first stamp.';
