drop table if exists pyglue.fusebox, pyglue.outgoing_requests, pyglue.deleted_rows, pyglue.tracked_tables;
drop sequence if exists pyglue.change_sequence;
