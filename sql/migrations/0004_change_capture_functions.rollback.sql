-- Rollback of 0004: the change capture functions and the queue's notify trigger go.
drop trigger if exists _500_notify on pyglue.outgoing_requests;
drop function if exists pyglue.tg_outgoing_requests__notify();
drop function if exists pyglue.track_table(regclass, name);
drop function if exists pyglue.untrack_table(regclass, boolean);
drop function if exists pyglue._tg_flag_change();
drop function if exists pyglue._tg_log_delete();
drop function if exists pyglue.sequence_changes(integer);
drop function if exists pyglue.pending_changes();
drop function if exists pyglue.enqueue_sync(uuid, interval);
drop function if exists pyglue.claim_requests(text, integer, interval);
drop function if exists pyglue.complete_request(bigint, text);
drop function if exists pyglue.fail_request(bigint, text, integer, interval, interval);
drop function if exists pyglue.requeue_dead_requests(uuid);
drop function if exists pyglue.set_fusebox(boolean, boolean, boolean);
drop function if exists pyglue.purge_deleted_rows(interval);
