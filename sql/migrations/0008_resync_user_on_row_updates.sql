-- resync user on row updates: the statement-level UPDATE trigger on contact channels
-- also fired for the sequencer's own stamping: it captured transition tables of every
-- stamped batch and re-flagged users whose channel was stamped in a later pass than the
-- user, so those users were sequenced and synced twice. The UPDATE trigger is now
-- row-level with a WHEN clause on the columns the user row shows.
-- depends: 0007_sync_functions

-- copied from sql/triggers/app.contact_channels__resync_user.sql
-- A user's synced row carries its primary email and whether it is verified, so a change
-- to a primary email channel (added, edited, removed, or made/unmade primary) flags the
-- user for the sequencer too. Users already flagged are left alone.
--
-- Inserts and deletes: statement-level with transition tables, one UPDATE per statement.
-- Updates: row-level with a WHEN clause comparing the columns the user row shows, so the
-- sequencer's own stamping of channels (which changes none of them) never calls the
-- function, never builds transition tables and never re-flags the users.
create or replace function app.tg_contact_channels__resync_user()
returns trigger
language plpgsql
as $$
begin
    if tg_level = 'ROW' then
        update app.users u set should_update_sequence_id = true
        where u.tenancy_id = new.tenancy_id and u.id in (old.user_id, new.user_id) and not u.should_update_sequence_id;
        return null;
    end if;
    if tg_op = 'INSERT' then
        update app.users u set should_update_sequence_id = true
        from (select distinct n.tenancy_id, n.user_id from pyglue_new_channels n
              where n.type = 'email' and n.is_primary) c
        where u.tenancy_id = c.tenancy_id and u.id = c.user_id and not u.should_update_sequence_id;
    else
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
drop trigger if exists _500_resync_user_update on app.contact_channels;
create trigger _500_resync_user_update
    after update on app.contact_channels
    for each row
    when (((old.type = 'email' and old.is_primary) or (new.type = 'email' and new.is_primary))
          and (old.value, old.is_verified, old.is_primary, old.type, old.user_id)
              is distinct from (new.value, new.is_verified, new.is_primary, new.type, new.user_id))
    execute function app.tg_contact_channels__resync_user();
create or replace trigger _500_resync_user_delete
    after delete on app.contact_channels referencing old table as pyglue_old_channels
    for each statement execute function app.tg_contact_channels__resync_user();
