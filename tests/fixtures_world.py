"""Session fixtures of the synthetic world (owned by the synthetic-world area).

- `synth_world`: a `size="test"` world (seed 0, 64 px images), made once per test session.
- `prepared_world`: the same world in its own directory, with its pretraining shards
  (`shards/{pairs,regions,text,images}/`) and `tokenizer/` made by running the world.json
  commands through `xfm-prep` (needs the sharders and the tokenizer trainer).

Both yield a `SynthWorld`: `.root` (Path), `.manifest` (dict = world.json), `.path(rel)`,
`.shards(kind)` and `.tokenizer` (Paths). Treat the directories as read-only: they are shared by
every test of the session.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

WORLD_SEED = 0


@dataclass(frozen=True)
class SynthWorld:
    root: Path
    manifest: dict

    def path(self, rel: str) -> Path:
        return self.root / rel

    def shards(self, kind: str) -> Path:
        return self.root / self.manifest["shards"][kind]

    @property
    def tokenizer(self) -> Path:
        return self.root / self.manifest["tokenizer"]


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory) -> SynthWorld:
    from xfm.data_prep.synth import make_world

    root = tmp_path_factory.mktemp("synth_world") / "world"
    return SynthWorld(root, make_world(root, seed=WORLD_SEED, size="test"))


@pytest.fixture(scope="session")
def prepared_world(tmp_path_factory) -> SynthWorld:
    from xfm.data_prep.synth import prepare_world

    root = tmp_path_factory.mktemp("prepared_world") / "world"
    return SynthWorld(root, prepare_world(root, seed=WORLD_SEED, size="test"))
