-- Rollback of 0012: everything it made goes, functions first, then the tables in reverse
-- order of their foreign keys, then the version-id function their check uses.
drop function if exists billing.regen_subscriptions_to_latest(text, bigint);
drop function if exists billing.backfill_free_plans(text, text, integer, bigint);
drop function if exists billing.cancel_subscription(uuid, uuid, boolean, timestamptz);
drop function if exists billing.grant_product(uuid, text, text, text, integer, text, timestamptz);
drop function if exists billing.upsert_product(uuid, text, jsonb);
drop function if exists billing._check_product_content(uuid, text, jsonb);
drop function if exists billing._recurring_interval(jsonb);
drop table if exists billing.subscription_moves;
drop table if exists billing.one_time_purchases;
drop table if exists billing.subscriptions;
alter table if exists billing.products drop constraint if exists products_current_version_fkey;
drop table if exists billing.product_versions;
drop table if exists billing.products;
drop function if exists billing._version_id(uuid, text, jsonb);
