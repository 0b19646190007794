-- Rollback of 0008: the statement-level UPDATE trigger of 0007 comes back.
drop trigger if exists _500_resync_user_update on app.contact_channels;

-- restored from 0007 (copy of sql/triggers/app.contact_channels__resync_user.sql as it was there)
-- A user's synced row carries its primary email and whether it is verified, so a change
-- to a primary email channel (added, edited, removed, or made/unmade primary) flags the
-- user for the sequencer too. Statement-level with transition tables: one UPDATE per
-- statement, however many channels it touched. Users already flagged are left alone.
create or replace function app.tg_contact_channels__resync_user()
returns trigger
language plpgsql
as $$
begin
    if tg_op in ('INSERT', 'UPDATE') then
        update app.users u set should_update_sequence_id = true
        from (select distinct n.tenancy_id, n.user_id from pyglue_new_channels n
              where n.type = 'email' and n.is_primary) c
        where u.tenancy_id = c.tenancy_id and u.id = c.user_id and not u.should_update_sequence_id;
    end if;
    if tg_op in ('DELETE', 'UPDATE') then
        update app.users u set should_update_sequence_id = true
        from (select distinct o.tenancy_id, o.user_id from pyglue_old_channels o
              where o.type = 'email' and o.is_primary) c
        where u.tenancy_id = c.tenancy_id and u.id = c.user_id and not u.should_update_sequence_id;
    end if;
    return null;
end;
$$;

comment on function app.tg_contact_channels__resync_user() is
    'Trigger: flag the user for sync when its primary email channel changes.';

create or replace trigger _500_resync_user_insert
    after insert on app.contact_channels referencing new table as pyglue_new_channels
    for each statement execute function app.tg_contact_channels__resync_user();
create or replace trigger _500_resync_user_update
    after update on app.contact_channels referencing old table as pyglue_old_channels new table as pyglue_new_channels
    for each statement execute function app.tg_contact_channels__resync_user();
create or replace trigger _500_resync_user_delete
    after delete on app.contact_channels referencing old table as pyglue_old_channels
    for each statement execute function app.tg_contact_channels__resync_user();
