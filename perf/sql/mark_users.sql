-- The latency writer's change: each user of the batch gets its own marker as display name
-- (the tracked table's trigger flags them for the sequencer). One statement, one commit.
update app.users u
set display_name = m.marker
from unnest(%(ids)s::uuid[], %(markers)s::text[]) as m(id, marker)
where u.tenancy_id = %(tenancy_id)s and u.id = m.id
