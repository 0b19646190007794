-- Seed :rows flagged rows into the tracked app tables, for the sequencer benchmark.
--
--   psql -v rows=1000000 -f perf/seed-tracked-rows.sql   (rows defaults to 100000, at least 250)
--
-- Spread over 100 tenancies of project 'perf': 40% app.users, 40% app.contact_channels
-- (one primary auth email per user), 10% app.teams, 10% app.team_members (one member per
-- team, a random user of the team's tenancy). Every row is inserted with the defaults of
-- the sequence columns, so it is flagged (should_update_sequence_id) and unstamped, as
-- the application would leave it.
--
-- Deterministic: ids are md5 of a name, timestamps are fixed or random(), and random() is
-- re-seeded before each table, so two runs with the same :rows write the same rows.
-- Re-runnable: it first removes the 'perf' project's rows with triggers off
-- (session_replication_role = replica, which needs a superuser), so no tombstones are
-- written and foreign keys are not checked; children go first as the cascades are off too.
\set ON_ERROR_STOP on
\if :{?rows}
\else
    \set rows 100000
\endif

select (:rows * 4 / 10) as n_users,
       (:rows - 2 * (:rows * 4 / 10) - (:rows / 10)) as n_teams,
       (:rows / 10) as n_members,
       100 as n_tenancies
\gset

begin;

set local session_replication_role = replica;
delete from app.team_members m using app.tenancies t where t.id = m.tenancy_id and t.project_id = 'perf';
delete from app.teams x using app.tenancies t where t.id = x.tenancy_id and t.project_id = 'perf';
delete from app.contact_channels c using app.tenancies t where t.id = c.tenancy_id and t.project_id = 'perf';
delete from app.users u using app.tenancies t where t.id = u.tenancy_id and t.project_id = 'perf';
delete from app.tenancies where project_id = 'perf';
set local session_replication_role = origin;

insert into app.projects (id, display_name) values ('perf', 'Benchmarks')
on conflict (id) do nothing;

-- tenancy k is md5('perf-tenancy-k'); one branch per tenancy keeps (project, branch) unique
insert into app.tenancies (id, project_id, branch_id, created_at)
select md5('perf-tenancy-' || k)::uuid, 'perf', 'b' || k, timestamptz '2026-01-01'
from generate_series(0, :n_tenancies - 1) as k;

-- user i lives in tenancy i % 100
select setseed(0.11);
insert into app.users (tenancy_id, id, display_name, created_at, signed_up_at, last_active_at, client_metadata)
select md5('perf-tenancy-' || i % :n_tenancies)::uuid,
       md5('perf-user-' || i)::uuid,
       'User ' || i,
       timestamptz '2026-01-01',
       timestamptz '2026-01-01' + random() * interval '300 days',
       timestamptz '2026-10-28' + random() * interval '30 days',
       jsonb_build_object('plan', (array['free', 'pro', 'team'])[1 + floor(random() * 3)::int])
from generate_series(0, :n_users - 1) as i;

-- contact channel i belongs to user i
select setseed(0.22);
insert into app.contact_channels (tenancy_id, id, user_id, type, value, is_primary, is_verified, used_for_auth, created_at)
select md5('perf-tenancy-' || i % :n_tenancies)::uuid,
       md5('perf-channel-' || i)::uuid,
       md5('perf-user-' || i)::uuid,
       'email',
       'user-' || i || '@example.com',
       true,
       random() < 0.8,
       true,
       timestamptz '2026-01-01'
from generate_series(0, :n_users - 1) as i;

-- team j lives in tenancy j % 100
select setseed(0.33);
insert into app.teams (tenancy_id, id, display_name, client_metadata, created_at)
select md5('perf-tenancy-' || j % :n_tenancies)::uuid,
       md5('perf-team-' || j)::uuid,
       'Team ' || j,
       case when random() < 0.5 then jsonb_build_object('color', floor(random() * 16)::int) end,
       timestamptz '2026-01-01'
from generate_series(0, :n_teams - 1) as j;

-- member j joins team j (n_members <= n_teams) as a random user of the team's tenancy
-- (user j % 100 + 100 * r); one member per team keeps the primary key unique
select setseed(0.44);
insert into app.team_members (tenancy_id, team_id, user_id, display_name, created_at)
select md5('perf-tenancy-' || j % :n_tenancies)::uuid,
       md5('perf-team-' || j)::uuid,
       md5('perf-user-' || (j % :n_tenancies + :n_tenancies * floor(random() * (:n_users / :n_tenancies))::int))::uuid,
       case when random() < 0.3 then 'Member ' || j end,
       timestamptz '2026-01-01'
from generate_series(0, :n_members - 1) as j;

commit;
