-- Session settings under which both sides of `pyglue targets verify` print values alike
-- (timestamps in UTC, ISO dates, shortest exact floats), so equal values compare equal as
-- text. A mismatch left here is not reported as a difference, only confirmed in the target.
select set_config('TimeZone', 'UTC', false),
       set_config('DateStyle', 'ISO, MDY', false),
       set_config('IntervalStyle', 'postgres', false),
       set_config('extra_float_digits', '1', false)
