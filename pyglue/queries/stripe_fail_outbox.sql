-- A claimed metadata write failed: keep the error (API keys already removed), back off.
select billing.fail_stripe_outbox(%(tenancy_id)s, %(id)s, %(metadata)s, %(error)s,
                                  make_interval(secs => %(base_delay_s)s::float8),
                                  make_interval(secs => %(max_delay_s)s::float8)) as next_attempt_at
