-- depends: 0012_billing_catalog
-- stripe sync (issue 9, Stripe part): the tables and functions behind `pyglue billing
-- stripe-sync` / `stripe-deliver` and pyglue.billing.stripe. Stripe subscriptions are
-- upserted by Stripe id (billing.upsert_stripe_subscriptions); regen's moves of
-- Stripe-backed subscriptions queue, in the same statement, an outbox row that asks for the
-- new version id in the Stripe metadata, which the Python layer delivers with retries and
-- backoff, so a Stripe outage loses nothing and a sync meanwhile keeps the new version.
-- Per-tenancy Stripe keys live in a table only the owner reads.

-- stripe_settings: a tenancy's own Stripe secret key (else $PYGLUE_STRIPE_API_KEY is used).
-- Not readable by the mapping reader role (whose fetch login runs tenants' SQL) or PUBLIC.
create table if not exists billing.stripe_settings (
    tenancy_id uuid primary key references app.tenancies (id) on delete cascade,
    api_key    text not null,
    updated_at timestamptz not null default now()
);
comment on table billing.stripe_settings is
    'Per-tenancy Stripe secret key (billing.set_stripe_api_key); readable by the owner only, never printed';
revoke all on billing.stripe_settings from public;
revoke all on billing.stripe_settings from pyglue_mapping_reader;

-- stripe_outbox: metadata writes into Stripe subscriptions, queued in the transaction that
-- makes them necessary (regen), delivered later by pyglue.billing.stripe.deliver_outbox.
-- Delivered rows are kept (delivered_at): a sync whose Stripe read began before a delivery
-- still trusts the local version (see billing._stripe_subscription_rows).
create table if not exists billing.stripe_outbox (
    tenancy_id             uuid not null,
    id                     bigint generated always as identity,
    subscription_id        uuid not null,
    stripe_subscription_id text not null,
    metadata               jsonb not null check (jsonb_typeof(metadata) = 'object'),
    attempts               integer not null default 0 check (attempts >= 0),
    next_attempt_at        timestamptz not null default now(),
    last_error             text,
    created_at             timestamptz not null default now(),
    delivered_at           timestamptz,
    primary key (tenancy_id, id),
    constraint stripe_outbox_subscription_fkey
        foreign key (tenancy_id, subscription_id) references billing.subscriptions (tenancy_id, id) on delete cascade
);
comment on table billing.stripe_outbox is
    'Stripe subscription metadata writes to deliver (regen''s new versions), with attempts, backoff and last error; kept after delivery';
-- at most one undelivered write per subscription (regen replaces its metadata: ON CONFLICT)
create unique index if not exists stripe_outbox_pending_idx
    on billing.stripe_outbox (tenancy_id, subscription_id) where delivered_at is null;
-- the claim: undelivered rows by due time
create index if not exists stripe_outbox_due_idx
    on billing.stripe_outbox (next_attempt_at, id) where delivered_at is null;
-- the sync's "delivered since the read began" probe, and the foreign key's cascade
create index if not exists stripe_outbox_subscription_idx
    on billing.stripe_outbox (tenancy_id, subscription_id, delivered_at);

-- copied from sql/functions/billing._stripe_subscription_rows.sql
-- billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at): a batch of Stripe
-- subscriptions (validated by billing.upsert_stripe_subscriptions) as the rows of
-- billing.subscriptions they stand for, with the id of the existing row (null: new).
--
-- p_rows: a JSON array of {stripe_subscription_id, customer_type, customer_id, product_id,
-- product_version_id (null: not named), status, quantity, started_at, current_period_start,
-- current_period_end, cancel_at_period_end, ended_at, canceled_at}, times in Unix seconds as
-- Stripe gives them. User and team ids come out in canonical uuid form. ended_at is null
-- unless the status is canceled or incomplete_expired, and then Stripe's ended_at (else
-- canceled_at, else the period start), never before the start.
-- The version, for a subscription of the product it already has: its own while an outbox
-- row is writing that version into Stripe (undelivered, or delivered at or after p_read_at,
-- when the Stripe data may have been read before the write); else the one the metadata
-- names; else its own. For a new subscription, or one whose product changed: the version
-- named, else the product's current version. Rows whose product or version does not exist
-- are left out (the caller has refused them already).
-- Reads billing.subscriptions, billing.stripe_outbox, billing.products and product_versions;
-- takes no locks.
create or replace function billing._stripe_subscription_rows(p_tenancy_id uuid, p_rows jsonb, p_read_at timestamptz)
returns table (subscription_id uuid, stripe_subscription_id text, customer_type text, customer_id text,
               product_id text, product_version_id text, product_line text, is_add_on boolean, stackable boolean,
               line_key text, status text, quantity integer, started_at timestamptz,
               current_period_start timestamptz, current_period_end timestamptz, cancel_at_period_end boolean,
               ended_at timestamptz)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select s.id, r.stripe_subscription_id, r.customer_type,
           case when r.customer_type in ('user', 'team') then r.customer_id::uuid::text else r.customer_id end,
           r.product_id, v.id, v.product_line, v.is_add_on, v.stackable, v.line_key, r.status, r.quantity,
           to_timestamp(r.started_at), to_timestamp(r.current_period_start), to_timestamp(r.current_period_end),
           coalesce(r.cancel_at_period_end, false),
           case when r.status in ('canceled', 'incomplete_expired') then
               greatest(to_timestamp(r.started_at),
                        to_timestamp(coalesce(r.ended_at, r.canceled_at, r.current_period_start)))
           end
    from jsonb_to_recordset(p_rows) as r (stripe_subscription_id text, customer_type text, customer_id text,
                                          product_id text, product_version_id text, status text, quantity integer,
                                          started_at double precision, current_period_start double precision,
                                          current_period_end double precision, cancel_at_period_end boolean,
                                          ended_at double precision, canceled_at double precision)
    join billing.products p on p.tenancy_id = p_tenancy_id and p.product_id = r.product_id
    left join billing.subscriptions s
        on s.tenancy_id = p_tenancy_id and s.stripe_subscription_id = r.stripe_subscription_id
    join billing.product_versions v
        on v.tenancy_id = p_tenancy_id and v.product_id = r.product_id
       and v.id = case
               when s.product_id is distinct from r.product_id then coalesce(r.product_version_id, p.current_version_id)
               when exists (select 1 from billing.stripe_outbox o
                            where o.tenancy_id = p_tenancy_id and o.subscription_id = s.id
                              and (o.delivered_at is null or o.delivered_at >= p_read_at)) then s.product_version_id
               else coalesce(r.product_version_id, s.product_version_id)
           end;
$$;

comment on function billing._stripe_subscription_rows(uuid, jsonb, timestamptz) is
    'A validated batch of Stripe subscriptions as billing.subscriptions rows (existing id or null, resolved version).';

-- copied from sql/functions/billing.upsert_stripe_subscriptions.sql
-- billing.upsert_stripe_subscriptions(p_tenancy_id, p_rows, p_read_at): write a batch of a
-- tenancy's Stripe subscriptions into billing.subscriptions, keyed by Stripe id.
--
-- p_rows: a JSON array, one object per Stripe subscription (see
-- billing._stripe_subscription_rows for the fields; pyglue.billing.stripe builds them from
-- the Stripe objects and their metadata). p_read_at: when the caller began reading Stripe
-- (null: unknown); an outbox write delivered since then may not be in the data read.
-- New Stripe ids become subscriptions with creation_source 'stripe'; existing ones get the
-- status, quantity, periods, cancel-at-period-end, ended time, customer, product and
-- version Stripe has, and only when one of them differs (IS DISTINCT FROM), so a re-sync of
-- unchanged Stripe state writes no row version. The version is the one the metadata names;
-- without one an existing subscription keeps its own and a new one gets the product's
-- current version; while regen's new version is on its way into the Stripe metadata
-- (billing.stripe_outbox) the subscription keeps it, so a sync never moves it back. A
-- version change made here is logged in billing.subscription_moves like regen's.
-- One live plan per customer and product line: a Stripe subscription that becomes live in
-- a line where the customer has a live test-mode or API-granted plan ends that plan (status
-- canceled, ended at the Stripe subscription's start, not before the plan's own start, not
-- after now()); one where the customer has another live Stripe subscription is refused.
-- Returns: rows of billing.subscriptions inserted or updated (ended plans included).
-- Errors (nothing written): 22004 null tenancy; P0002 unknown tenancy; 22023 a batch that is
-- not an array, a malformed row (naming the Stripe id, field and value), a Stripe id given
-- twice, a product that does not exist in the tenancy, a version that is not one of the
-- product's, a customer type other than the product's; 23505 two live Stripe
-- subscriptions of one customer in one product line.
-- Locks: the existing rows that change (FOR NO KEY UPDATE: it waits for a regen moving
-- them, and computes the changes after the wait) and the non-Stripe plans it ends; an
-- insert racing another sync of the same Stripe id waits for it and then skips the row.
-- (No lock per tenancy: an advisory key anyone may take, a mapping fetch included, could
-- stall every sync.) A re-sync that changes nothing takes no row lock and writes nothing.
create or replace function billing.upsert_stripe_subscriptions(p_tenancy_id uuid, p_rows jsonb,
                                                               p_read_at timestamptz default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_bad record;
    v_pass boolean;
    v_count bigint;
    v_total bigint := 0;
    v_detail text;
begin
    if p_tenancy_id is null then
        raise exception 'tenancy id must not be null' using errcode = '22004';
    end if;
    if not exists (select 1 from app.tenancies t where t.id = p_tenancy_id) then
        raise exception 'no tenancy %', p_tenancy_id using errcode = 'P0002';
    end if;
    if jsonb_typeof(p_rows) is distinct from 'array' then
        raise exception 'Stripe subscriptions must be a JSON array, got %', coalesce(left(p_rows::text, 200), 'null')
            using errcode = '22023';
    end if;

    -- the shape of every row: the first fault, naming the row's Stripe id, the field and its value
    select e.ordinality, e.value ->> 'stripe_subscription_id' as stripe_id, f.problem into v_bad
    from jsonb_array_elements(p_rows) with ordinality as e
    cross join lateral (select case
        when jsonb_typeof(e.value) <> 'object' then format('must be an object, got %s', left(e.value::text, 200))
        when coalesce(e.value ->> 'stripe_subscription_id', '') !~ '^sub_[A-Za-z0-9_]{1,250}$'
            then format('stripe_subscription_id must be a Stripe subscription id (sub_...), got %s',
                        coalesce(e.value -> 'stripe_subscription_id', 'null'))
        when coalesce(e.value ->> 'customer_type', '') not in ('user', 'team', 'custom')
            then format('customer_type must be one of user, team, custom, got %s',
                        coalesce(e.value -> 'customer_type', 'null'))
        when jsonb_typeof(e.value -> 'customer_id') is distinct from 'string' or btrim(e.value ->> 'customer_id') = ''
            then format('customer_id must be a non-empty string, got %s', coalesce(e.value -> 'customer_id', 'null'))
        when e.value ->> 'customer_type' in ('user', 'team')
             and e.value ->> 'customer_id' !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
            then format('%s id must be a uuid, got %s', e.value ->> 'customer_type', e.value -> 'customer_id')
        when jsonb_typeof(e.value -> 'product_id') is distinct from 'string' or e.value ->> 'product_id' = ''
            then format('product_id must be a non-empty string, got %s', coalesce(e.value -> 'product_id', 'null'))
        when jsonb_typeof(e.value -> 'product_version_id') not in ('string', 'null')
            then format('product_version_id must be a string or null, got %s', e.value -> 'product_version_id')
        when coalesce(e.value ->> 'status', '') not in ('incomplete', 'incomplete_expired', 'trialing', 'active',
                                                        'past_due', 'canceled', 'unpaid', 'paused')
            then format('status %s is not a Stripe subscription status', coalesce(e.value -> 'status', 'null'))
        when jsonb_typeof(e.value -> 'quantity') is distinct from 'number'
             or (e.value -> 'quantity')::text !~ '^[1-9][0-9]{0,8}$'
            then format('quantity must be an integer from 1 to 999999999, got %s', coalesce(e.value -> 'quantity', 'null'))
        when jsonb_typeof(e.value -> 'started_at') is distinct from 'number'
            then format('started_at must be Unix seconds, got %s', coalesce(e.value -> 'started_at', 'null'))
        when jsonb_typeof(e.value -> 'current_period_start') is distinct from 'number'
            then format('current_period_start must be Unix seconds, got %s',
                        coalesce(e.value -> 'current_period_start', 'null'))
        when jsonb_typeof(e.value -> 'current_period_end') is distinct from 'number'
            then format('current_period_end must be Unix seconds, got %s',
                        coalesce(e.value -> 'current_period_end', 'null'))
        when (e.value ->> 'current_period_end')::numeric <= (e.value ->> 'current_period_start')::numeric
            then format('current_period_end %s is not after current_period_start %s',
                        e.value -> 'current_period_end', e.value -> 'current_period_start')
        when jsonb_typeof(e.value -> 'cancel_at_period_end') not in ('boolean', 'null')
            then format('cancel_at_period_end must be true or false, got %s', e.value -> 'cancel_at_period_end')
        when jsonb_typeof(e.value -> 'ended_at') not in ('number', 'null')
            then format('ended_at must be Unix seconds or null, got %s', e.value -> 'ended_at')
        when jsonb_typeof(e.value -> 'canceled_at') not in ('number', 'null')
            then format('canceled_at must be Unix seconds or null, got %s', e.value -> 'canceled_at')
        end as problem) as f
    where f.problem is not null
    order by e.ordinality
    limit 1;
    if found then
        raise exception 'Stripe subscription % (row %): %', coalesce(v_bad.stripe_id, '?'), v_bad.ordinality,
            v_bad.problem using errcode = '22023';
    end if;

    select r.stripe_subscription_id into v_bad
    from jsonb_to_recordset(p_rows) as r (stripe_subscription_id text)
    group by r.stripe_subscription_id having count(*) > 1
    order by 1 limit 1;
    if found then
        raise exception 'Stripe subscription % is in the batch more than once', v_bad.stripe_subscription_id
            using errcode = '22023';
    end if;

    -- products, versions and customer types, against the tenancy's catalog
    select r.stripe_subscription_id, r.product_id, r.product_version_id, r.customer_type, r.customer_id,
           p.product_id is null as no_product, cv.customer_type as product_customer_type,
           r.product_version_id is not null and v.id is null as no_version
    into v_bad
    from jsonb_to_recordset(p_rows) as r (stripe_subscription_id text, product_id text, product_version_id text,
                                          customer_type text, customer_id text)
    left join billing.products p on p.tenancy_id = p_tenancy_id and p.product_id = r.product_id
    left join billing.product_versions cv on cv.id = p.current_version_id
    left join billing.product_versions v
        on v.id = r.product_version_id and v.tenancy_id = p_tenancy_id and v.product_id = r.product_id
    where p.product_id is null or (r.product_version_id is not null and v.id is null)
       or cv.customer_type <> r.customer_type
    order by r.stripe_subscription_id
    limit 1;
    if found then
        if v_bad.no_product then
            raise exception 'Stripe subscription % names product "%", which does not exist in tenancy %',
                v_bad.stripe_subscription_id, v_bad.product_id, p_tenancy_id using errcode = '22023';
        elsif v_bad.no_version then
            raise exception 'Stripe subscription % names product version %, which is not a version of product "%" in tenancy %',
                v_bad.stripe_subscription_id, v_bad.product_version_id, v_bad.product_id, p_tenancy_id
                using errcode = '22023';
        end if;
        raise exception 'Stripe subscription %: product "%" is for % customers, not % %', v_bad.stripe_subscription_id,
            v_bad.product_id, v_bad.product_customer_type, v_bad.customer_type, v_bad.customer_id
            using errcode = '22023';
    end if;

    -- one live plan per customer and line, judged on the batch as it will be written: two
    -- live Stripe subscriptions (both in the batch, or one already stored) are refused
    with r as (
        select * from billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at) x
        where x.ended_at is null and not x.is_add_on and not x.stackable
    )
    select a.stripe_subscription_id as first_id, b.stripe_id as second_id, a.customer_type, a.customer_id, a.line_key
    into v_bad
    from r a
    join lateral (
        select r2.stripe_subscription_id as stripe_id from r r2
        where r2.customer_type = a.customer_type and r2.customer_id = a.customer_id and r2.line_key = a.line_key
          and r2.stripe_subscription_id > a.stripe_subscription_id
        union all
        select s.stripe_subscription_id from billing.subscriptions s
        where s.tenancy_id = p_tenancy_id and s.customer_type = a.customer_type and s.customer_id = a.customer_id
          and s.line_key = a.line_key and s.ended_at is null and not s.is_add_on and not s.stackable
          and s.stripe_subscription_id is not null and s.stripe_subscription_id <> a.stripe_subscription_id
          and s.stripe_subscription_id not in (select x.stripe_subscription_id
                                              from jsonb_to_recordset(p_rows) as x (stripe_subscription_id text))
    ) b on true
    order by a.stripe_subscription_id
    limit 1;
    if found then
        raise exception 'Stripe subscriptions % and % would both be live plans of % % in %', v_bad.first_id,
            v_bad.second_id, v_bad.customer_type, v_bad.customer_id,
            case when v_bad.line_key like 'line:%' then format('product line "%s"', substr(v_bad.line_key, 6))
                 else format('product "%s"', substr(v_bad.line_key, 9)) end
            using errcode = '23505';
    end if;

    begin
        -- end the test-mode / API plans that a live Stripe subscription replaces
        update billing.subscriptions s
        set status = 'canceled', ended_at = greatest(s.started_at, least(r.started_at, now()))
        from billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at) r
        where s.tenancy_id = p_tenancy_id and s.customer_type = r.customer_type and s.customer_id = r.customer_id
          and s.line_key = r.line_key and s.ended_at is null and not s.is_add_on and not s.stackable
          and s.stripe_subscription_id is null
          and r.ended_at is null and not r.is_add_on and not r.stackable;
        get diagnostics v_count = row_count;
        v_total := v_total + v_count;

        -- lock the existing rows that change; a row a concurrent regen is moving is waited for,
        -- and the statements below (a new snapshot) see its move and its outbox row
        perform 1
        from billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at) r
        join billing.subscriptions s on s.tenancy_id = p_tenancy_id and s.id = r.subscription_id
        where (s.customer_type, s.customer_id, s.product_id, s.product_version_id, s.status, s.quantity, s.started_at,
               s.current_period_start, s.current_period_end, s.cancel_at_period_end, s.ended_at)
              is distinct from
              (r.customer_type, r.customer_id, r.product_id, r.product_version_id, r.status, r.quantity, r.started_at,
               r.current_period_start, r.current_period_end, r.cancel_at_period_end, r.ended_at)
        for no key update of s;

        -- update what differs, the rows that end first (so a plan ending in Stripe frees its
        -- line before another one moves into it), logging version changes
        foreach v_pass in array array[true, false] loop
            with changed as (
                select r.*, s.product_version_id as from_version_id
                from billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at) r
                join billing.subscriptions s on s.tenancy_id = p_tenancy_id and s.id = r.subscription_id
                where (r.ended_at is not null) = v_pass
                  and (s.customer_type, s.customer_id, s.product_id, s.product_version_id, s.status, s.quantity,
                       s.started_at, s.current_period_start, s.current_period_end, s.cancel_at_period_end, s.ended_at)
                      is distinct from
                      (r.customer_type, r.customer_id, r.product_id, r.product_version_id, r.status, r.quantity,
                       r.started_at, r.current_period_start, r.current_period_end, r.cancel_at_period_end, r.ended_at)
            ), logged as (
                insert into billing.subscription_moves (tenancy_id, subscription_id, from_version_id, to_version_id)
                select p_tenancy_id, c.subscription_id, c.from_version_id, c.product_version_id from changed c
                where c.from_version_id <> c.product_version_id
            ), updated as (
                update billing.subscriptions s
                set customer_type = c.customer_type, customer_id = c.customer_id, product_id = c.product_id,
                    product_version_id = c.product_version_id, product_line = c.product_line, is_add_on = c.is_add_on,
                    stackable = c.stackable, status = c.status, quantity = c.quantity, started_at = c.started_at,
                    current_period_start = c.current_period_start, current_period_end = c.current_period_end,
                    cancel_at_period_end = c.cancel_at_period_end, ended_at = c.ended_at
                from changed c
                where s.tenancy_id = p_tenancy_id and s.id = c.subscription_id
                returning 1
            )
            select count(*) into v_count from updated;
            v_total := v_total + v_count;
        end loop;

        insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id, product_version_id,
                                           product_line, is_add_on, stackable, status, quantity, started_at,
                                           current_period_start, current_period_end, cancel_at_period_end, ended_at,
                                           stripe_subscription_id, creation_source)
        select p_tenancy_id, r.customer_type, r.customer_id, r.product_id, r.product_version_id, r.product_line,
               r.is_add_on, r.stackable, r.status, r.quantity, r.started_at, r.current_period_start,
               r.current_period_end, r.cancel_at_period_end, r.ended_at, r.stripe_subscription_id, 'stripe'
        from billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at) r
        where r.subscription_id is null
        order by r.ended_at is null, r.stripe_subscription_id
        -- a sync of the same tenancy that inserted it meanwhile wrote the same Stripe state
        on conflict (tenancy_id, stripe_subscription_id) where stripe_subscription_id is not null do nothing;
        get diagnostics v_count = row_count;
        v_total := v_total + v_count;
    exception when unique_violation then
        -- only a write racing this one gets here (the batch was checked above): a grant or
        -- another sync that made a live plan in the same customer and line meanwhile
        get stacked diagnostics v_detail = pg_exception_detail;
        raise exception 'Stripe subscriptions of tenancy % would give a customer two live plans in one product line: %',
            p_tenancy_id, v_detail using errcode = '23505';
    end;
    return v_total;
end;
$$;

comment on function billing.upsert_stripe_subscriptions(uuid, jsonb, timestamptz) is
    'Write a batch of a tenancy''s Stripe subscriptions by Stripe id: insert new ones, update only what differs, keep a version regen is still writing into Stripe. Returns rows written.';

-- copied from sql/functions/billing.regen_subscriptions_to_latest.sql
-- billing.regen_subscriptions_to_latest(p_project_id, p_limit): move every
-- live subscription of the project's tenancies whose version is not its product's current
-- version to that version.
--
-- Any creation source moves: test-mode, API grants and Stripe-backed ones. A Stripe-backed
-- move also queues, in the same statement, a row in billing.stripe_outbox asking for the
-- new version id in the Stripe subscription's metadata (pyglue_product_version_id); the
-- Stripe layer delivers it with retries (pyglue billing stripe-deliver), and until it has,
-- billing.upsert_stripe_subscriptions keeps the new version, so a later Stripe sync does not
-- move it back. A subscription with an undelivered row still gets one row: its metadata is
-- replaced by the newest version and it is due at once. Ended
-- subscriptions keep the version they ended on; other projects are not read or written.
-- Forward-only: each move is one row in billing.subscription_moves (from, to, when),
-- which is never updated, so what a subscription was pinned to before is kept. The
-- copies of the version's product_line / is_add_on / stackable on the subscription follow
-- the version (a foreign key holds them equal).
--
-- Set-based: per tenancy of the project, one statement locks the stale rows, logs their
-- moves and queues the Stripe writes, one UPDATE moves them. Rows already on the current version are neither
-- locked nor updated, so a re-run moves 0 and writes nothing. Two runs at once: the second
-- waits on the rows the first locked, re-checks them (they are no longer on the old
-- version) and skips them, so each move is made and logged once. p_limit stops after that
-- many moves (null: no limit), for callers that commit in batches; calling again
-- continues with the rows still stale (a call racing another run may return 0 early:
-- the rows it waited for are the other run's). (No keyset batches inside one call: they would
-- share its transaction anyway, and ordering the stale rows cost more than moving them.)
-- Returns: subscriptions moved by this call.
-- Errors: 22023 bad limit; P0002 unknown project; 23505 a move that would
-- give a customer two live plans in one product line (the version changed its line or
-- stopped being an add-on), naming the project.
-- Locks: the moved rows (FOR NO KEY UPDATE; a Stripe sync writing them waits, and then sees
-- the move and its outbox row), the products of the tenancy that have stale subscriptions
-- (FOR SHARE: billing.upsert_product of them waits for the commit), and the undelivered
-- outbox rows it replaces.
create or replace function billing.regen_subscriptions_to_latest(p_project_id text default 'internal',
                                                                 p_limit bigint default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy_id uuid;
    v_ids uuid[];
    v_moved bigint;
    v_total bigint := 0;
    v_detail text;
begin
    if p_limit is not null and p_limit < 1 then
        raise exception 'limit must be at least 1 or null, got %', p_limit using errcode = '22023';
    end if;
    if not exists (select 1 from app.projects pr where pr.id = p_project_id) then
        raise exception 'no project %', coalesce(quote_literal(p_project_id), 'null') using errcode = 'P0002';
    end if;

    -- one exception block for the whole run, not one per tenancy: each block that writes is a
    -- subtransaction, and more than 64 of them in one transaction slow every snapshot
    begin
        for v_tenancy_id in
            select tn.id from app.tenancies tn
            where tn.project_id = p_project_id
              and exists (select 1 from billing.products p where p.tenancy_id = tn.id)
            order by tn.id
        loop
            exit when v_total >= p_limit;
            -- per tenancy two statements and no join of billing.subscriptions with itself
            -- or with a list of its rows: right after a bulk load the planner may take the
            -- table for empty and run such a join as a nested loop over all its rows per row.
            -- 1. Lock the stale rows (and their products, so the current version cannot
            -- change under us) and log the moves. A row another run moved meanwhile is
            -- re-checked after its lock is released, is no longer stale, and drops out.
            -- With p_limit, any p_limit - v_total of them: no order is needed, a moved row
            -- is no longer stale and the next call takes others.
            with stale as (
                select s.id, s.product_version_id as from_version_id, p.current_version_id as to_version_id,
                       s.stripe_subscription_id
                from billing.subscriptions s
                join billing.products p on p.tenancy_id = s.tenancy_id and p.product_id = s.product_id
                where s.tenancy_id = v_tenancy_id and s.ended_at is null
                  and s.product_version_id <> p.current_version_id
                limit p_limit - v_total
                for no key update of s for share of p
            ), logged as (
                insert into billing.subscription_moves (tenancy_id, subscription_id, from_version_id, to_version_id)
                select v_tenancy_id, st.id, st.from_version_id, st.to_version_id from stale st
                returning subscription_id
            ), queued as (
                insert into billing.stripe_outbox (tenancy_id, subscription_id, stripe_subscription_id, metadata)
                select v_tenancy_id, st.id, st.stripe_subscription_id,
                       jsonb_build_object('pyglue_product_version_id', st.to_version_id)
                from stale st where st.stripe_subscription_id is not null
                on conflict (tenancy_id, subscription_id) where delivered_at is null
                do update set metadata = excluded.metadata, next_attempt_at = now()
            )
            select array_agg(l.subscription_id) into v_ids from logged l;
            continue when v_ids is null;
            -- 2. Move them: rows found by primary key (= ANY), the small product tables joined.
            update billing.subscriptions s
            set product_version_id = v.id, product_line = v.product_line, is_add_on = v.is_add_on,
                stackable = v.stackable
            from billing.products p join billing.product_versions v on v.id = p.current_version_id
            where s.tenancy_id = v_tenancy_id and s.id = any (v_ids)
              and p.tenancy_id = s.tenancy_id and p.product_id = s.product_id;
            get diagnostics v_moved = row_count;
            v_total := v_total + v_moved;
        end loop;
    exception when unique_violation then
        get stacked diagnostics v_detail = pg_exception_detail;
        raise exception 'regen of project % would give a customer two live plans in one product line in tenancy %: %',
            p_project_id, v_tenancy_id, v_detail using errcode = '23505';
    end;
    return v_total;
end;
$$;

comment on function billing.regen_subscriptions_to_latest(text, bigint) is
    'Move every live subscription of the project to its product''s current version, logging each move in billing.subscription_moves. Returns subscriptions moved.';

-- copied from sql/functions/billing.claim_stripe_outbox.sql
-- billing.claim_stripe_outbox(p_limit, p_tenancy_id, p_lease): take due Stripe metadata
-- writes, the longest-waiting first.
--
-- Due: not delivered and next_attempt_at reached. A claim counts as an attempt and moves
-- next_attempt_at to now() + p_lease, so a deliverer that dies after claiming gives the rows
-- back when the lease ends; billing.complete_stripe_outbox / billing.fail_stripe_outbox
-- settle them before that. Two deliverers at once never block each other or take the same
-- row (FOR UPDATE SKIP LOCKED, then the lease), and the caller commits the claim before it
-- calls Stripe. p_tenancy_id: only that tenancy's rows (null: every tenancy).
-- Returns: the claimed rows. Errors: 22023 limit below 1 or lease not positive.
-- Locks: the claimed rows (SKIP LOCKED), until the caller commits.
create or replace function billing.claim_stripe_outbox(p_limit integer default 100, p_tenancy_id uuid default null,
                                                       p_lease interval default '5 minutes')
returns setof billing.stripe_outbox
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_limit is null or p_limit < 1 then
        raise exception 'claim limit must be at least 1, got %', coalesce(p_limit::text, 'null') using errcode = '22023';
    end if;
    if p_lease is null or p_lease <= '0' then
        raise exception 'lease must be positive, got %', coalesce(p_lease::text, 'null') using errcode = '22023';
    end if;
    return query
    with due as (
        select o.tenancy_id, o.id from billing.stripe_outbox o
        where o.delivered_at is null and o.next_attempt_at <= now()
          and (p_tenancy_id is null or o.tenancy_id = p_tenancy_id)
        order by o.next_attempt_at, o.id
        limit p_limit
        for update skip locked
    ), claimed as (
        update billing.stripe_outbox o
        set attempts = o.attempts + 1, next_attempt_at = now() + p_lease
        from due d where o.tenancy_id = d.tenancy_id and o.id = d.id
        returning o.*
    )
    select * from claimed c order by c.tenancy_id, c.id;
end;
$$;

comment on function billing.claim_stripe_outbox(integer, uuid, interval) is
    'Claim up to p_limit due Stripe metadata writes (SKIP LOCKED, under a lease that gives them back). Each claim is an attempt.';

-- copied from sql/functions/billing.complete_stripe_outbox.sql
-- billing.complete_stripe_outbox(p_tenancy_id, p_id, p_metadata): a claimed Stripe metadata
-- write landed.
--
-- p_metadata is what was written. The row is marked delivered only when it still asks for
-- exactly that: a regen that moved the subscription again while the write was in flight
-- replaced the row's metadata, and then the row stays pending and is due at once.
-- Returns: true when marked delivered; false when superseded or already delivered.
-- Errors: P0002 no such outbox row. Locks: the outbox row.
create or replace function billing.complete_stripe_outbox(p_tenancy_id uuid, p_id bigint, p_metadata jsonb)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row billing.stripe_outbox;
begin
    select * into v_row from billing.stripe_outbox o where o.tenancy_id = p_tenancy_id and o.id = p_id for update;
    if not found then
        raise exception 'no Stripe outbox row % in tenancy %', p_id, p_tenancy_id using errcode = 'P0002';
    end if;
    if v_row.delivered_at is not null then
        return false;
    end if;
    if v_row.metadata is distinct from p_metadata then
        update billing.stripe_outbox o set next_attempt_at = now()
        where o.tenancy_id = p_tenancy_id and o.id = p_id;
        return false;
    end if;
    update billing.stripe_outbox o set delivered_at = now(), last_error = null
    where o.tenancy_id = p_tenancy_id and o.id = p_id;
    return true;
end;
$$;

comment on function billing.complete_stripe_outbox(uuid, bigint, jsonb) is
    'Mark a Stripe metadata write delivered, unless its metadata changed meanwhile (then it is due again). Returns whether it was marked.';

-- copied from sql/functions/billing.fail_stripe_outbox.sql
-- billing.fail_stripe_outbox(p_tenancy_id, p_id, p_metadata, p_error, p_base_delay,
-- p_max_delay): a claimed Stripe metadata write failed; try again later.
--
-- The row keeps its error (cut to 1000 characters; the caller leaves API keys out) and is
-- due again after a capped exponential backoff with jitter:
-- least(p_max_delay, p_base_delay * 2^(attempts - 1)) times a random factor in [0.8, 1.2)
-- (so two deliverers that failed together do not retry together). It is never dropped:
-- after many failures it is retried about every p_max_delay, so a long Stripe outage loses
-- nothing. A row whose metadata changed while the write was in flight
-- (p_metadata differs: regen moved the subscription again) keeps the error but stays due.
-- Returns: when the row is due again (null when it was delivered meanwhile).
-- Errors: P0002 no such outbox row; 22023 a delay that is not positive.
-- Locks: the outbox row.
create or replace function billing.fail_stripe_outbox(p_tenancy_id uuid, p_id bigint, p_metadata jsonb, p_error text,
                                                      p_base_delay interval default '5 seconds',
                                                      p_max_delay interval default '1 hour')
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row billing.stripe_outbox;
    v_next timestamptz;
begin
    if p_base_delay is null or p_base_delay <= '0' or p_max_delay is null or p_max_delay < p_base_delay then
        raise exception 'delays must be positive with the base at most the maximum, got % and %',
            coalesce(p_base_delay::text, 'null'), coalesce(p_max_delay::text, 'null') using errcode = '22023';
    end if;
    select * into v_row from billing.stripe_outbox o where o.tenancy_id = p_tenancy_id and o.id = p_id for update;
    if not found then
        raise exception 'no Stripe outbox row % in tenancy %', p_id, p_tenancy_id using errcode = 'P0002';
    end if;
    if v_row.delivered_at is not null then
        return null;
    end if;
    v_next := case
        when v_row.metadata is distinct from p_metadata then least(v_row.next_attempt_at, now())
        else now() + least(p_max_delay, p_base_delay * power(2, least(greatest(v_row.attempts - 1, 0), 30)))
                     * (0.8 + 0.4 * random())
    end;
    update billing.stripe_outbox o set last_error = left(coalesce(p_error, 'unknown error'), 1000),
                                       next_attempt_at = v_next
    where o.tenancy_id = p_tenancy_id and o.id = p_id;
    return v_next;
end;
$$;

comment on function billing.fail_stripe_outbox(uuid, bigint, jsonb, text, interval, interval) is
    'Record a failed Stripe metadata write: keep the error, retry after a capped exponential backoff with jitter. Never dropped. Returns when it is due again.';

-- copied from sql/functions/billing.set_stripe_api_key.sql
-- billing.set_stripe_api_key(p_tenancy_id, p_api_key): store (or, with null, remove) the
-- Stripe secret key a tenancy's Stripe sync and metadata writes use. Without one, pyglue
-- uses $PYGLUE_STRIPE_API_KEY.
--
-- The key lives in billing.stripe_settings, which only the owner reads (not the mapping
-- reader role, not PUBLIC); no message of this function shows it.
-- Returns: true when a key is now stored, false when none is.
-- Errors: 22004 null tenancy; P0002 unknown tenancy; 22023 a key that does not look like a
-- Stripe secret or restricted key (sk_... / rk_..., no white space).
-- Locks: the tenancy's settings row.
create or replace function billing.set_stripe_api_key(p_tenancy_id uuid, p_api_key text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_tenancy_id is null then
        raise exception 'tenancy id must not be null' using errcode = '22004';
    end if;
    if not exists (select 1 from app.tenancies t where t.id = p_tenancy_id) then
        raise exception 'no tenancy %', p_tenancy_id using errcode = 'P0002';
    end if;
    if p_api_key is null then
        delete from billing.stripe_settings s where s.tenancy_id = p_tenancy_id;
        return false;
    end if;
    if p_api_key !~ '^(sk|rk)_[A-Za-z0-9_]{8,250}$' then
        raise exception 'the Stripe API key for tenancy % must be a secret or restricted key (sk_... or rk_...); the value given is not shown',
            p_tenancy_id using errcode = '22023';
    end if;
    insert into billing.stripe_settings as s (tenancy_id, api_key) values (p_tenancy_id, p_api_key)
    on conflict (tenancy_id) do update set api_key = excluded.api_key, updated_at = now()
        where s.api_key is distinct from excluded.api_key;
    return true;
end;
$$;

comment on function billing.set_stripe_api_key(uuid, text) is
    'Store (null: remove) the Stripe secret key of a tenancy in billing.stripe_settings, which the mapping reader cannot read. Never echoes the key.';
