-- Mock users for metrics and user-list work (issue 12): psql -v users=10000 -f perf/mock-users.sql
--   -v tenancy=<uuid>   the tenancy (created in project 'perf' when missing);
--                       default 00000000-0000-4000-8000-00000000f00d
--   -v users=N          how many users this run adds (default 10000)
--   -v end_at='...'     sign-ups spread over the 365 days before it (default: today 00:00 UTC)
-- Deterministic: user n has id md5(tenancy:user:n), name 'Mock User n', a primary email
-- mock.user.n@example<n % 50>.test (verified unless n % 3 = 0, used for auth), one auth
-- method of each kind in turn (password, otp, passkey, oauth github/google/microsoft) and an
-- extra oauth github for every 7th, anonymous when n % 20 = 0, member of team (n - 1) / 50.
-- Re-runnable: a second run continues the numbering (adds users n+1 .. n+N). Set-based:
-- one INSERT … SELECT generate_series per table, in one transaction.
\if :{?tenancy}
\else
\set tenancy 00000000-0000-4000-8000-00000000f00d
\endif
\if :{?users}
\else
\set users 10000
\endif
\if :{?end_at}
\else
select (date_trunc('day', now() at time zone 'UTC') at time zone 'UTC')::text as end_at \gset
\endif
\set ON_ERROR_STOP on
begin;
insert into app.projects (id, display_name) values ('perf', 'Perf seeds') on conflict (id) do nothing;
insert into app.tenancies (id, project_id, branch_id) values (:'tenancy', 'perf', 'mock-' || :'tenancy')
on conflict (id) do nothing;
-- one run at a time per tenancy: the numbering below reads what the last run left
select pg_advisory_xact_lock(hashtextextended('perf/mock-users.sql|' || :'tenancy', 0)) as locked \gset
select coalesce(max((server_metadata ->> 'mock_n')::bigint), 0) as first_n
from app.users where tenancy_id = :'tenancy' and server_metadata ? 'mock_n' \gset

create temp table mock_users on commit drop as
select n, md5(:'tenancy' || ':user:' || n)::uuid as id,
       timestamptz :'end_at' - ((n * 7919) % (365 * 86400)) * interval '1 second' - interval '1 second'
           as signed_up_at
from generate_series(:first_n::bigint + 1, :first_n::bigint + :users) as n;

insert into app.users (tenancy_id, id, display_name, is_anonymous, signed_up_at, created_at, server_metadata)
select :'tenancy', m.id, 'Mock User ' || m.n, m.n % 20 = 0, m.signed_up_at, m.signed_up_at,
       jsonb_build_object('mock_n', m.n)
from mock_users m;

insert into app.contact_channels (tenancy_id, id, user_id, type, value, is_primary, is_verified, used_for_auth,
                                  created_at)
select :'tenancy', md5(:'tenancy' || ':email:' || m.n)::uuid, m.id, 'email',
       'mock.user.' || m.n || '@example' || (m.n % 50) || '.test', true, m.n % 3 <> 0, true, m.signed_up_at
from mock_users m;

insert into app.auth_methods (tenancy_id, id, user_id, kind, provider, created_at)
select :'tenancy', md5(:'tenancy' || ':auth:' || m.n || ':' || a.k)::uuid, m.id,
       case when a.k = 1 then (array['password', 'otp', 'passkey', 'oauth'])[1 + m.n % 4] else 'oauth' end,
       case when a.k = 2 then 'github'
            when m.n % 4 = 3 then (array['github', 'google', 'microsoft'])[1 + (m.n / 4) % 3] end,
       m.signed_up_at
from mock_users m
cross join lateral (select 1 as k union all select 2 where m.n % 7 = 0) a;

insert into app.teams (tenancy_id, id, display_name, created_at)
select :'tenancy', md5(:'tenancy' || ':team:' || t)::uuid, 'Mock Team ' || t, timestamptz :'end_at'
from (select distinct (m.n - 1) / 50 as t from mock_users m) x
on conflict (tenancy_id, id) do nothing;

insert into app.team_members (tenancy_id, team_id, user_id, created_at)
select :'tenancy', md5(:'tenancy' || ':team:' || ((m.n - 1) / 50))::uuid, m.id, m.signed_up_at
from mock_users m;
commit;
