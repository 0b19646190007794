-- app._tg_truncate_metrics(): statement-level AFTER TRUNCATE trigger of app.users,
-- app.contact_channels, app.auth_methods, app.events and app.teams. A TRUNCATE has no
-- transition table, so the rollups it leaves behind are rebuilt from what remains, in the
-- truncating transaction: the metrics rollups (app._rebuild_metrics) and, for users and
-- channels, the search rows. Costs a rebuild of every tenancy: TRUNCATE is a rare,
-- whole-table operation.
create or replace function app._tg_truncate_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform app._rebuild_metrics(null);
    if tg_table_name in ('users', 'contact_channels') then
        delete from app.user_search;
        perform app._refresh_user_search(array_agg(u.tenancy_id), array_agg(u.id)) from app.users u;
    end if;
    return null;
end;
$$;

comment on function app._tg_truncate_metrics() is
    'TRUNCATE trigger of the metrics sources: rebuild the metrics rollups and search rows from what remains.';
