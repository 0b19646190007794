-- billing._item_horizon(p_tenancy_id, p_customer_type, p_customer_id, p_item_id): up to when
-- the derived points of an item history are stored. 'infinity' (everything) unless an open
-- purchase of the customer (no end yet) repeats the item: its grants never end, so points
-- are stored for 13 months from now and billing.item_quantity folds later times on the fly.
create or replace function billing._item_horizon(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                 p_item_id text)
returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    -- PL/pgSQL for its cached plan (called at every refold)
    return case when exists (
        select 1 from billing.subscriptions s
        join billing.product_versions v on v.id = s.product_version_id
        where s.tenancy_id = p_tenancy_id and s.customer_type = p_customer_type and s.customer_id = p_customer_id
          and s.ended_at is null and not s.cancel_at_period_end
          and jsonb_typeof(v.content -> 'included_items' -> p_item_id -> 'repeat') = 'array'
        union all
        select 1 from billing.one_time_purchases o
        join billing.product_versions v on v.id = o.product_version_id
        where o.tenancy_id = p_tenancy_id and o.customer_type = p_customer_type and o.customer_id = p_customer_id
          and o.revoked_at is null
          and jsonb_typeof(v.content -> 'included_items' -> p_item_id -> 'repeat') = 'array'
    ) then now() + interval '13 months' else 'infinity'::timestamptz end;
end;
$$;

comment on function billing._item_horizon(uuid, text, text, text) is
    'Up to when the points of an item history are stored: infinity, or 13 months ahead while an open purchase repeats the item.';
