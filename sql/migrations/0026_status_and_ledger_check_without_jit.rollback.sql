-- Rollback of 0026: billing.verify_ledger and pyglue.sync_status without a jit setting of
-- their own (as of 0016 and 0025).
alter function billing.verify_ledger() reset jit;
alter function pyglue.sync_status(uuid) reset jit;
