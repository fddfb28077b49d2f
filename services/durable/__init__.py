"""Durable Streams over HTTP in the gateways (docs/durable-streams.md): generic streams
in each user's namespace, and every chat answer as a read-only JSON stream."""
