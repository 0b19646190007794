-- billing._item_state_at(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at): the
-- balance and debt of one item history after everything at p_at.
--
-- Before the history's points_before it is one index lookup (the last stored chunk starting
-- at or before p_at) and a binary search of its points; later (past the horizon of an open
-- repeating purchase, a history a bulk write left to refold, or one never folded) the fold
-- runs from the last valid chunk to p_at without storing anything.
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
    v_ats timestamptz[];
    v_balances bigint[];
    v_debts bigint[];
    v_low integer;
    v_high integer;
    v_mid integer;
begin
    if not isfinite(p_at) then
        raise exception 'time of the balance must be finite, got %', p_at using errcode = '22023';
    end if;
    select h.points_before into v_before from billing.item_histories h
    where h.tenancy_id = p_tenancy_id and h.customer_type = p_customer_type and h.customer_id = p_customer_id
      and h.item_id = p_item_id;
    v_before := coalesce(v_before, '-infinity');
    if p_at >= v_before then
        select p.ats, p.balances, p.debts into v_ats, v_balances, v_debts
        from billing._item_points(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, v_before,
                                  p_at + interval '1 microsecond') p
        order by p.first_at desc
        limit 1;
    end if;
    if v_ats is null then
        select c.ats, c.balances, c.debts into v_ats, v_balances, v_debts
        from billing.item_balance_chunks c
        where c.tenancy_id = p_tenancy_id and c.customer_type = p_customer_type and c.customer_id = p_customer_id
          and c.item_id = p_item_id and c.first_at <= p_at and c.first_at < v_before
        order by c.first_at desc
        limit 1;
    end if;
    if v_ats is null then
        balance := 0;
        debt := 0;
        return next;
        return;
    end if;
    -- the last point at or before p_at (the chunk starts at or before it)
    v_low := 1;
    v_high := cardinality(v_ats);
    while v_low < v_high loop
        v_mid := (v_low + v_high + 1) / 2;
        if v_ats[v_mid] <= p_at then v_low := v_mid; else v_high := v_mid - 1; end if;
    end loop;
    balance := v_balances[v_low];
    debt := v_debts[v_low];
    return next;
end;
$$;

comment on function billing._item_state_at(uuid, text, text, text, timestamptz) is
    'Balance and debt of one item history after everything at p_at: an index lookup and a binary search where points are stored, the fold on the fly beyond.';
