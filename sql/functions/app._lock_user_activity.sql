-- app._lock_user_activity(p_tenancy_ids uuid[], p_exclusive boolean): the metrics lock of
-- each distinct tenancy (a transaction advisory lock, in tenancy order), exclusive for a
-- statement that creates, deletes or re-keys users or flips their anonymous flag, shared for
-- one that writes activity events. Without it an event committed while its user was being
-- created (two transactions in flight) was missed by both: the event's trigger found no user
-- state to fold into, and the user's refresh read events before the event was committed.
-- With it the later of the two waits for the earlier to commit, and then reads what it wrote.
-- Event writers do not wait for each other; user writers of one tenancy already wait for one
-- another on the day's sign-up counter row. STRICT: null arrays lock nothing.
create or replace function app._lock_user_activity(p_tenancy_ids uuid[], p_exclusive boolean)
returns void
language plpgsql
strict
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy uuid;
begin
    for v_tenancy in select distinct t from unnest(p_tenancy_ids) as t where t is not null order by 1 loop
        if p_exclusive then
            perform pg_advisory_xact_lock(hashtextextended('app.metrics user activity|' || v_tenancy, 0));
        else
            perform pg_advisory_xact_lock_shared(hashtextextended('app.metrics user activity|' || v_tenancy, 0));
        end if;
    end loop;
end;
$$;

comment on function app._lock_user_activity(uuid[], boolean) is
    'Per-tenancy metrics lock: exclusive for user creation/deletion/flag changes, shared for activity events.';
