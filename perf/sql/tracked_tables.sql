-- The tables the sequencer visits, in its order (pyglue.sequence_changes orders by name).
select n.nspname as schema, c.relname as name
from pyglue.tracked_tables t
join pg_class c on c.oid = t.table_name
join pg_namespace n on n.oid = c.relnamespace
order by t.table_name::text
