-- billing.backfill_free_plans(p_project_id, p_product_id, p_batch_size, p_limit): give
-- every team of the project's tenancies that has no live plan in the free product's line
-- a subscription to the free product's current version.
--
-- A live plan is a live (ended_at null) subscription of that product line that is not an
-- add-on and not stackable, free or paid: exactly what the unique index
-- billing.subscriptions_one_live_plan_idx allows once per customer and line. Tenancies of
-- the project without the product are skipped; a project where no tenancy has it returns
-- 0 with a NOTICE (a fresh database, or a product not written yet, is not an error for a
-- job run after every deploy). Grants are api_grant subscriptions, quantity 1, active,
-- first period now() .. now() + the product's interval.
--
-- Set-based: steps of billing.backfill_free_plans_step of p_batch_size teams each, walked
-- by key with one INSERT ... SELECT per tenancy and step, ON CONFLICT DO NOTHING on the
-- unique index. So it is idempotent (a re-run inserts nothing and writes no row) and safe
-- to run twice at once: a run that meets a team another run is granting waits for that
-- transaction and then skips the team if it committed (or grants it if it rolled back), and
-- every team ends with one free plan. p_limit stops after that many grants (null: no
-- limit); a later call walks from the beginning again. Callers that commit in batches drive
-- the step function themselves (pyglue billing backfill-free-plans): a killed run loses
-- only its uncommitted step, and the next run picks up what is missing.
-- Returns: teams granted by this call.
-- Errors: 22023 bad batch size or limit, or a free product that is not a team
-- subscription exclusive in its line (customer_type team, an interval, neither add-on nor
-- stackable); P0002 unknown project. Checks every tenancy's product before writing.
-- Locks: the inserted rows; waits on concurrent inserts into the same (team, line).
create or replace function billing.backfill_free_plans(p_project_id text default 'internal',
                                                       p_product_id text default 'free',
                                                       p_batch_size integer default 10000,
                                                       p_limit bigint default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_step record;
    v_after_tenancy_id uuid;
    v_after_team_id uuid;
    v_total bigint := 0;
begin
    if p_batch_size is null or p_batch_size < 1 then
        raise exception 'batch size must be at least 1, got %', coalesce(p_batch_size::text, 'null')
            using errcode = '22023';
    end if;
    if p_limit is not null and p_limit < 1 then
        raise exception 'limit must be at least 1 or null, got %', p_limit using errcode = '22023';
    end if;
    loop
        select * into v_step
        from billing.backfill_free_plans_step(p_project_id, p_product_id, v_after_tenancy_id, v_after_team_id,
                                              least(p_batch_size, p_limit - v_total)::integer);
        v_total := v_total + v_step.granted;
        exit when v_step.walked = 0 or v_total >= p_limit;
        v_after_tenancy_id := v_step.last_tenancy_id;
        v_after_team_id := v_step.last_team_id;
    end loop;
    return v_total;
end;
$$;

comment on function billing.backfill_free_plans(text, text, integer, bigint) is
    'Give every team of the project without a live plan in the free product''s line the free product''s current version. Idempotent, concurrency-safe, set-based. Returns teams granted.';
