"""Ingest: transports, sessions and the recorders that subscribe to them."""
