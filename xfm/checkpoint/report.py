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
    """The full key lists are the attributes; ``str(report)`` / ``summary()`` is a short digest
    (counts, and the keys of each category with layer indices folded into ranges)."""

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

    def summary(self, max_patterns: int = 8) -> str:
        """A few lines whatever the checkpoint's size: one count line, then per category at most
        ``max_patterns`` folded key patterns (loaded keys: counts per top-level module)."""
        lines = [f"{self.source} ({self.format}): {len(self.loaded)} loaded, {len(self.missing)} missing, "
                 f"{len(self.unused)} unused, {len(self.ignored)} ignored, {len(self.new)} new"]
        if self.loaded:
            lines.append(f"  loaded ({len(self.loaded)} of our keys): " + ", ".join(
                f"{prefix} {n}" for prefix, n in _prefix_counts(self.loaded).items()))
        if self.missing:
            lines += _section(f"MISSING ({len(self.missing)} of our keys, left at their initial values)",
                              self.missing, max_patterns)
        if self.unused:
            lines += _section(f"UNUSED ({len(self.unused)} source keys not understood)", self.unused, max_patterns)
        if self.new:
            lines += _section(f"new ({len(self.new)} of our keys, new by design)", self.new, max_patterns)
        if self.ignored:
            lines.append(f"  ignored ({len(self.ignored)} source keys, skipped on purpose):")
            by_reason: dict[str, list[str]] = {}
            for key, reason in self.ignored.items():
                by_reason.setdefault(reason, []).append(key)
            for i, (reason, keys) in enumerate(by_reason.items()):
                if i == max_patterns:
                    rest = sum(len(k) for k in list(by_reason.values())[i:])
                    lines.append(f"    ... {len(by_reason) - i} more reasons ({rest} keys)")
                    break
                patterns = [p for p, _ in collapse_keys(keys)]
                shown = ", ".join(patterns[:3]) + (f", +{len(patterns) - 3} more" if len(patterns) > 3 else "")
                lines.append(f"    {reason} ({len(keys)}): {shown}")
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self) -> str:
        return (f"LoadReport(source={self.source!r}, format={self.format!r}, loaded={len(self.loaded)}, "
                f"missing={len(self.missing)}, unused={len(self.unused)}, ignored={len(self.ignored)}, "
                f"new={len(self.new)})")

    def log(self) -> None:
        (log.warning if not self.clean else log.info)(self.summary())


def collapse_keys(keys) -> list[tuple[str, int]]:
    """Fold numeric path components into ranges: the 12 keys ``text.encoder.layer.N.attention.
    self.query.weight`` become ``("text.encoder.layer.{0-11}.attention.self.query.weight", 12)``.
    Keys differing only in their numbers share one pattern (each numeric position lists the values
    seen there), then the last components of one module are listed together
    (``dense.{weight,bias}``); patterns keep the order of their first key."""
    groups: dict[tuple[str, ...], list[tuple[int, ...]]] = {}
    for key in keys:
        parts = key.split(".")
        template = tuple("#" if p.isdigit() else p for p in parts)
        groups.setdefault(template, []).append(tuple(int(p) for p in parts if p.isdigit()))
    folded = []
    for template, numbers in groups.items():
        slots = iter(_ranges(sorted(set(values))) for values in zip(*numbers))
        folded.append((".".join(next(slots) if p == "#" else p for p in template), len(numbers)))
    # then the leaves of one module: ``dense.weight`` + ``dense.bias`` -> ``dense.{weight,bias}``
    leaves: dict[str, list[tuple[str, int]]] = {}
    for pattern, n in folded:
        head, _, leaf = pattern.rpartition(".")
        leaves.setdefault(head, []).append((leaf, n))
    out = []
    for head, items in leaves.items():
        leaf = items[0][0] if len(items) == 1 else "{" + ",".join(name for name, _ in items) + "}"
        out.append((f"{head}.{leaf}" if head else leaf, sum(n for _, n in items)))
    return out


def _ranges(values: list[int]) -> str:
    if len(values) == 1:
        return str(values[0])
    runs, start = [], values[0]
    for prev, cur in zip(values, values[1:] + [None]):
        if cur is None or cur != prev + 1:  # a run of consecutive values ends at prev
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return "{" + ",".join(runs) + "}"


def _prefix_counts(keys) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        head, dot, _ = key.partition(".")
        prefix = head + (".*" if dot else "")
        counts[prefix] = counts.get(prefix, 0) + 1
    return counts


def _section(title: str, keys: list[str], max_patterns: int) -> list[str]:
    patterns = collapse_keys(keys)
    lines = [f"  {title}:"]
    for pattern, n in patterns[:max_patterns]:
        lines.append(f"    {pattern}" + (f"  ({n} keys)" if n > 1 else ""))
    if len(patterns) > max_patterns:
        rest = sum(n for _, n in patterns[max_patterns:])
        lines.append(f"    ... {len(patterns) - max_patterns} more patterns ({rest} keys)")
    return lines
