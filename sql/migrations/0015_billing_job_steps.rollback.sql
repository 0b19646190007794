-- Rollback of 0015: the step functions go, the backfill and regen get back their 0013
-- definitions (copied below), billing.subscriptions its default fillfactor, and the moves
-- log its foreign key to the subscriptions.
alter table billing.subscriptions reset (fillfactor);
drop trigger if exists subscriptions_delete_moves on billing.subscriptions;
drop function if exists billing._tg_delete_subscription_moves();
alter table billing.subscription_moves drop constraint if exists subscription_moves_subscription_fkey;
alter table billing.subscription_moves add constraint subscription_moves_subscription_fkey
    foreign key (tenancy_id, subscription_id) references billing.subscriptions (tenancy_id, id) on delete cascade;
-- copied from sql/functions/billing.backfill_free_plans.sql as of 0012_billing_catalog
-- billing.backfill_free_plans(p_project_id, p_product_id, p_batch_size, p_limit): give
-- every team of the project's tenancies that has no live plan in the free product's line
-- a subscription to the free product's current version.
--
-- A live plan is a live (ended_at null) subscription of that product line that is not an
-- add-on and not stackable, free or paid: exactly what the unique index
-- billing.subscriptions_one_live_plan_idx allows once per customer and line. Tenancies of
-- the project without the product are skipped; a project where no tenancy has it returns
-- 0 with a NOTICE (a fresh database, or a product not written yet, is not an error for a
-- job run after every deploy). Grants are api_grant subscriptions, quantity 1, active,
-- first period now() .. now() + the product's interval.
--
-- Set-based: per tenancy, one INSERT ... SELECT per batch of p_batch_size teams, walking
-- the teams in id order (keyset), with ON CONFLICT DO NOTHING on the unique index. So it
-- is idempotent (a re-run inserts nothing and writes no row) and safe to run twice at
-- once: a run that meets a team another run is granting waits for that transaction and
-- then skips the team if it committed (or grants it if it rolled back), and every team
-- ends with one free plan. p_limit stops after that many grants (null: no limit), so a
-- caller can commit every p_limit rows and call again until it returns 0 (teams that have
-- a plan are walked again each call; a probe each); a killed run loses only its
-- uncommitted batch, and the next run picks up what is missing.
-- Returns: teams granted by this call.
-- Errors: 22023 bad batch size or limit, or a free product that is not a team
-- subscription exclusive in its line (customer_type team, an interval, neither add-on nor
-- stackable); P0002 unknown project. Checks every tenancy's product before writing.
-- Locks: the inserted rows; waits on concurrent inserts into the same (team, line).
create or replace function billing.backfill_free_plans(p_project_id text default 'internal',
                                                       p_product_id text default 'free',
                                                       p_batch_size integer default 10000,
                                                       p_limit bigint default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_free record;
    v_tenancies integer := 0;
    v_from uuid;
    v_last uuid;
    v_batch bigint;
    v_granted bigint;
    v_total bigint := 0;
begin
    if p_batch_size is null or p_batch_size < 1 then
        raise exception 'batch size must be at least 1, got %', coalesce(p_batch_size::text, 'null')
            using errcode = '22023';
    end if;
    if p_limit is not null and p_limit < 1 then
        raise exception 'limit must be at least 1 or null, got %', p_limit using errcode = '22023';
    end if;
    if not exists (select 1 from app.projects pr where pr.id = p_project_id) then
        raise exception 'no project %', coalesce(quote_literal(p_project_id), 'null') using errcode = 'P0002';
    end if;

    -- every tenancy's free product is checked before anything is written
    select tn.id as tenancy_id, v.customer_type, v.is_add_on, v.stackable,
           billing._recurring_interval(v.content) as period
    into v_free
    from app.tenancies tn
    join billing.products p on p.tenancy_id = tn.id and p.product_id = p_product_id
    join billing.product_versions v on v.id = p.current_version_id
    where tn.project_id = p_project_id
      and (v.customer_type <> 'team' or v.is_add_on or v.stackable or billing._recurring_interval(v.content) is null)
    order by tn.id
    limit 1;
    if found then
        raise exception 'free product "%" of tenancy % must be a team subscription that is neither an add-on nor stackable (customer_type %, interval %, add-on %, stackable %)',
            p_product_id, v_free.tenancy_id, v_free.customer_type, coalesce(v_free.period::text, 'none'),
            v_free.is_add_on, v_free.stackable using errcode = '22023';
    end if;

    for v_free in
        select tn.id as tenancy_id, v.id as version_id, v.product_line, v.line_key,
               billing._recurring_interval(v.content) as period
        from app.tenancies tn
        join billing.products p on p.tenancy_id = tn.id and p.product_id = p_product_id
        join billing.product_versions v on v.id = p.current_version_id
        where tn.project_id = p_project_id
        order by tn.id
    loop
        v_tenancies := v_tenancies + 1;
        v_from := '00000000-0000-0000-0000-000000000000';  -- the smallest uuid
        v_last := null;
        loop
            v_batch := least(p_batch_size, p_limit - v_total);
            exit when v_batch <= 0;
            -- the next batch of teams (id >= v_from, the last batch's last team excluded);
            -- the unique index decides who gets a plan: a team with a live plan in the line
            -- is a conflict, found by one index probe and skipped without writing. No NOT
            -- EXISTS: right after a bulk load the planner may think billing.subscriptions is
            -- empty and turn it into a nested loop over every plan of the line per team.
            with batch as (
                select t.id from app.teams t
                where t.tenancy_id = v_free.tenancy_id and t.id >= v_from and t.id is distinct from v_last
                order by t.id
                limit v_batch
            ), granted as (
                insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id,
                                                   product_version_id, product_line, is_add_on, stackable, status,
                                                   quantity, started_at, current_period_start, current_period_end,
                                                   creation_source)
                select v_free.tenancy_id, 'team', b.id::text, p_product_id, v_free.version_id, v_free.product_line,
                       false, false, 'active', 1, now(), now(), now() + v_free.period, 'api_grant'
                from batch b
                on conflict (tenancy_id, customer_type, customer_id, line_key)
                    where ended_at is null and not is_add_on and not stackable
                do nothing
                returning 1
            )
            select (select count(*) from granted), (select b.id from batch b order by b.id desc limit 1)
            into v_granted, v_last;
            exit when v_last is null;
            v_total := v_total + v_granted;
            v_from := v_last;
        end loop;
    end loop;
    if v_tenancies = 0 then
        raise notice 'no tenancy of project % has a product "%"; nothing to backfill', p_project_id, p_product_id;
    end if;
    return v_total;
end;
$$;

comment on function billing.backfill_free_plans(text, text, integer, bigint) is
    'Give every team of the project without a live plan in the free product''s line the free product''s current version. Idempotent, concurrency-safe, set-based. Returns teams granted.';

-- copied from sql/functions/billing.regen_subscriptions_to_latest.sql as of 0013_stripe_sync
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

drop function if exists billing.regen_subscriptions_step(text, uuid, uuid, integer);
drop function if exists billing.backfill_free_plans_step(text, text, uuid, uuid, integer);
