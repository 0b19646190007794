-- billing._item_state_at(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at): the
-- balance and debt of one item history after everything at p_at.
--
-- Before the history's points_before it is one index lookup (the last stored point at or
-- before p_at); later (past the horizon of an open repeating purchase, a history a bulk
-- write left to refold, or one never folded) the fold runs from the last valid point to
-- p_at without storing anything.
-- Returns: one row; (0, 0) for a customer without history of the item.
-- Errors: 22023 an infinite p_at.
create or replace function billing._item_state_at(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                  p_item_id text, p_at timestamptz)
returns table (balance bigint, debt bigint)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_before timestamptz;
begin
    if not isfinite(p_at) then
        raise exception 'time of the balance must be finite, got %', p_at using errcode = '22023';
    end if;
    select h.points_before into v_before from billing.item_histories h
    where h.tenancy_id = p_tenancy_id and h.customer_type = p_customer_type and h.customer_id = p_customer_id
      and h.item_id = p_item_id;
    v_before := coalesce(v_before, '-infinity');
    if p_at >= v_before then
        select p.balance, p.debt into balance, debt
        from billing._item_points(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, v_before,
                                  p_at + interval '1 microsecond') p
        order by p.at desc
        limit 1;
        if found then
            return next;
            return;
        end if;
    end if;
    select b.balance, b.debt into balance, debt
    from billing.item_balances b
    where b.tenancy_id = p_tenancy_id and b.customer_type = p_customer_type and b.customer_id = p_customer_id
      and b.item_id = p_item_id and b.at <= p_at and b.at < v_before
    order by b.at desc
    limit 1;
    balance := coalesce(balance, 0);
    debt := coalesce(debt, 0);
    return next;
end;
$$;

comment on function billing._item_state_at(uuid, text, text, text, timestamptz) is
    'Balance and debt of one item history after everything at p_at: an index lookup where points are stored, the fold on the fly beyond.';
