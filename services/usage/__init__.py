"""Usage accounting per user from `chat.events`: the example consumer of the events.

`python -m services.usage` runs one consumer of group `usage` (USAGE_GROUP_ID) and a
small HTTP API (`GET /usage/{user_id}`, `/health`, `/ready`, `/metrics`). Each
`message.completed` event adds its usage to its user's totals in Redis once, however
often Kafka delivers it (docs/events.md).
"""
