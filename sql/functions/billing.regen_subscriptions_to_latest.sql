-- billing.regen_subscriptions_to_latest(p_project_id, p_batch_size, p_limit): move every
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
-- Set-based: per tenancy, one UPDATE ... FROM per batch of p_batch_size stale
-- subscriptions in id order (keyset). Rows already on the current version are not in
-- any UPDATE, so a re-run moves 0 and writes nothing. Two runs at once: the second waits
-- on the rows the first moved, re-checks them (they are no longer on the old version) and
-- skips them, so each move is made and logged once. p_limit stops after that many moves
-- (null: no limit), for callers that commit in batches; calling again continues.
-- Returns: subscriptions moved by this call.
-- Errors: 22023 bad batch size or limit; P0002 unknown project; 23505 a move that would
-- give a customer two live plans in one product line (the version changed its line or
-- stopped being an add-on), naming the project.
-- Locks: the moved rows (FOR NO KEY UPDATE, by the UPDATE).
create or replace function billing.regen_subscriptions_to_latest(p_project_id text default 'internal',
                                                                 p_batch_size integer default 10000,
                                                                 p_limit bigint default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy_id uuid;
    v_from uuid;
    v_last uuid;
    v_batch bigint;
    v_moved bigint;
    v_total bigint := 0;
    v_detail text;
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

    -- one exception block for the whole run, not one per batch: each block that writes is a
    -- subtransaction, and more than 64 of them in one transaction slow every snapshot
    begin
        for v_tenancy_id in
            select tn.id from app.tenancies tn
            where tn.project_id = p_project_id
              and exists (select 1 from billing.products p where p.tenancy_id = tn.id)
            order by tn.id
        loop
            v_from := '00000000-0000-0000-0000-000000000000';  -- the smallest uuid
            loop
                v_batch := least(p_batch_size, p_limit - v_total);
                exit when v_batch <= 0;
                -- a moved subscription is no longer stale, so the next batch may start at
                -- the last one (>=) and still advance
                with stale as (
                    select s.id, s.product_version_id as from_version_id, v.id as to_version_id,
                           v.product_line, v.is_add_on, v.stackable
                    from billing.subscriptions s
                    join billing.products p on p.tenancy_id = s.tenancy_id and p.product_id = s.product_id
                    join billing.product_versions v on v.id = p.current_version_id
                    where s.tenancy_id = v_tenancy_id and s.id >= v_from and s.ended_at is null
                      and s.product_version_id <> p.current_version_id
                    order by s.id
                    limit v_batch
                ), moved as (
                    update billing.subscriptions s
                    set product_version_id = st.to_version_id, product_line = st.product_line,
                        is_add_on = st.is_add_on, stackable = st.stackable
                    from stale st
                    where s.tenancy_id = v_tenancy_id and s.id = st.id
                      and s.product_version_id = st.from_version_id and s.ended_at is null
                    returning s.tenancy_id, s.id, st.from_version_id, st.to_version_id
                ), logged as (
                    insert into billing.subscription_moves (tenancy_id, subscription_id, from_version_id, to_version_id)
                    select m.tenancy_id, m.id, m.from_version_id, m.to_version_id from moved m
                    returning 1
                )
                select (select count(*) from logged), (select st.id from stale st order by st.id desc limit 1)
                into v_moved, v_last;
                exit when v_last is null or (v_last = v_from and v_moved = 0);  -- the guard never fires, see above
                v_total := v_total + v_moved;
                v_from := v_last;
            end loop;
        end loop;
    exception when unique_violation then
        get stacked diagnostics v_detail = pg_exception_detail;
        raise exception 'regen of project % would give a customer two live plans in one product line in tenancy %: %',
            p_project_id, v_tenancy_id, v_detail using errcode = '23505';
    end;
    return v_total;
end;
$$;

comment on function billing.regen_subscriptions_to_latest(text, integer, bigint) is
    'Move every live subscription of the project to its product''s current version, logging each move in billing.subscription_moves. Returns subscriptions moved.';
