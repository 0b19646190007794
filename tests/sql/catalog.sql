-- A comparable description of everything pyglue owns in a database: one row per object,
-- (kind, name, definition). Two databases with equal rows have the same schema.
with owned as (
    select oid, nspname from pg_namespace where nspname in ('pyglue', 'app', 'billing')
)
select 'schema' as kind, nspname as name, coalesce(obj_description(oid, 'pg_namespace'), '') as definition
from owned
union all
select 'column', c.table_schema || '.' || c.table_name || '.' || c.column_name,
       concat_ws(' ', c.ordinal_position, c.data_type, c.udt_name, c.is_nullable, c.column_default,
                 c.is_generated, c.generation_expression)
from information_schema.columns c join owned o on o.nspname = c.table_schema
union all
select 'constraint', n.nspname || '.' || r.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
from pg_constraint k join pg_class r on r.oid = k.conrelid join pg_namespace n on n.oid = r.relnamespace
join owned o on o.oid = n.oid
union all
select 'index', schemaname || '.' || indexname, indexdef
from pg_indexes join owned o on o.nspname = schemaname
union all
select 'routine', p.oid::regprocedure::text, pg_get_functiondef(p.oid) || coalesce(obj_description(p.oid, 'pg_proc'), '')
from pg_proc p join owned o on o.oid = p.pronamespace
union all
select 'trigger', t.tgrelid::regclass::text || '.' || t.tgname, pg_get_triggerdef(t.oid)
from pg_trigger t join pg_class r on r.oid = t.tgrelid join owned o on o.oid = r.relnamespace
where not t.tgisinternal
union all
select 'policy', schemaname || '.' || tablename || '.' || policyname,
       concat_ws(' ', permissive, roles::text, cmd, qual, with_check)
from pg_policies join owned o on o.nspname = schemaname
union all
select 'sequence', sequence_schema || '.' || sequence_name, concat_ws(' ', data_type, start_value, increment)
from information_schema.sequences join owned o on o.nspname = sequence_schema
union all
select 'view', schemaname || '.' || viewname, definition
from pg_views join owned o on o.nspname = schemaname
order by 1, 2
