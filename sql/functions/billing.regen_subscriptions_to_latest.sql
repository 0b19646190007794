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
-- Set-based: steps of billing.regen_subscriptions_step (10,000 subscriptions walked each,
-- by primary key) until every subscription of the project has been read once. Rows already
-- on the current version are read, not written, so a re-run moves 0 and writes nothing.
-- Two runs at once: a row the other run moved is re-checked after its lock is released and
-- skipped, so each move is made and logged once. p_limit stops after that many moves (null:
-- no limit); a later call starts from the beginning again and moves what is still stale.
-- Callers that commit in batches drive the step function themselves (pyglue billing regen).
-- Returns: subscriptions moved by this call.
-- Errors: 22023 bad limit; P0002 unknown project; 23505 a move that would
-- give a customer two live plans in one product line (the version changed its line or
-- stopped being an add-on), naming the project.
-- Locks: see billing.regen_subscriptions_step (the moved rows, the products of each tenancy
-- FOR SHARE, the undelivered outbox rows it replaces), all until the transaction ends.
create or replace function billing.regen_subscriptions_to_latest(p_project_id text default 'internal',
                                                                 p_limit bigint default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_step record;
    v_after_tenancy_id uuid;
    v_after_subscription_id uuid;
    v_total bigint := 0;
begin
    if p_limit is not null and p_limit < 1 then
        raise exception 'limit must be at least 1 or null, got %', p_limit using errcode = '22023';
    end if;
    loop
        select * into v_step
        from billing.regen_subscriptions_step(p_project_id, v_after_tenancy_id, v_after_subscription_id,
                                              least(10000, p_limit - v_total)::integer);
        v_total := v_total + v_step.moved;
        exit when v_step.walked = 0 or v_total >= p_limit;
        v_after_tenancy_id := v_step.last_tenancy_id;
        v_after_subscription_id := v_step.last_subscription_id;
    end loop;
    return v_total;
end;
$$;

comment on function billing.regen_subscriptions_to_latest(text, bigint) is
    'Move every live subscription of the project to its product''s current version, logging each move in billing.subscription_moves. Returns subscriptions moved.';
