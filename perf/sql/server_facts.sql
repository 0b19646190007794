select version() as version,
       current_setting('shared_buffers') as shared_buffers,
       current_setting('max_wal_size') as max_wal_size,
       current_setting('synchronous_commit') as synchronous_commit,
       current_setting('fsync') as fsync
