-- The tracked tables a webhook endpoint receives (all when its list is null): schema, name,
-- tenancy and key columns, and whether the first-stamp column is there (insert vs update).
select t.table_name::text as name, n.nspname as schema, c.relname as "table", t.tenancy_column,
       t.key_columns::text[] as key_columns,
       exists (select 1 from pg_attribute a where a.attrelid = t.table_name and a.attname = 'first_sequence_id'
               and not a.attisdropped) as first_stamp
from pyglue.tracked_tables t
join pg_class c on c.oid = t.table_name
join pg_namespace n on n.oid = c.relnamespace
where %(tables)s::text[] is null or t.table_name::text = any (%(tables)s::text[])
order by t.table_name::text
