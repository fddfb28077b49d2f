"""`python -m services.usage [--host H] [--port P]`: the consumer and its HTTP API."""

from __future__ import annotations

import argparse

import uvicorn

from services.common.logging import configure_logging
from services.usage.app import create_app
from services.usage.settings import UsageSettings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.usage")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    settings = UsageSettings()
    configure_logging(settings.node_id, "usage", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
