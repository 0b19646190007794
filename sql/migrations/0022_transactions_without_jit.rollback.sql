-- Rollback of 0022: billing.transactions without a jit setting of its own (as of 0018).
alter function billing.transactions(uuid, text, text, timestamptz, timestamptz, integer, timestamptz, text)
    reset jit;
