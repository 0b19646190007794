-- billing._refresh_item_histories(p_histories): bring item histories whose purchase inputs
-- changed up to date, each from its given instant. p_histories is a jsonb array of
-- {tenancy_id, customer_type, customer_id, item_id, from}.
--
-- Up to 100 histories (one grant, a cancel, a Stripe sync of a customer) are refolded now,
-- in key order. More (a bulk backfill or regen) are marked instead: their points_before
-- drops to the instant, so billing.item_quantity folds past it on the fly (still exact) until
-- billing.refold_item_histories() (run by pyglue db init) stores them again; a history
-- without a row needs nothing (it is folded on the fly from nothing).
-- Returns: histories refolded now.
create or replace function billing._refresh_item_histories(p_histories jsonb)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count bigint := jsonb_array_length(p_histories);
begin
    if v_count = 0 then
        return 0;
    end if;
    if v_count <= 100 then
        perform billing._refold_item_history(k.tenancy_id, k.customer_type, k.customer_id, k.item_id, k.from_at)
        from (select (x ->> 'tenancy_id')::uuid as tenancy_id, x ->> 'customer_type' as customer_type,
                     x ->> 'customer_id' as customer_id, x ->> 'item_id' as item_id,
                     (x ->> 'from')::timestamptz as from_at
              from jsonb_array_elements(p_histories) x
              order by 1, 2, 3, 4) k;
        return v_count;
    end if;
    update billing.item_histories h set points_before = least(h.points_before, k.from_at)
    from (select (x ->> 'tenancy_id')::uuid as tenancy_id, x ->> 'customer_type' as customer_type,
                 x ->> 'customer_id' as customer_id, x ->> 'item_id' as item_id,
                 (x ->> 'from')::timestamptz as from_at
          from jsonb_array_elements(p_histories) x) k
    where h.tenancy_id = k.tenancy_id and h.customer_type = k.customer_type and h.customer_id = k.customer_id
      and h.item_id = k.item_id and h.points_before > k.from_at;
    return 0;
end;
$$;

comment on function billing._refresh_item_histories(jsonb) is
    'Refold item histories whose purchases changed (up to 100 at once), or mark them to be folded on read and by billing.refold_item_histories().';
