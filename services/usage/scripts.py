"""Loading the service's Lua scripts from `services/usage/lua/`, called by name.

Each script binds its KEYS/ARGV slots to names at the top, as the shared scripts do
(`services.common.scripts.parse_signature` reads them); a call passes keys and args by
those names, and a missing, extra or misspelt name raises before Redis sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from services.common.scripts import ScriptSignatureError, parse_signature

Scalar = str | int | float


@dataclass(frozen=True, slots=True)
class UsageScript:
    name: str
    source: str
    keys: tuple[str, ...]
    args: tuple[str, ...]

    @classmethod
    def load(cls, name: str) -> UsageScript:
        """`lua/<name>.lua`; raises ScriptSignatureError if its bindings are malformed."""
        source = resources.files("services.usage.lua").joinpath(f"{name}.lua").read_text()
        signature = parse_signature(name, source)
        if signature.rest is not None:
            raise ScriptSignatureError(f"{name}.lua: the usage scripts take no rest of ARGV")
        return cls(name, source, signature.keys, signature.args)

    def call_args(
        self, keys: Mapping[str, str], args: Mapping[str, Scalar]
    ) -> tuple[list[str], list[Scalar]]:
        """KEYS and ARGV in slot order; raises ScriptSignatureError on a name mismatch."""
        if set(keys) != set(self.keys) or set(args) != set(self.args):
            raise ScriptSignatureError(
                f"{self.name}.lua takes keys {self.keys} and args {self.args}, "
                f"not {tuple(keys)} and {tuple(args)}"
            )
        return [keys[n] for n in self.keys], [args[n] for n in self.args]
