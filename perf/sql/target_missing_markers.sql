-- The latency bench's last check: how many of the changes written (every one, not only the
-- sample the poller waited for) the target still lacks.
select count(*) as missing
from unnest(%(ids)s::uuid[], %(markers)s::text[]) as w(id, marker)
where not exists (select 1 from {table} t where t.id = w.id and t.{column} = w.marker)
