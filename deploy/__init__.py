"""Local deployment of the whole cluster under supervisord (`python -m deploy`)."""
