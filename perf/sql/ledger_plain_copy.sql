-- The baseline table: billing.item_quantity_changes' columns, constraints and indexes, no triggers.
create table public.plain_item_quantity_changes (like billing.item_quantity_changes including all)
