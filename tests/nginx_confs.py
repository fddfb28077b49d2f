"""nginx.conf as rendered for the supervisor deployment on fixed ports (gateways from
9001, workers from 9101): pure text, no nginx process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nginx.render import local_layout, render


def local_conf(tmp_path: Path, gateways: int = 3, workers: int = 3, **options: Any) -> str:
    """`options`: any other argument of `local_layout` (sticky, down, public_bind…)."""
    return render(
        local_layout(
            tmp_path,
            gateway_ports=range(9001, 9001 + gateways),
            worker_ports=range(9101, 9101 + workers),
            public_port=9080,
            internal_port=9081,
            status_port=9090,
            frontend_port=9300,
            **options,
        )
    )
