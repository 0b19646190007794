-- The public SQL API for docs/sql-api.md: every function and procedure of the given schemas
-- whose name does not start with '_' (those are internal) and that is not a trigger function, with its signature, result,
-- COMMENT ON text and parameters (IN and INOUT, with their defaults), in a stable order.
-- Functions an extension created (pg_trgm's, where it is installed) are left out.
select n.nspname as schema, p.proname as name, p.prokind as kind, p.proretset as returns_set,
       pg_get_function_identity_arguments(p.oid) as identity,
       pg_get_function_arguments(p.oid) as arguments,
       pg_get_function_result(p.oid) as result,
       obj_description(p.oid, 'pg_proc') as comment,
       coalesce((select jsonb_agg(jsonb_build_object(
                        'name', coalesce(p.proargnames[a.i], ''),
                        'type', format_type(a.t, null),
                        'default', pg_get_function_arg_default(p.oid, a.i::integer))
                    order by a.i)
                 from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) with ordinality as a(t, i)
                 where coalesce(p.proargmodes[a.i], 'i') in ('i', 'b')), '[]') as parameters
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
where n.nspname = any (%(schemas)s::text[])
  and p.proname !~ '^_'
  and p.prokind in ('f', 'p')
  and p.prorettype <> 'trigger'::regtype
  and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                  and d.deptype = 'e')
order by n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)
