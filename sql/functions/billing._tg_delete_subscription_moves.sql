-- billing._tg_delete_subscription_moves(): statement-level AFTER DELETE trigger of
-- billing.subscriptions: the moves of deleted subscriptions go with them (what a foreign key
-- with ON DELETE CASCADE did; its check of every logged move cost regen a lookup and a row
-- lock per row, a fifth of its time).
create or replace function billing._tg_delete_subscription_moves()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    delete from billing.subscription_moves m
    using old_rows o
    where m.tenancy_id = o.tenancy_id and m.subscription_id = o.id;
    return null;
end;
$$;

comment on function billing._tg_delete_subscription_moves() is
    'Statement trigger of billing.subscriptions: delete the moves of deleted subscriptions.';
