-- app._tg_teams_metrics(): statement-level AFTER INSERT / DELETE trigger of app.teams: keeps
-- the per-tenancy "teams" counter (total_teams of app.metrics) in the same transaction.
-- Tenancies that no longer exist (deleted with their teams) are skipped.
create or replace function app._tg_teams_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        insert into app.metrics_counters as c (tenancy_id, metric, bucket, is_anonymous, n)
        select n.tenancy_id, 'teams', '', false, count(*) from new_rows n group by 1 order by 1
        on conflict (tenancy_id, metric, bucket, is_anonymous) do update set n = c.n + excluded.n;
    else
        insert into app.metrics_counters as c (tenancy_id, metric, bucket, is_anonymous, n)
        select o.tenancy_id, 'teams', '', false, -count(*) from old_rows o
        where exists (select 1 from app.tenancies t where t.id = o.tenancy_id)
        group by 1 order by 1
        on conflict (tenancy_id, metric, bucket, is_anonymous) do update set n = c.n + excluded.n;
    end if;
    return null;
end;
$$;

comment on function app._tg_teams_metrics() is
    'Statement trigger of app.teams: keep the per-tenancy team counter.';
