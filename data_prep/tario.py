"""Deterministic, atomic tar shards.

Members get fixed metadata (mtime 0, uid/gid 0, no user names, mode 0444) so the same samples
always give the same bytes; the tar is written to ``NAME.tmp`` and renamed when complete, so a
reader (or a resumed run) never sees a half-written shard under the final name."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile

BLOCK = tarfile.BLOCKSIZE            # 512
RECORD = tarfile.RECORDSIZE          # 10240: tarfile pads the archive to a multiple of this


def member_bytes(size: int) -> int:
    return BLOCK + -(-size // BLOCK) * BLOCK


def sample_tar_bytes(members: dict) -> int:
    return sum(member_bytes(len(v)) for v in members.values())


def archive_bytes(data_bytes: int) -> int:
    """File size of a tar whose members take ``data_bytes`` (end blocks + record padding)."""
    return -(-(data_bytes + 2 * BLOCK) // RECORD) * RECORD


class _HashingFile:
    """Write-through file wrapper computing sha256 on the fly (no second read of the shard)."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.pos = 0

    def write(self, b):
        self.sha.update(b)
        self.pos += len(b)
        return self.f.write(b)

    def tell(self):
        return self.pos


def fsync_dir(path: str):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes):
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DeterministicTar:
    def __init__(self, path: str):
        self.path = path
        self.tmp = f"{path}.tmp"
        self._file = open(self.tmp, "wb")
        self._hash = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hash, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0

    def add_sample(self, key: str, members: dict):
        for ext in sorted(members):        # fixed member order inside a sample
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def commit(self) -> tuple[int, str]:
        """Finish the archive, make it durable, rename into place -> (bytes, sha256)."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        size = self._hash.pos
        os.replace(self.tmp, self.path)
        fsync_dir(os.path.dirname(self.path) or ".")
        return size, self._hash.sha.hexdigest()

    def discard(self):
        try:
            self._tar.close()
        except Exception:
            pass
        self._file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
