-- billing._tg_refresh_purchase_items(): statement-level AFTER INSERT / UPDATE / DELETE
-- trigger of billing.one_time_purchases: like billing._tg_refresh_subscription_items, the
-- item histories the changed purchases feed are brought up to date from the purchase time.
-- An UPDATE counts when it changes the customer, the purchase time, the revocation time,
-- the quantity or the version. An INSERT of more than 20 rows, and a DELETE, only mark
-- the customers' stored histories.
-- SECURITY DEFINER: a role that may write purchases need not be able to write derived state.
create or replace function billing._tg_refresh_purchase_items()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_rows bigint;
    v_histories jsonb;
begin
    if tg_op = 'INSERT' then
        select count(*) into v_rows from new_rows;
        if v_rows > 20 then
            update billing.item_histories h set points_before = least(h.points_before, n.purchased_at)
            from new_rows n
            where h.tenancy_id = n.tenancy_id and h.customer_type = n.customer_type
              and h.customer_id = n.customer_id and h.points_before > n.purchased_at;
            return null;
        end if;
        select jsonb_agg(k) into v_histories from (
            select n.tenancy_id, n.customer_type, n.customer_id, i.item_id, min(n.purchased_at) as "from"
            from new_rows n
            join billing.product_versions v on v.id = n.product_version_id
            cross join lateral jsonb_object_keys(coalesce(v.content -> 'included_items', '{}')) as i(item_id)
            group by 1, 2, 3, 4) k;
    elsif tg_op = 'UPDATE' then
        select jsonb_agg(k) into v_histories from (
            select c.tenancy_id, c.customer_type, c.customer_id, i.item_id, min(c.from_at) as "from"
            from (select o.tenancy_id, o.customer_type, o.customer_id, o.product_version_id,
                         least(o.purchased_at, n.purchased_at) as from_at
                  from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
                  where (o.customer_type, o.customer_id, o.purchased_at, o.revoked_at, o.quantity, o.product_version_id)
                        is distinct from (n.customer_type, n.customer_id, n.purchased_at, n.revoked_at, n.quantity,
                                          n.product_version_id)
                  union all
                  select n.tenancy_id, n.customer_type, n.customer_id, n.product_version_id,
                         least(o.purchased_at, n.purchased_at)
                  from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
                  where (o.customer_type, o.customer_id, o.purchased_at, o.revoked_at, o.quantity, o.product_version_id)
                        is distinct from (n.customer_type, n.customer_id, n.purchased_at, n.revoked_at, n.quantity,
                                          n.product_version_id)) c
            join billing.product_versions v on v.id = c.product_version_id
            cross join lateral jsonb_object_keys(coalesce(v.content -> 'included_items', '{}')) as i(item_id)
            group by 1, 2, 3, 4) k;
    else
        update billing.item_histories h set points_before = least(h.points_before, o.purchased_at)
        from old_rows o
        where h.tenancy_id = o.tenancy_id and h.customer_type = o.customer_type and h.customer_id = o.customer_id
          and h.points_before > o.purchased_at;
        return null;
    end if;
    perform billing._refresh_item_histories(coalesce(v_histories, '[]'));
    return null;
end;
$$;

comment on function billing._tg_refresh_purchase_items() is
    'Statement trigger of billing.one_time_purchases: refresh the item histories the changed purchases feed.';
