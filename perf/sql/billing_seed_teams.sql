-- The teams of a tenancy, set-based. Ids are md5 of (project, i): deterministic, and in
-- random order against the insertion order, like gen_random_uuid() ids.
insert into app.teams (tenancy_id, id, display_name)
select %(tenancy_id)s, md5(%(project_id)s || '-team-' || i)::uuid, 'Team ' || i
from generate_series(1, %(teams)s) as i
