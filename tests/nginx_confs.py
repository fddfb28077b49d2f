"""nginx.conf as rendered for the supervisor deployment on fixed example ports
(gateways from 9001, workers from 9101; see `nginx.render.example_layout`): pure
text, no nginx process."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nginx.render import example_layout, render


def local_conf(tmp_path: Path, gateways: int = 3, workers: int = 3, **options: Any) -> str:
    """`options`: any other argument of `local_layout` (sticky, down, public_bind…)."""
    return render(example_layout(tmp_path, gateways, workers, **options))


def block(conf: str, header: str) -> str:
    """The text of the `{ ... }` block opened by the line containing `header`."""
    start = conf.index(header)
    depth = 0
    for i in range(conf.index("{", start), len(conf)):
        depth += {"{": 1, "}": -1}.get(conf[i], 0)
        if depth == 0:
            return conf[start : i + 1]
    raise AssertionError(f"unbalanced block {header}")


def servers(conf: str) -> list[str]:
    """Every `server { ... }` block of the http block, in order."""
    return [block(conf[m.start() :], "server {") for m in re.finditer(r"\n    server \{", conf)]
