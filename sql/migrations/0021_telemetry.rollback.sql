-- Rollback of 0021: the telemetry tables and the two functions go.
drop function if exists pyglue.retry_request(bigint);
drop function if exists pyglue.record_telemetry(text, bigint, bigint, double precision, timestamptz, bigint,
                                                double precision, jsonb, jsonb);
drop table if exists pyglue.target_telemetry;
drop table if exists pyglue.sync_telemetry;
drop table if exists pyglue.worker_telemetry;
