-- app._tg_users_metrics(): statement-level AFTER INSERT / UPDATE / DELETE trigger of
-- app.users (UPDATE only of the columns metrics read: tenancy_id, id, is_anonymous,
-- signed_up_at). Refreshes the metrics state of every user the statement added, changed or
-- removed (app._refresh_user_metrics), in the same transaction: sign-ups per day, the
-- anonymous split of every counter, and the counts a deleted user leaves.
-- Takes the tenancies' metrics lock exclusively first (app._lock_user_activity), so an
-- activity event written at the same time is either seen by the refresh or sees the state.
-- SECURITY DEFINER: a role that may write users need not be able to write rollups.
create or replace function app._tg_users_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy_ids uuid[];
    v_user_ids uuid[];
begin
    -- a transition table the trigger does not have cannot be named: one branch per operation
    if tg_op = 'INSERT' then
        select array_agg(n.tenancy_id), array_agg(n.id) into v_tenancy_ids, v_user_ids from new_rows n;
    elsif tg_op = 'DELETE' then
        select array_agg(o.tenancy_id), array_agg(o.id) into v_tenancy_ids, v_user_ids from old_rows o;
    else
        -- a FULL JOIN is planned as a hash or merge join, never as a nested loop over two
        -- transition tables (the sequencer's stamping updates are large and change nothing here)
        select array_agg(x.tenancy_id), array_agg(x.id) into v_tenancy_ids, v_user_ids
        from new_rows n
        full join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
        cross join lateral (values (n.tenancy_id, n.id), (o.tenancy_id, o.id)) as x(tenancy_id, id)
        where x.id is not null
          and (n.id is null or o.id is null
               or n.is_anonymous <> o.is_anonymous or n.signed_up_at <> o.signed_up_at);
    end if;
    if v_user_ids is not null then
        perform app._lock_user_activity(v_tenancy_ids, true);
        -- inserted users are invisible to others: no row locks needed
        perform app._refresh_user_metrics(v_tenancy_ids, v_user_ids, false, tg_op <> 'INSERT');
    end if;
    return null;
end;
$$;

comment on function app._tg_users_metrics() is
    'Statement trigger of app.users: refresh the metrics state of added, changed and removed users.';
