-- When each sequence id was handed out (the second of its sequencer pass), for events'
-- occurred_at: the first mark at or past it.
select s.id, (select m.stamped_at from pyglue.sequence_marks m where m.last_id >= s.id
              order by m.last_id limit 1) as stamped_at
from unnest(%(ids)s::bigint[]) as s(id)
