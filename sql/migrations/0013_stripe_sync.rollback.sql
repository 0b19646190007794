-- Rollback of 0013: the Stripe functions and tables go, and regen gets back its 0012
-- definition (no outbox rows), copied below.
drop function if exists billing.set_stripe_api_key(uuid, text);
drop function if exists billing.fail_stripe_outbox(uuid, bigint, jsonb, text, interval, interval);
drop function if exists billing.complete_stripe_outbox(uuid, bigint, jsonb);
drop function if exists billing.claim_stripe_outbox(integer, uuid, interval);
drop function if exists billing.upsert_stripe_subscriptions(uuid, jsonb, timestamptz);
drop function if exists billing._stripe_subscription_rows(uuid, jsonb, timestamptz);

-- copied from sql/functions/billing.regen_subscriptions_to_latest.sql as of 0012_billing_catalog
-- billing.regen_subscriptions_to_latest(p_project_id, p_limit): move every
-- live subscription of the project's tenancies whose version is not its product's current
-- version to that version.
--
-- Any creation source moves: test-mode, API grants and Stripe-backed ones (the Stripe
-- layer must then write the new version id into the Stripe subscription's metadata, so a
-- later Stripe sync does not move it back; that outbox is not built yet). Ended
-- subscriptions keep the version they ended on; other projects are not read or written.
-- Forward-only: each move is one row in billing.subscription_moves (from, to, when),
-- which is never updated, so what a subscription was pinned to before is kept. The
-- copies of the version's product_line / is_add_on / stackable on the subscription follow
-- the version (a foreign key holds them equal).
--
-- Set-based: per tenancy of the project, one statement locks the stale rows and logs
-- their moves, one UPDATE moves them. Rows already on the current version are neither
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
-- Locks: the moved rows (FOR NO KEY UPDATE) and the products of the tenancy that have
-- stale subscriptions (FOR SHARE: billing.upsert_product of them waits for the commit).
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
                select s.id, s.product_version_id as from_version_id, p.current_version_id as to_version_id
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

drop table if exists billing.stripe_outbox;
drop table if exists billing.stripe_settings;
