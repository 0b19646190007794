-- pyglue.set_fusebox(p_sequencer, p_poller, p_sync): flip the kill switches.
-- A null argument leaves that switch as it is. The sequencer, the request poller and
-- the sync engine each read their switch before every pass or page.
-- Returns: the fusebox row after the change.
create or replace function pyglue.set_fusebox(p_sequencer boolean default null,
                                              p_poller boolean default null,
                                              p_sync boolean default null)
returns pyglue.fusebox
language sql
set search_path = pg_catalog, pg_temp
as $$
    update pyglue.fusebox f
    set sequencer_enabled = coalesce(p_sequencer, f.sequencer_enabled),
        poller_enabled = coalesce(p_poller, f.poller_enabled),
        sync_enabled = coalesce(p_sync, f.sync_enabled),
        updated_at = now()
    returning f.*;
$$;

comment on function pyglue.set_fusebox(boolean, boolean, boolean) is
    'Turn the sequencer, poller and sync switches on or off (null leaves a switch as is).';
