-- The latency writer's change: each user of the batch gets its own marker in the marker
-- column (the tracked table's trigger flags them for the sequencer). One statement, one
-- commit; at = the server's clock once every row is written, just before the commit (the
-- count reads the update's rows first; an unread data-modifying CTE would run after it).
with changed as (
    update app.users u
    set {column} = m.marker
    from unnest(%(ids)s::uuid[], %(markers)s::text[]) as m(id, marker)
    where u.tenancy_id = %(tenancy_id)s and u.id = m.id
    returning 1
)
select extract(epoch from clock_timestamp())::float8 as at, count(*) as changed from changed
