-- pyglue.add_webhook(p_tenancy_id, p_name, p_url, p_tables, p_secret, p_allow_private,
-- p_mappings): register an HTTP endpoint that receives a tenancy's sequenced changes as
-- signed POSTs.
--
-- The endpoint starts at the current end of the change feed: it receives every change
-- sequenced after it was added (rows flagged but not yet sequenced included), in order,
-- from its own cursor (pyglue.webhooks.last_delivered_sequence_id). p_tables: tracked
-- tables it subscribes to (null: every tracked table, including ones tracked later).
-- p_mappings: sync mappings (by name) that shape the rows of their source tables, as they
-- shape a target's rows; the worker must know them (its mappings folders); a mapping whose
-- source table the endpoint does not receive is refused when registered, else it is
-- checked by the Python layer.
-- p_secret: a Standard Webhooks secret 'whsec_<base64 of 24-64 bytes>'; generated (32
-- random bytes from gen_random_uuid) when null. The secret is returned here once;
-- nothing else pyglue prints shows it (the table is not readable by pyglue_mapping_reader).
--
-- URL checks: http or https only, a host, no spaces; unless p_allow_private, a host that is
-- an IP literal in a loopback, private, link-local (the 169.254.169.254 metadata
-- service), shared, multicast or unspecified range (IPv4, IPv6, IPv4-mapped) or named
-- localhost is refused. Host names are resolved and checked by the Python layer, when the
-- endpoint is added and again at each delivery (DNS rebinding); psql callers get only the
-- literal check here.
--
-- Installs the first-stamp column and trigger (pyglue._track_first_stamp) on the
-- subscribed tables, so events can say insert or update.
-- Returns: the endpoint id and its secret.
-- Errors: 22004 null tenancy; 22023 bad name, URL, secret, table or mapping list; 23503 unknown
-- tenancy (when app.tenancies exists); 42P01 a table that is not tracked; 23505 name taken.
-- Locks: ACCESS EXCLUSIVE briefly on each subscribed table the first time (ADD COLUMN).
create or replace function pyglue.add_webhook(p_tenancy_id uuid, p_name text, p_url text,
                                              p_tables text[] default null, p_secret text default null,
                                              p_allow_private boolean default false, p_mappings text[] default null)
returns table (id bigint, secret text)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_host text;
    v_ip inet;
    v_tables text[];
    v_bad text;
    v_secret text := p_secret;
    v_key bytea;
    v_exists boolean;
    v_id bigint;
begin
    if p_tenancy_id is null then
        raise exception 'tenancy id must not be null' using errcode = '22004';
    end if;
    if to_regclass('app.tenancies') is not null then
        execute 'select exists (select 1 from app.tenancies t where t.id = $1)' into v_exists using p_tenancy_id;
        if not v_exists then
            raise exception 'no tenancy %', p_tenancy_id using errcode = '23503';
        end if;
    end if;
    if p_name is null or p_name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' then
        raise exception 'invalid webhook name %: use 1-63 letters, digits, _ . -', coalesce(quote_literal(p_name), 'NULL')
            using errcode = '22023';
    end if;

    -- scheme://[userinfo@]host[:port][/path...]: the host, with IPv6 brackets removed
    v_host := lower(substring(p_url from '^[Hh][Tt][Tt][Pp][Ss]?://(?:[^/?#@]*@)?(\[[^\]/]*\]|[^/?#:]+)(?::[0-9]{1,5})?(?:[/?#]|$)'));
    if p_url is null or p_url ~ '[[:space:]]' or length(p_url) > 2000 or v_host is null or v_host = '' then
        raise exception 'invalid webhook URL %: only http:// and https:// URLs with a host are accepted',
            coalesce(quote_literal(left(regexp_replace(p_url, '//[^/@]*@', '//'), 200)), 'NULL') using errcode = '22023';
    end if;
    v_host := btrim(v_host, '[]');
    if not coalesce(p_allow_private, false) then
        begin
            v_ip := v_host::inet;
        exception when invalid_text_representation then
            v_ip := null;
        end;
        if v_host in ('localhost', 'localhost.') or v_host like '%.localhost' or v_host like '%.localhost.'
           or (v_ip is not null and (
               -- IPv4-mapped (::ffff:0:0/96) and NAT64 IPv6 addresses are refused whole
               v_ip <<= any (array['0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16',
                                     '172.16.0.0/12', '192.0.0.0/24', '192.168.0.0/16', '198.18.0.0/15',
                                     '224.0.0.0/3', '::/128', '::1/128', '::ffff:0:0/96', '64:ff9b::/96',
                                     'fc00::/7', 'fe80::/10', 'ff00::/8']::inet[]))) then
            raise exception 'webhook URL host % is a loopback, private, link-local or metadata address; refused (allow_private permits it)',
                v_host using errcode = '22023';
        end if;
    end if;

    if p_tables is not null then
        if cardinality(p_tables) = 0 then
            raise exception 'webhook % subscribes to no table: give tables or null for all', p_name
                using errcode = '22023';
        end if;
        select string_agg(x.name, ', ') into v_bad
        from unnest(p_tables) as x(name)
        where x.name is null or to_regclass(x.name) is null
           or not exists (select 1 from pyglue.tracked_tables t where t.table_name = to_regclass(x.name));
        if v_bad is not null then
            raise exception 'cannot subscribe webhook % to %: not a tracked table', p_name, v_bad
                using errcode = '42P01';
        end if;
        select array_agg(distinct to_regclass(x.name)::text order by to_regclass(x.name)::text) into v_tables
        from unnest(p_tables) as x(name);
    end if;

    select string_agg(x.name, ', ' order by x.ord) into v_bad
    from unnest(p_mappings) with ordinality as x(name, ord)
    left join pyglue.sync_mappings m on m.name = x.name
    where x.name is null or x.name !~ '^[a-z][a-z0-9_]{0,62}$'
       or (m.name is not null and v_tables is not null and not (m.source_table = any (v_tables)));
    if v_bad is not null then
        raise exception 'cannot shape webhook % rows with mapping %: not a mapping of a table it receives', p_name, v_bad
            using errcode = '22023';
    end if;

    if v_secret is null then
        v_key := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');
        v_secret := 'whsec_' || encode(v_key, 'base64');
    else
        begin
            v_key := decode(substr(v_secret, 7), 'base64');
        exception when others then
            v_key := null;
        end;
        if left(v_secret, 6) <> 'whsec_' or v_key is null or length(v_key) not between 24 and 64 then
            raise exception 'invalid webhook secret: use whsec_ followed by the base64 of 24 to 64 random bytes'
                using errcode = '22023';
        end if;
    end if;

    begin
        insert into pyglue.webhooks (tenancy_id, name, url, tables, mappings, secret, allow_private,
                                     last_delivered_sequence_id)
        values (p_tenancy_id, p_name, p_url, v_tables, nullif(p_mappings, '{}'), v_secret, coalesce(p_allow_private, false),
                (select case when s.is_called then s.last_value else 0 end from pyglue.change_sequence s))
        returning pyglue.webhooks.id into v_id;
    exception when unique_violation then
        raise exception 'webhook % already exists for tenancy %', p_name, p_tenancy_id using errcode = '23505';
    end;

    perform pyglue._track_first_stamp(t.table_name)
    from pyglue.tracked_tables t
    where v_tables is null or t.table_name::text = any (v_tables);

    id := v_id;
    secret := v_secret;
    return next;
end;
$$;

comment on function pyglue.add_webhook(uuid, text, text, text[], text, boolean, text[]) is
    'Register a webhook endpoint of a tenancy for the changes of chosen tracked tables (all when null), rows optionally shaped by sync mappings; returns its id and its secret (generated when not given), the only time it is shown.';
