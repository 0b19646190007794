-- billing._tg_refresh_subscription_items(): statement-level AFTER INSERT / UPDATE / DELETE
-- trigger of billing.subscriptions: the item histories that the changed subscriptions feed
-- are brought up to date in the same transaction.
--
-- Which subscriptions count: every inserted one; an updated one when the update changes
-- what its grants depend on (customer, start, end, cancel-at-period-end, period end,
-- quantity, or a version with other included items: a regen to content with the same items
-- changes nothing); every deleted one.
-- Up to 20 of them (a grant, a cancel, a Stripe sync of a customer): each history they
-- feed (every included item of every version they were on, for the old and the new
-- customer) is refolded now by billing._refresh_item_histories, from the subscription's
-- start, or from its last move when only the version changed (what came before the move
-- stays as it is). More (a bulk backfill or regen) and every DELETE (a tenancy going away):
-- the stored histories of their customers are marked from the start instead (their
-- points_before moves back, so reads fold past it on the fly, still exact, until
-- billing.refold_item_histories stores them again); a history without a row needs nothing.
-- SECURITY DEFINER: a role that may write subscriptions need not be able to write derived state.
create or replace function billing._tg_refresh_subscription_items()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_rows bigint;
    v_moves text[];
    v_histories jsonb;
begin
    -- one statement per operation: a transition table that the trigger does not have
    -- cannot even be named
    if tg_op = 'INSERT' then
        select count(*) into v_rows from new_rows;
        if v_rows > 20 then
            update billing.item_histories h set points_before = least(h.points_before, n.started_at)
            from new_rows n
            where h.tenancy_id = n.tenancy_id and h.customer_type = n.customer_type
              and h.customer_id = n.customer_id and h.points_before > n.started_at;
            return null;
        end if;
        select jsonb_agg(k) into v_histories from (
            select n.tenancy_id, n.customer_type, n.customer_id, i.item_id, min(n.started_at) as "from"
            from new_rows n
            join billing.product_versions v on v.id = n.product_version_id
            cross join lateral jsonb_object_keys(coalesce(v.content -> 'included_items', '{}')) as i(item_id)
            group by 1, 2, 3, 4) k;
    elsif tg_op = 'UPDATE' then
        -- the version moves that change included items, or the product (a switch: the ledger
        -- ends the old purchase and starts a new one there), as 'from to' (few: looked up
        -- once per pair, not per row)
        select coalesce(array_agg(p.from_id || ' ' || p.to_id), '{}') into v_moves
        from (select distinct o.product_version_id as from_id, n.product_version_id as to_id
              from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
              where o.product_version_id <> n.product_version_id) p
        join billing.product_versions a on a.id = p.from_id
        join billing.product_versions b on b.id = p.to_id
        where a.content -> 'included_items' is distinct from b.content -> 'included_items'
           or a.product_id <> b.product_id;
        select count(*) into v_rows
        from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
        where (o.customer_type, o.customer_id, o.started_at, o.ended_at, o.cancel_at_period_end,
               o.current_period_end, o.quantity)
              is distinct from (n.customer_type, n.customer_id, n.started_at, n.ended_at,
                                n.cancel_at_period_end, n.current_period_end, n.quantity)
           or o.product_version_id || ' ' || n.product_version_id = any (v_moves);
        if v_rows = 0 then
            return null;
        end if;
        if v_rows > 20 then
            update billing.item_histories h set points_before = least(h.points_before, c.from_at)
            from (select o.tenancy_id, o.customer_type, o.customer_id, least(o.started_at, n.started_at) as from_at
                  from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
                  union all
                  select n.tenancy_id, n.customer_type, n.customer_id, least(o.started_at, n.started_at)
                  from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id) c
            where h.tenancy_id = c.tenancy_id and h.customer_type = c.customer_type
              and h.customer_id = c.customer_id and h.points_before > c.from_at;
            return null;
        end if;
        select jsonb_agg(k) into v_histories from (
            select x.tenancy_id, cu.customer_type, cu.customer_id, i.item_id, min(x.from_at) as "from"
            from (select o.tenancy_id, o.id,
                         -- a version change alone changes nothing before the move: from there; a
                         -- change of product ends the old purchase at the move, so the expiries of
                         -- what it granted before change too: from the start
                         case when (o.customer_type, o.customer_id, o.started_at, o.ended_at, o.cancel_at_period_end,
                                    o.current_period_end, o.quantity, o.product_id)
                                   is not distinct from (n.customer_type, n.customer_id, n.started_at, n.ended_at,
                                                         n.cancel_at_period_end, n.current_period_end, n.quantity,
                                                         n.product_id)
                              then greatest(o.started_at,
                                            (select max(m.moved_at) from billing.subscription_moves m
                                             where m.tenancy_id = o.tenancy_id and m.subscription_id = o.id))
                              else least(o.started_at, n.started_at)
                         end as from_at,
                         o.product_version_id as old_version_id, n.product_version_id as new_version_id,
                         o.customer_type as old_type, o.customer_id as old_id, n.customer_type as new_type,
                         n.customer_id as new_id
                  from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
                  where (o.customer_type, o.customer_id, o.started_at, o.ended_at, o.cancel_at_period_end,
                         o.current_period_end, o.quantity)
                        is distinct from (n.customer_type, n.customer_id, n.started_at, n.ended_at,
                                          n.cancel_at_period_end, n.current_period_end, n.quantity)
                     or o.product_version_id || ' ' || n.product_version_id = any (v_moves)) x
            cross join lateral (values (x.old_type, x.old_id), (x.new_type, x.new_id)) as cu(customer_type, customer_id)
            cross join lateral (
                select jsonb_object_keys(coalesce(v.content -> 'included_items', '{}')) as item_id
                from billing.product_versions v
                where v.id in (x.old_version_id, x.new_version_id)
                   or v.id in (select m.from_version_id from billing.subscription_moves m
                               where m.tenancy_id = x.tenancy_id and m.subscription_id = x.id)
            ) i
            group by 1, 2, 3, 4) k;
    else
        update billing.item_histories h set points_before = least(h.points_before, o.started_at)
        from old_rows o
        where h.tenancy_id = o.tenancy_id and h.customer_type = o.customer_type and h.customer_id = o.customer_id
          and h.points_before > o.started_at;
        return null;
    end if;
    perform billing._refresh_item_histories(coalesce(v_histories, '[]'));
    return null;
end;
$$;

comment on function billing._tg_refresh_subscription_items() is
    'Statement trigger of billing.subscriptions: refresh the item histories the changed subscriptions feed (refold up to 20 subscriptions'' histories, mark more).';
