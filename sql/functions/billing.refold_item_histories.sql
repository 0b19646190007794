-- billing.refold_item_histories(p_limit): store again the points of item histories that are
-- folded on read: those a bulk write marked (points_before moved back to the instant it
-- changed) and those whose horizon (13 months ahead for an open repeating purchase) is less
-- than a month away. Reads are exact either way; this makes them index lookups again.
-- pyglue db init runs it. p_limit: at most that many histories (null: all).
-- Returns: histories refolded.
-- Locks: each history's row, in key order, until the transaction ends.
create or replace function billing.refold_item_histories(p_limit integer default null)
returns bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
    select count(billing._refold_item_history(h.tenancy_id, h.customer_type, h.customer_id, h.item_id,
                                              h.points_before))
    from (select h.tenancy_id, h.customer_type, h.customer_id, h.item_id, h.points_before
          from billing.item_histories h
          where h.points_before < h.horizon or h.horizon < now() + interval '1 month'
          order by 1, 2, 3, 4
          limit p_limit) h;
$$;

comment on function billing.refold_item_histories(integer) is
    'Store again the points of item histories a bulk write left to be folded on read, or whose horizon is near. Returns histories refolded.';
