-- billing._tg_delete_item_points(): statement-level AFTER DELETE trigger of
-- billing.item_histories: the derived points of deleted histories (a tenancy going away)
-- go with them. (A foreign key from the derived rows did this, but its check of every
-- stored point doubled the cost of a refold.)
create or replace function billing._tg_delete_item_points()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    delete from billing.item_balance_chunks b
    using old_rows o
    where b.tenancy_id = o.tenancy_id and b.customer_type = o.customer_type and b.customer_id = o.customer_id
      and b.item_id = o.item_id;
    return null;
end;
$$;

comment on function billing._tg_delete_item_points() is
    'Statement trigger of billing.item_histories: delete the derived points of deleted histories.';
