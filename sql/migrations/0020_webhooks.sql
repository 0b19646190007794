-- webhooks (issue 16): outgoing HTTP requests on change. A tenancy registers endpoints
-- (pyglue.webhooks) that receive its sequenced changes of chosen tracked tables as signed
-- POSTs (Standard Webhooks), delivered by the worker from the same feed and queue as sync,
-- each endpoint from its own cursor, advanced in the transaction that records a 2xx; every
-- attempt is logged in pyglue.webhook_deliveries. Tables a webhook subscribes to get a
-- first_sequence_id column so events say insert or update. purge_deleted_rows keeps the
-- tombstones an endpoint has not received yet.
-- depends: 0019_user_search

create table if not exists pyglue.webhooks (
    id                         bigint generated always as identity primary key,
    tenancy_id                 uuid not null,
    name                       text not null,
    url                        text not null,
    tables                     text[],
    mappings                   text[],
    secret                     text not null,
    allow_private              boolean not null default false,
    enabled                    boolean not null default true,
    created_at                 timestamptz not null default now(),
    last_delivered_sequence_id bigint not null default 0,
    last_delivered_at          timestamptz,
    pending_batch_end          bigint,
    attempts                   integer not null default 0,
    retry_after                timestamptz,
    parked_at                  timestamptz,
    last_success_at            timestamptz,
    last_failure_at            timestamptz,
    last_status                integer,
    last_error                 text,
    last_response              text,
    constraint webhooks_name_key unique (tenancy_id, name)
);
comment on table pyglue.webhooks is
    'HTTP endpoints of a tenancy that receive its changes (subscribed tables, null: all), with their cursor, secret and delivery health; the secret is never printed after creation';
comment on column pyglue.webhooks.mappings is
    'Sync mappings that shape the rows of their source tables in this endpoint''s events (null: rows as stored)';
comment on column pyglue.webhooks.pending_batch_end is
    'Sequence id of the last event of the batch being retried: a retry sends exactly that batch again';

create table if not exists pyglue.webhook_deliveries (
    id                bigint generated always as identity primary key,
    webhook_id        bigint not null references pyglue.webhooks (id) on delete cascade,
    attempted_at      timestamptz not null default now(),
    after_sequence_id bigint not null,
    last_sequence_id  bigint not null,
    events            integer not null,
    status_code       integer,
    outcome           text not null check (outcome in ('delivered', 'retrying', 'parked')),
    error             text,
    response_excerpt  text,
    duration_ms       integer
);
comment on table pyglue.webhook_deliveries is
    'One row per webhook delivery attempt (batch range, status, outcome, response excerpt), kept 7 days';
create index if not exists webhook_deliveries_webhook_idx on pyglue.webhook_deliveries (webhook_id, attempted_at);

-- copied from sql/functions/pyglue._tg_first_stamp.sql
-- pyglue._tg_first_stamp(): BEFORE UPDATE row trigger of tables webhooks subscribe to (see
-- pyglue._track_first_stamp). Its WHEN clause limits it to the sequencer's first stamp of a
-- row; this keeps that id.
create or replace function pyglue._tg_first_stamp()
returns trigger
language plpgsql
as $$
begin
    new.first_sequence_id := new.sequence_id;
    return new;
end;
$$;

comment on function pyglue._tg_first_stamp() is
    'Trigger of webhook-subscribed tables: keep the sequence id of a row''s first stamp.';

-- copied from sql/functions/pyglue._track_first_stamp.sql
-- pyglue._track_first_stamp(p_table): let webhook events tell an insert from an update.
--
-- Adds first_sequence_id bigint to a tracked table and a BEFORE UPDATE row trigger
-- (_050_pyglue_first_stamp, so it fires before the change flag) that copies the
-- sequence id the sequencer gives a row the first time it stamps it. A webhook event is
-- an insert when the row's first stamp is past the endpoint's cursor (the endpoint never
-- received an earlier event of that row), else an update. Rows stamped before this ran
-- keep null (an update for every endpoint: they existed before). Only tables a webhook
-- subscribes to get it (add_webhook, and the pyglue.tracked_tables trigger for tables
-- tracked later while an all-tables webhook exists). Idempotent: no DDL when present.
-- Locks: ACCESS EXCLUSIVE on p_table, the first time only.
create or replace function pyglue._track_first_stamp(p_table regclass)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if exists (select 1 from pg_trigger g where g.tgrelid = p_table and g.tgname = '_050_pyglue_first_stamp') then
        return;
    end if;
    execute format('alter table %s add column if not exists first_sequence_id bigint', p_table);
    execute format(
        'create or replace trigger _050_pyglue_first_stamp before update on %s for each row'
        ' when (old.sequence_id is null and new.sequence_id is not null)'
        ' execute function pyglue._tg_first_stamp()', p_table);
end;
$$;

comment on function pyglue._track_first_stamp(regclass) is
    'Add first_sequence_id and the trigger recording a row''s first sequence id (webhook insert vs update). Idempotent.';

-- copied from sql/functions/pyglue._untrack_first_stamp.sql
-- pyglue._untrack_first_stamp(p_table): drop what pyglue._track_first_stamp added (the
-- trigger and the first_sequence_id column); called when a table stops being tracked (the
-- trigger's WHEN clause depends on sequence_id, which untrack_table may drop) and by the
-- rollback of 0019. A table without them is left alone.
-- Locks: ACCESS EXCLUSIVE on p_table.
create or replace function pyglue._untrack_first_stamp(p_table regclass)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select 1 from pg_trigger g where g.tgrelid = p_table and g.tgname = '_050_pyglue_first_stamp') then
        return;
    end if;
    execute format('drop trigger _050_pyglue_first_stamp on %s', p_table);
    execute format('alter table %s drop column if exists first_sequence_id', p_table);
end;
$$;

comment on function pyglue._untrack_first_stamp(regclass) is
    'Drop the first-stamp trigger and column of a table (see _track_first_stamp).';

-- copied from sql/functions/pyglue.add_webhook.sql
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

-- copied from sql/functions/pyglue.remove_webhook.sql
-- pyglue.remove_webhook(p_tenancy_id, p_name): forget a webhook endpoint and its delivery
-- log. Returns false when the tenancy has no webhook of that name.
create or replace function pyglue.remove_webhook(p_tenancy_id uuid, p_name text)
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
    with gone as (
        delete from pyglue.webhooks w where w.tenancy_id = p_tenancy_id and w.name = p_name returning 1
    )
    select exists (select 1 from gone);
$$;

comment on function pyglue.remove_webhook(uuid, text) is
    'Remove a webhook endpoint of a tenancy (and its delivery log). Returns false if there was none.';

-- copied from sql/functions/pyglue.set_webhook_enabled.sql
-- pyglue.set_webhook_enabled(p_tenancy_id, p_name, p_enabled): pause or resume deliveries
-- to an endpoint. A disabled endpoint keeps its cursor: changes wait, nothing is lost.
-- Enabling clears a backoff (not a parked state: that is pyglue.retry_webhook) and queues
-- the tenancy. Returns false when there is no such webhook.
create or replace function pyglue.set_webhook_enabled(p_tenancy_id uuid, p_name text, p_enabled boolean)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_enabled is null then
        raise exception 'enabled must be true or false, not null' using errcode = '22004';
    end if;
    update pyglue.webhooks w
    set enabled = p_enabled,
        retry_after = case when p_enabled then null else w.retry_after end
    where w.tenancy_id = p_tenancy_id and w.name = p_name;
    if not found then
        return false;
    end if;
    if p_enabled then
        perform pyglue.enqueue_sync(p_tenancy_id);
    end if;
    return true;
end;
$$;

comment on function pyglue.set_webhook_enabled(uuid, text, boolean) is
    'Enable (clearing its backoff, queueing the tenancy) or disable a webhook endpoint. Returns false if there is none.';

-- copied from sql/functions/pyglue.retry_webhook.sql
-- pyglue.retry_webhook(p_tenancy_id, p_name): resume a parked (or backing-off) endpoint
-- from its cursor now: the batch that failed is sent again, then everything after it.
-- The last status and response stay as history. Queues the tenancy.
-- Returns false when there is no such webhook.
create or replace function pyglue.retry_webhook(p_tenancy_id uuid, p_name text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    update pyglue.webhooks w
    set parked_at = null, attempts = 0, retry_after = null
    where w.tenancy_id = p_tenancy_id and w.name = p_name;
    if not found then
        return false;
    end if;
    perform pyglue.enqueue_sync(p_tenancy_id);
    return true;
end;
$$;

comment on function pyglue.retry_webhook(uuid, text) is
    'Unpark a webhook endpoint and deliver again from its cursor now (queues the tenancy). Returns false if there is none.';

-- copied from sql/functions/pyglue.record_webhook_delivery.sql
-- pyglue.record_webhook_delivery(...): settle one delivery attempt of a webhook batch, in
-- the transaction that holds the endpoint's row lock (the worker locks it FOR UPDATE
-- before sending, so one batch per endpoint is in flight).
--
-- p_cursor: the endpoint's cursor the batch was read after; p_batch_end: the sequence id
-- of its last event; p_status: the HTTP status (null: no response: network error or
-- timeout, p_error says which); p_response: an excerpt of the response body.
-- Outcomes:
--   delivered  2xx: the cursor moves to p_batch_end, attempts and backoff are cleared;
--   retrying   no response, 5xx or 429: attempts + 1, the batch is kept (the retry sends
--              exactly these events again) and the next attempt waits Retry-After
--              (p_retry_after_s, capped at p_max_delay_s) or a capped exponential backoff
--              p_base_delay_s * 2^(attempts - 1) with jitter (50-100 %);
--   parked     the same after p_max_attempts attempts, or at once for any other status
--              (4xx but 429, 3xx, 1xx): the endpoint stops, with the status and response
--              kept, until pyglue.retry_webhook. Other endpoints are not affected.
-- Every attempt is logged in pyglue.webhook_deliveries (kept 7 days per endpoint).
-- Returns: the outcome, or 'gone' when the endpoint was removed meanwhile.
-- Errors: 40001 the cursor is no longer p_cursor (another delivery moved it).
-- Locks: the endpoint's row (FOR UPDATE).
create or replace function pyglue.record_webhook_delivery(
    p_webhook_id bigint, p_cursor bigint, p_batch_end bigint, p_events integer, p_status integer,
    p_error text, p_response text, p_duration_ms integer, p_retry_after_s double precision default null,
    p_max_attempts integer default 12, p_base_delay_s double precision default 1.0,
    p_max_delay_s double precision default 300.0)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_hook pyglue.webhooks%rowtype;
    v_outcome text;
    v_delay double precision;
begin
    select * into v_hook from pyglue.webhooks w where w.id = p_webhook_id for update;
    if not found then
        return 'gone';
    end if;
    if v_hook.last_delivered_sequence_id <> p_cursor then
        raise exception 'webhook % cursor is %, not %: another delivery moved it', v_hook.name,
            v_hook.last_delivered_sequence_id, p_cursor using errcode = '40001';
    end if;
    v_outcome := case
        when p_status between 200 and 299 then 'delivered'
        when p_status is null or p_status = 429 or p_status >= 500 then
            case when v_hook.attempts + 1 >= greatest(p_max_attempts, 1) then 'parked' else 'retrying' end
        else 'parked'
    end;
    if v_outcome = 'delivered' then
        update pyglue.webhooks w
        set last_delivered_sequence_id = p_batch_end, pending_batch_end = null, attempts = 0,
            retry_after = null, last_delivered_at = now(), last_success_at = now(), last_status = p_status
        where w.id = p_webhook_id;
    else
        v_delay := least(greatest(p_max_delay_s, 0),
                         case when p_retry_after_s is not null then greatest(p_retry_after_s, 0)
                              else greatest(p_base_delay_s, 0) * power(2, least(v_hook.attempts, 30))
                                   * (0.5 + random() * 0.5) end);
        update pyglue.webhooks w
        set attempts = w.attempts + 1, pending_batch_end = p_batch_end,
            retry_after = case when v_outcome = 'retrying' then now() + make_interval(secs => v_delay) end,
            parked_at = case when v_outcome = 'parked' then now() end,
            last_failure_at = now(), last_status = p_status, last_error = left(p_error, 500),
            last_response = left(p_response, 1000)
        where w.id = p_webhook_id;
    end if;
    insert into pyglue.webhook_deliveries (webhook_id, after_sequence_id, last_sequence_id, events, status_code,
                                           outcome, error, response_excerpt, duration_ms)
    values (p_webhook_id, p_cursor, p_batch_end, p_events, p_status, v_outcome, left(p_error, 500),
            left(p_response, 1000), p_duration_ms);
    delete from pyglue.webhook_deliveries d
    where d.webhook_id = p_webhook_id and d.attempted_at < now() - interval '7 days';
    return v_outcome;
end;
$$;

comment on function pyglue.record_webhook_delivery(bigint, bigint, bigint, integer, integer, text, text, integer,
                                                   double precision, integer, double precision, double precision) is
    'Settle a webhook batch attempt: advance the cursor on 2xx, back off on no response/5xx/429, park on other statuses or after N attempts; log it. Returns the outcome.';

-- copied from sql/functions/pyglue.webhook_status.sql
-- pyglue.webhook_status(p_tenancy_id): per webhook endpoint of a tenancy (or of all):
-- state (ok, retrying, parked, disabled), pending_events (rows of its tables and their
-- tombstones past its cursor or not yet sequenced), its cursor, last delivery, last
-- success and failure with the status code, error and a response excerpt, attempts,
-- the next retry, and lag_seconds: how long ago the oldest change it has not received
-- was sequenced (null when it has none). The URL is shown without user:password@; the
-- secret never.
create or replace function pyglue.webhook_status(p_tenancy_id uuid default null)
returns table (
    tenancy_id uuid, name text, url text, tables text[], mappings text[], enabled boolean, state text,
    pending_events bigint, last_delivered_sequence_id bigint, last_delivered_at timestamptz,
    last_success_at timestamptz, last_failure_at timestamptz, last_status integer, last_error text,
    last_response text, attempts integer, retry_after timestamptz, parked_at timestamptz,
    lag_seconds double precision)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_hook record;
    v_table record;
    v_count bigint;
    v_min bigint;
    v_pending bigint;
    v_oldest bigint;
begin
    for v_hook in
        select w.* from pyglue.webhooks w
        where p_tenancy_id is null or w.tenancy_id = p_tenancy_id
        order by w.tenancy_id, w.name
    loop
        v_pending := 0;
        v_oldest := null;
        for v_table in
            select t.table_name, t.tenancy_column from pyglue.tracked_tables t
            where v_hook.tables is null or t.table_name::text = any (v_hook.tables)
        loop
            execute format('select count(*), min(sequence_id) filter (where sequence_id > $2) from %s'
                           ' where %I = $1 and (sequence_id > $2 or should_update_sequence_id)',
                           v_table.table_name, v_table.tenancy_column)
            into v_count, v_min using v_hook.tenancy_id, v_hook.last_delivered_sequence_id;
            v_pending := v_pending + v_count;
            v_oldest := least(v_oldest, v_min);
            select count(*), min(d.sequence_id) filter (where d.sequence_id > v_hook.last_delivered_sequence_id)
            into v_count, v_min
            from pyglue.deleted_rows d
            where d.tenancy_id = v_hook.tenancy_id and d.table_name = v_table.table_name::text
              and (d.sequence_id > v_hook.last_delivered_sequence_id or d.should_update_sequence_id);
            v_pending := v_pending + v_count;
            v_oldest := least(v_oldest, v_min);
        end loop;
        tenancy_id := v_hook.tenancy_id;
        name := v_hook.name;
        url := regexp_replace(v_hook.url, '^([A-Za-z]+://)[^/?#@]*@', '\1');
        tables := v_hook.tables;
        mappings := v_hook.mappings;
        enabled := v_hook.enabled;
        state := case when v_hook.parked_at is not null then 'parked'
                      when not v_hook.enabled then 'disabled'
                      when v_hook.retry_after is not null then 'retrying'
                      else 'ok' end;
        pending_events := v_pending;
        last_delivered_sequence_id := v_hook.last_delivered_sequence_id;
        last_delivered_at := v_hook.last_delivered_at;
        last_success_at := v_hook.last_success_at;
        last_failure_at := v_hook.last_failure_at;
        last_status := v_hook.last_status;
        last_error := v_hook.last_error;
        last_response := v_hook.last_response;
        attempts := v_hook.attempts;
        retry_after := v_hook.retry_after;
        parked_at := v_hook.parked_at;
        lag_seconds := extract(epoch from now() - (select m.stamped_at from pyglue.sequence_marks m
                                                   where m.last_id >= v_oldest order by m.last_id limit 1));
        return next;
    end loop;
end;
$$;

comment on function pyglue.webhook_status(uuid) is
    'Per webhook endpoint: state, pending events, cursor, last success and failure (status, error, response excerpt), retry time, lag in seconds. Never the secret.';

-- copied from sql/functions/pyglue.purge_deleted_rows.sql
-- pyglue.purge_deleted_rows(p_older_than): drop old tombstones so the log stays small.
-- A tombstone goes when it is stamped, was deleted longer than p_older_than ago, and no
-- sync target of its tenancy still needs it: every target whose mapping exports that
-- table has a cursor at or past it (a target that never synced needs no tombstones), and
-- so has every webhook endpoint of the tenancy subscribed to that table (enabled, parked
-- or not: a parked endpoint resumes from its cursor).
-- Returns how many were removed. Errors: 22023 negative retention.
create or replace function pyglue.purge_deleted_rows(p_older_than interval default '7 days')
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count bigint;
begin
    if p_older_than is null or p_older_than < '0' then
        raise exception 'retention must not be negative, got %', p_older_than using errcode = '22023';
    end if;
    delete from pyglue.deleted_rows d
    where not d.should_update_sequence_id
      and d.deleted_at < now() - p_older_than
      and not exists (
          select 1
          from pyglue.sync_targets t
          join pyglue.sync_mappings m on m.source_table = d.table_name
          join pyglue.sync_cursors c on c.target_id = t.id and c.mapping_name = m.name
          where t.tenancy_id = d.tenancy_id and c.last_synced_sequence_id < d.sequence_id)
      and not exists (
          select 1
          from pyglue.webhooks w
          where w.tenancy_id = d.tenancy_id and w.last_delivered_sequence_id < d.sequence_id
            and (w.tables is null or d.table_name = any (w.tables)));
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

comment on function pyglue.purge_deleted_rows(interval) is
    'Delete stamped tombstones older than the retention period that no sync target or webhook still needs. Returns how many.';

-- copied from sql/triggers/pyglue.tracked_tables__first_stamp.sql
-- Keep the first-stamp column (pyglue._track_first_stamp) in step with tracking: a table
-- tracked while a webhook subscribes to every table gets it, so its events say insert or
-- update from the start; a table no longer tracked loses it before untrack_table can drop
-- sequence_id (the first-stamp trigger's WHEN clause depends on that column).
create or replace function pyglue.tg_tracked_tables__first_stamp()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        if exists (select 1 from pyglue.webhooks w where w.tables is null) then
            perform pyglue._track_first_stamp(new.table_name);
        end if;
    elsif to_regclass(old.table_name::text) is not null then
        perform pyglue._untrack_first_stamp(old.table_name);
    end if;
    return null;
end;
$$;

comment on function pyglue.tg_tracked_tables__first_stamp() is
    'Trigger: add the first-stamp column to tables tracked while an all-tables webhook exists; drop it when a table is untracked.';

create or replace trigger _500_first_stamp
    after insert or delete on pyglue.tracked_tables
    for each row execute function pyglue.tg_tracked_tables__first_stamp();
