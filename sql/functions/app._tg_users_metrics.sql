-- app._tg_users_metrics(): statement-level AFTER INSERT / UPDATE / DELETE trigger of
-- app.users (UPDATE only of the columns metrics read: tenancy_id, id, is_anonymous,
-- signed_up_at). Refreshes the metrics state of every user the statement added, changed or
-- removed (app._refresh_user_metrics), in the same transaction: sign-ups per day, the
-- anonymous split of every counter, and the counts a deleted user leaves.
-- SECURITY DEFINER: a role that may write users need not be able to write rollups.
create or replace function app._tg_users_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    -- a transition table the trigger does not have cannot be named: one branch per operation
    if tg_op = 'INSERT' then
        perform app._refresh_user_metrics(array_agg(n.tenancy_id), array_agg(n.id), false, false)
        from new_rows n;
    elsif tg_op = 'DELETE' then
        perform app._refresh_user_metrics(array_agg(o.tenancy_id), array_agg(o.id), false, true)
        from old_rows o;
    else
        -- a FULL JOIN is planned as a hash or merge join, never as a nested loop over two
        -- transition tables (the sequencer's stamping updates are large and change nothing here)
        perform app._refresh_user_metrics(array_agg(x.tenancy_id), array_agg(x.id), false, true)
        from new_rows n
        full join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
        cross join lateral (values (n.tenancy_id, n.id), (o.tenancy_id, o.id)) as x(tenancy_id, id)
        where x.id is not null
          and (n.id is null or o.id is null
               or n.is_anonymous <> o.is_anonymous or n.signed_up_at <> o.signed_up_at)
        having count(*) > 0;
    end if;
    return null;
end;
$$;

comment on function app._tg_users_metrics() is
    'Statement trigger of app.users: refresh the metrics state of added, changed and removed users.';
