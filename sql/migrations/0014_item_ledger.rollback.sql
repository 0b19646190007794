-- Rollback of 0014: the ledger's triggers, functions, tables and view go (nothing older
-- changed, so nothing is restored).
drop trigger if exists item_quantity_changes_refold_insert on billing.item_quantity_changes;
drop trigger if exists item_quantity_changes_refold_update on billing.item_quantity_changes;
drop trigger if exists item_quantity_changes_refold_delete on billing.item_quantity_changes;
drop function if exists billing.rebuild_ledger();
drop function if exists billing.verify_ledger();
drop function if exists billing.change_item_quantity(uuid, text, text, text, bigint, timestamptz, boolean, timestamptz);
drop function if exists billing.item_quantity(uuid, text, text, text, timestamptz);
drop function if exists billing._tg_refold_item_changes();
drop function if exists billing._refold_item_history(uuid, text, text, text, timestamptz);
drop function if exists billing._lock_item_history(uuid, text, text, text);
drop function if exists billing._item_points(uuid, text, text, text, timestamptz);
drop table if exists billing.item_balances;
drop table if exists billing.item_histories;
drop view if exists billing.item_events;
drop table if exists billing.item_quantity_changes;
