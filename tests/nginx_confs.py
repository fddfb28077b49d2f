"""nginx.conf as rendered for the supervisor deployment on fixed example ports
(gateways from 9001, workers from 9101; see `nginx.render.example_layout`): pure
text, no nginx process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nginx.render import example_layout, render


def local_conf(tmp_path: Path, gateways: int = 3, workers: int = 3, **options: Any) -> str:
    """`options`: any other argument of `local_layout` (sticky, down, public_bind…)."""
    return render(example_layout(tmp_path, gateways, workers, **options))
