-- pyglue.add_sync_target(p_tenancy_id, p_name, p_connection_string): register an external
-- Postgres database that receives a tenancy's data, and queue its first sync.
-- The connection string is stored as given (it may hold a password: the table is not
-- readable by pyglue_mapping_reader, and pyglue never prints it).
-- Returns: the target id.
-- Errors: 22023 bad name or empty connection string; 23505 name already used by the tenancy.
create or replace function pyglue.add_sync_target(p_tenancy_id uuid, p_name text, p_connection_string text)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id bigint;
begin
    if p_tenancy_id is null then
        raise exception 'tenancy id must not be null' using errcode = '22004';
    end if;
    if p_name is null or p_name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' then
        raise exception 'invalid sync target name %: use 1-63 letters, digits, _ . -', coalesce(quote_literal(p_name), 'NULL')
            using errcode = '22023';
    end if;
    if coalesce(btrim(p_connection_string), '') = '' then
        raise exception 'connection string of sync target % must not be empty', p_name using errcode = '22023';
    end if;
    insert into pyglue.sync_targets (tenancy_id, name, connection_string)
    values (p_tenancy_id, p_name, p_connection_string)
    returning id into v_id;
    perform pyglue.enqueue_sync(p_tenancy_id);
    return v_id;
exception when unique_violation then
    raise exception 'sync target % already exists for tenancy %', p_name, p_tenancy_id using errcode = '23505';
end;
$$;

comment on function pyglue.add_sync_target(uuid, text, text) is
    'Register an external Postgres database as a sync target of a tenancy and queue its first sync. Returns the id.';
