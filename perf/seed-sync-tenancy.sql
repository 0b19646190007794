-- Seed one tenancy of :users users for the tenant sync benchmark, shaped like
-- pyglue/queries/demo_seed.sql: every user has a primary email (two thirds verified),
-- every third user a phone too, a team per 20 users, and one membership per user.
--
--   psql -v users=1000000 -f perf/seed-sync-tenancy.sql   (users defaults to 20000, at least 20)
--
-- Deterministic, unlike the demo seed (which stamps now() and lets ids default to
-- gen_random_uuid()): ids are md5 of a name, timestamps fixed or random() after setseed().
-- Every row is inserted with the defaults of the sequence columns, so it is flagged and
-- unstamped, the backlog a first sync of the tenancy has to move. Meant for a fresh
-- database (perf/bench_sync.py drops and recreates it): it does not clean up a previous run.
\set ON_ERROR_STOP on
\if :{?users}
\else
    \set users 20000
\endif

select greatest(:users / 20, 1) as n_teams \gset

begin;

insert into app.projects (id, display_name) values ('perf-sync', 'Sync benchmark')
on conflict (id) do nothing;
insert into app.tenancies (id, project_id, branch_id, created_at)
values (md5('perf-sync-tenancy')::uuid, 'perf-sync', 'main', timestamptz '2026-01-01');

select setseed(0.51);
insert into app.users (tenancy_id, id, display_name, created_at, signed_up_at, last_active_at, client_metadata)
select md5('perf-sync-tenancy')::uuid,
       md5('sync-user-' || i)::uuid,
       'User ' || i,
       timestamptz '2026-01-01',
       timestamptz '2026-01-01' + random() * interval '300 days',
       timestamptz '2026-10-28' + random() * interval '30 days',
       jsonb_build_object('plan', case when i % 10 = 0 then 'pro' else 'free' end)
from generate_series(1, :users) as i;

-- the primary email of user i (what the users mapping joins in)
select setseed(0.52);
insert into app.contact_channels (tenancy_id, id, user_id, type, value, is_primary, is_verified, used_for_auth, created_at)
select md5('perf-sync-tenancy')::uuid,
       md5('sync-email-' || i)::uuid,
       md5('sync-user-' || i)::uuid,
       'email',
       'user-' || i || '@example.com',
       true,
       random() < 2.0 / 3,
       true,
       timestamptz '2026-01-01'
from generate_series(1, :users) as i;

-- a phone for every third user: not primary, not for auth (the demo seed's defaults)
insert into app.contact_channels (tenancy_id, id, user_id, type, value, created_at)
select md5('perf-sync-tenancy')::uuid,
       md5('sync-phone-' || i)::uuid,
       md5('sync-user-' || i)::uuid,
       'phone',
       '+1555' || lpad(i::text, 7, '0'),
       timestamptz '2026-01-01'
from generate_series(3, :users, 3) as i;

insert into app.teams (tenancy_id, id, display_name, created_at)
select md5('perf-sync-tenancy')::uuid, md5('sync-team-' || j)::uuid, 'Team ' || j, timestamptz '2026-01-01'
from generate_series(0, :n_teams - 1) as j;

-- user i joins team i % n_teams
insert into app.team_members (tenancy_id, team_id, user_id, created_at)
select md5('perf-sync-tenancy')::uuid,
       md5('sync-team-' || i % :n_teams)::uuid,
       md5('sync-user-' || i)::uuid,
       timestamptz '2026-01-01'
from generate_series(1, :users) as i;

commit;
