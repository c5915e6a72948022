"""Storage: metadata, object stores and the durable spool. Knows nothing of media."""
