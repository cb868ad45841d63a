//! Durable, checksummed segment files of records on a backup.
