-- app._rebuild_metrics(p_tenancy_id uuid default null): rebuild the metrics rollups
-- (app.metrics_active_days, app.metrics_user_state, app.metrics_counters) of one tenancy, or
-- of all when null, from the source tables, set-based. The migration backfills with it; tests
-- compare the trigger-maintained rollups with a rebuild. Takes SHARE locks on app.users,
-- app.events, app.contact_channels, app.auth_methods and app.teams so no write slips between
-- the delete and the rebuild. Returns the number of users whose state was built.
create or replace function app._rebuild_metrics(p_tenancy_id uuid default null)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_users bigint;
begin
    lock table app.users, app.events, app.contact_channels, app.auth_methods, app.teams in share mode;
    delete from app.metrics_counters where p_tenancy_id is null or tenancy_id = p_tenancy_id;
    delete from app.metrics_user_state where p_tenancy_id is null or tenancy_id = p_tenancy_id;
    delete from app.metrics_active_days where p_tenancy_id is null or tenancy_id = p_tenancy_id;

    insert into app.metrics_active_days (tenancy_id, user_id, day, events)
    select e.tenancy_id, e.user_id, (e.occurred_at at time zone 'UTC')::date, count(*)
    from app.events e
    where e.event_type = '$user-activity' and e.user_id is not null
      and (p_tenancy_id is null or e.tenancy_id = p_tenancy_id)
    group by 1, 2, 3;

    perform app._refresh_user_metrics(array_agg(u.tenancy_id), array_agg(u.id), true, false)
    from app.users u
    where p_tenancy_id is null or u.tenancy_id = p_tenancy_id;
    get diagnostics v_users = row_count;

    insert into app.metrics_counters (tenancy_id, metric, bucket, is_anonymous, n)
    select t.tenancy_id, 'teams', '', false, count(*)
    from app.teams t
    where p_tenancy_id is null or t.tenancy_id = p_tenancy_id
    group by 1;

    select count(*) into v_users from app.metrics_user_state
    where p_tenancy_id is null or tenancy_id = p_tenancy_id;
    return v_users;
end;
$$;

comment on function app._rebuild_metrics(uuid) is
    'Rebuild the metrics rollups of one tenancy (or all) from the source tables; returns the users built.';
