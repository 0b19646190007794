-- Rollback of 0017: the metrics triggers, functions, rollup tables, the cache table and the
-- trigram indexes go; pg_trgm too unless something else uses it (nothing older changed).
drop trigger if exists _500_metrics_insert on app.users;
drop trigger if exists _500_metrics_update on app.users;
drop trigger if exists _500_metrics_delete on app.users;
drop trigger if exists _500_metrics_insert on app.contact_channels;
drop trigger if exists _500_metrics_update on app.contact_channels;
drop trigger if exists _500_metrics_delete on app.contact_channels;
drop trigger if exists _500_metrics_insert on app.auth_methods;
drop trigger if exists _500_metrics_update on app.auth_methods;
drop trigger if exists _500_metrics_delete on app.auth_methods;
drop trigger if exists _500_metrics_insert on app.events;
drop trigger if exists _500_metrics_update on app.events;
drop trigger if exists _500_metrics_delete on app.events;
drop trigger if exists _500_metrics_insert on app.teams;
drop trigger if exists _500_metrics_delete on app.teams;
drop function if exists app.list_users(uuid, integer, text, text, uuid, boolean, boolean);
drop function if exists app.metrics_cached(uuid, boolean, timestamptz, interval);
drop function if exists pyglue.purge_cache_entries(text);
drop function if exists app.metrics(uuid, boolean, timestamptz);
drop function if exists app._rebuild_metrics(uuid);
drop function if exists app._tg_teams_metrics();
drop function if exists app._tg_events_metrics();
drop function if exists app._tg_user_facts_metrics();
drop function if exists app._tg_users_metrics();
drop function if exists app._apply_latest_activity(uuid[], uuid[], timestamptz[], text[], timestamptz[], uuid[]);
drop function if exists app._apply_activity(uuid[], uuid[], date[], bigint[]);
drop function if exists app._refresh_user_metrics(uuid[], uuid[], boolean, boolean);
drop function if exists app._metrics_day_series(uuid, text, boolean[], date, date);
drop function if exists app._user_json(app.users);
drop table if exists pyglue.cache_entries;
drop table if exists app.metrics_counters;
drop table if exists app.metrics_user_state;
drop table if exists app.metrics_active_days;
drop index if exists app.users_display_name_trgm_idx;
drop index if exists app.contact_channels_value_trgm_idx;
do $trgm$
begin
    drop extension if exists pg_trgm;
exception when dependent_objects_still_exist then
    null; -- another object uses it: it stays
end;
$trgm$;
