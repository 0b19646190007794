-- app._metrics_day_series(p_tenancy_id, p_metric, p_anon, p_first, p_last): one counter of
-- app.metrics_counters as a zero-filled day series [{"date": "YYYY-MM-DD", "activity": n}]
-- from p_first to p_last (UTC days, inclusive), summed over the anonymous flags in p_anon.
create or replace function app._metrics_day_series(p_tenancy_id uuid, p_metric text, p_anon boolean[],
                                                   p_first date, p_last date)
returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select jsonb_agg(jsonb_build_object('date', d.day, 'activity', coalesce(c.n, 0)) order by d.day)
    from (select to_char(g, 'YYYY-MM-DD') as day
          from generate_series(p_first::timestamp, p_last::timestamp, interval '1 day') as g) d
    left join (select c.bucket, sum(c.n) as n from app.metrics_counters c
               where c.tenancy_id = p_tenancy_id and c.metric = p_metric and c.is_anonymous = any (p_anon)
                 and c.bucket between to_char(p_first, 'YYYY-MM-DD') and to_char(p_last, 'YYYY-MM-DD')
               group by c.bucket) c on c.bucket = d.day
$$;

comment on function app._metrics_day_series(uuid, text, boolean[], date, date) is
    'One metrics counter as a zero-filled UTC day series of {date, activity}.';
