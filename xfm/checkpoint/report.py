"""What an adapter did with a foreign state dict, and the error it raises when it cannot.

Every adapter returns a :class:`LoadReport`: which of our keys were filled, which keys of the
source were not used (``unused``: suspicious, an unexpected checkpoint) and which were skipped on
purpose (``ignored``: documented, with the reason), which of our keys in the adapter's scope stayed
unfilled (``missing``: suspicious) and which are new by design (``new``: e.g. BEiT's mask token
when loading a classification checkpoint, the cross-attention of a fusion encoder initialised
from a text checkpoint).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("xfm.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file."""


@dataclass
class LoadReport:
    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing suspicious: every key in scope filled, every source key used or documented."""
        return not self.missing and not self.unused

    def summary(self) -> str:
        lines = [f"{self.source} ({self.format}): loaded {len(self.loaded)} tensors, "
                 f"{len(self.ignored)} documented-ignorable source keys, {len(self.new)} new by design"]
        if self.missing:
            lines.append(f"  MISSING ({len(self.missing)}, left at their initial values): {_short(self.missing)}")
        if self.unused:
            lines.append(f"  UNUSED ({len(self.unused)} source keys not understood): {_short(self.unused)}")
        return "\n".join(lines)

    def log(self) -> None:
        (log.warning if not self.clean else log.info)(self.summary())


def _short(keys: list[str], n: int = 8) -> str:
    head = ", ".join(keys[:n])
    return head + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")
