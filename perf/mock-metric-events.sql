-- Mock activity events for metrics (issue 12): psql -v events=300000 -f perf/mock-metric-events.sql
--   -v tenancy=<uuid>   the tenancy of perf/mock-users.sql (same default)
--   -v events=N         how many '$user-activity' events this run adds (default 300000)
--   -v days=D           spread over the D days before end_at (default 30)
--   -v end_at='...'     default: now, truncated to the minute (UTC)
--   -v target=TABLE     default app.events; a plain copy of it measures ingest without triggers
--   -v touch_users=0|1  set app.users.last_active_at of the users seen (default 1)
-- Deterministic given end_at: event k goes to mock user 1 + (k * 104729) % U (U: the mock
-- users present), at a pseudo-random second of the window, from one of 100 countries: a
-- user's own country (n % 100), every 10th event from the next one (so the latest wins).
-- Re-runnable: continues the numbering (events k+1 .. k+N). The next k is kept in one marker
-- event per tenancy (type '$mock-seed', which no metric reads), so a run at 10M events does
-- not scan them to find where to go on; a database seeded before the marker is scanned once.
\if :{?tenancy}
\else
\set tenancy 00000000-0000-4000-8000-00000000f00d
\endif
\if :{?events}
\else
\set events 300000
\endif
\if :{?days}
\else
\set days 30
\endif
\if :{?target}
\else
\set target app.events
\endif
\if :{?touch_users}
\else
\set touch_users 1
\endif
\if :{?end_at}
\else
select date_trunc('minute', now())::text as end_at \gset
\endif
\set ON_ERROR_STOP on
begin;
select pg_advisory_xact_lock(hashtextextended('perf/mock-metric-events.sql|' || :'tenancy', 0)) as locked \gset
select coalesce(max((server_metadata ->> 'mock_n')::bigint), 0) as mock_users
from app.users where tenancy_id = :'tenancy' and server_metadata ? 'mock_n' \gset
select coalesce(
           (select (data ->> 'next_k')::bigint from :target
            where tenancy_id = :'tenancy' and id = md5(:'tenancy' || ':mock-seed')::uuid),
           (select max((data ->> 'mock_k')::bigint) from :target
            where tenancy_id = :'tenancy' and event_type = '$user-activity' and data ? 'mock_k'),
           0) as first_k \gset

create temp table mock_events on commit drop as
select :'tenancy'::uuid as tenancy_id, md5(:'tenancy' || ':event:' || k)::uuid as id,
       '$user-activity'::text as event_type,
       md5(:'tenancy' || ':user:' || (1 + (k * 104729) % :mock_users))::uuid as user_id,
       timestamptz :'end_at' - ((k * 15485863) % (:days * 86400)) * interval '1 second' - interval '1 second'
           as occurred_at,
       (string_to_array('US,DE,FR,GB,IT,ES,NL,BE,CH,AT,SE,NO,DK,FI,PL,CZ,PT,IE,GR,HU,RO,BG,HR,SI,SK,LT,LV,EE,LU,'
                        'MT,CY,IS,TR,UA,RS,BA,AL,MK,ME,MD,BY,RU,GE,AM,AZ,KZ,UZ,IL,AE,SA,QA,KW,EG,MA,TN,DZ,NG,KE,ZA,GH,'
                        'ET,TZ,UG,CA,MX,BR,AR,CL,CO,PE,VE,UY,PY,BO,EC,CR,PA,GT,CU,DO,JP,KR,CN,TW,HK,SG,MY,TH,VN,PH,ID,'
                        'IN,PK,BD,LK,NP,AU,NZ,FJ,PG', ','))[
           1 + (((1 + (k * 104729) % :mock_users) + case when k % 10 = 0 then 1 else 0 end) % 100)::int]
           as country_code,
       jsonb_build_object('mock_k', k) as data
from generate_series(:first_k::bigint + 1, :first_k::bigint + :events) as k;
insert into :target (tenancy_id, id, event_type, user_id, occurred_at, country_code, data)
select * from mock_events;
insert into :target (tenancy_id, id, event_type, occurred_at, data)
values (:'tenancy', md5(:'tenancy' || ':mock-seed')::uuid, '$mock-seed', timestamptz :'end_at',
        jsonb_build_object('next_k', :first_k::bigint + :events))
on conflict (tenancy_id, id) do update set data = excluded.data, occurred_at = excluded.occurred_at;

\if :touch_users
update app.users u set last_active_at = x.last_at
from (select e.user_id, max(e.occurred_at) as last_at from mock_events e group by 1) x
where u.tenancy_id = :'tenancy' and u.id = x.user_id
  and (u.last_active_at is null or u.last_active_at < x.last_at);
\endif
commit;
