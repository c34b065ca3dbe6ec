"""The boot partition (FAT) as the first-boot import sees it: read a file, write a note, scrub a file for good.

Installers drop `koto.toml` (and key and certificate files) on the card's FAT partition from a laptop. Deleting a
file on FAT only marks its directory entry free: the clusters keep the bytes, readable with any recovery tool from
a card pulled out of a Pi in a basement. So a secret is scrubbed by overwriting its clusters in place at the same
length, syncing that to the card, and only then deleting the entry.

Deleting the file is not the only way a secret lingers: a laptop's editor or file manager replaces a file by
writing a new copy and deleting the old one, so earlier versions of koto.toml lie in free clusters. After the
scrub the whole free space is overwritten too (`wipe_free`), once per import: a few seconds to a minute on a
512 MB boot partition.

Two ways in, one interface:
- `MountedBoot`, the partition mounted (Raspberry Pi OS mounts it at /boot/firmware; older images at /boot). A
  same-length write to an existing FAT file rewrites its clusters in place (FAT has no journal and no
  copy-on-write), and `fsync` pushes the data to the card before the entry is deleted.
- `ImageBoot`, a FAT file system in an image file or block device that is *not* mounted, through mtools. mtools
  cannot overwrite in place, so the scrub finds the file's clusters (`mshowfat`) and the data area from the boot
  sector, writes zeros there itself, fsyncs, then `mdel`s. The tests use it on an image file (no mounting, no
  root); it also serves a card in a USB reader on a support bench.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import subprocess
from pathlib import Path
from typing import Protocol

from koto.errors import KotoError
from koto.files import fsync_dir


class BootError(KotoError):
    """The boot partition could not be read or written (names the partition and what failed)."""


class BootPartition(Protocol):
    """What the first-boot import needs of the boot partition. Names are plain file names in its root folder."""

    where: str

    def exists(self, name: str) -> bool: ...

    def read(self, name: str) -> bytes: ...

    def write(self, name: str, data: bytes) -> None: ...

    def scrub(self, name: str) -> None:
        """Overwrite the file's bytes in place at the same length, sync them to the medium, then delete it."""
        ...

    def delete(self, name: str) -> None: ...

    def wipe_free(self) -> int:
        """Overwrite every free cluster with zeros (old copies of deleted files live there); return bytes wiped."""
        ...


class MountedBoot:
    """The boot partition mounted at `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        """A whole new file put in place by a rename (config.txt and cmdline.txt among them: a power cut while
        writing must leave the old file, never half a new one the firmware boots with)."""
        path, tmp = self.root / name, self.root / f".{name}.koto-new"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.root)

    def scrub(self, name: str) -> None:
        path = self.root / name
        size = path.stat().st_size
        with open(path, "r+b", buffering=0) as f:  # r+b: rewrite the same clusters, never truncate and reallocate
            done = 0
            while done < size:
                done += f.write(b"\0" * min(65536, size - done))
            os.fsync(f.fileno())
        self.delete(name)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
        fsync_dir(self.root)

    def wipe_free(self) -> int:
        """Fill the free space with a file of zeros through the file system itself, sync it, delete it. Only on a
        FAT file system: /boot on a plain Debian is the root file system, which this must never fill."""
        if fs_type(self.root) not in ("vfat", "msdos"):
            return 0
        path = self.root / ".koto-wipe"
        done = 0
        try:
            with open(path, "wb", buffering=0) as f:
                size = 1 << 20
                while size:
                    try:
                        done += f.write(b"\0" * size)
                    except OSError as e:
                        if e.errno not in (errno.ENOSPC, errno.EFBIG):
                            raise
                        size //= 2  # the last clusters: smaller writes until nothing fits
                os.fsync(f.fileno())
        finally:
            path.unlink(missing_ok=True)
            fsync_dir(self.root)
        return done


class ImageBoot:
    """A FAT file system in an image file or block device, not mounted, read and written with mtools.

    `offset` is where the file system starts in `image` (0 for a bare file system; a whole card's first partition
    usually starts at 4 MiB or 8 MiB)."""

    def __init__(self, image: Path, offset: int = 0) -> None:
        self.image = image
        self.offset = offset
        self.where = f"{image}@{offset}" if offset else str(image)
        self._target = f"{image}@@{offset}" if offset else str(image)

    def _mtools(self, *args: str, data: bytes | None = None) -> bytes:
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0", "MTOOLSRC": "/dev/null"}
        try:
            out = subprocess.run([args[0], "-i", self._target, *args[1:]], input=data, capture_output=True,
                                 env=env, check=False)
        except FileNotFoundError as e:
            raise BootError(f"{self.where}: {args[0]} not found: install mtools (apt-get install mtools)") from e
        if out.returncode != 0:
            raise BootError(f"{self.where}: {' '.join(args)}: {out.stderr.decode(errors='replace').strip()}")
        return out.stdout

    def exists(self, name: str) -> bool:
        try:
            self._mtools("mdir", "-b", f"::/{name}")
        except BootError:
            return False
        return True

    def read(self, name: str) -> bytes:
        return self._mtools("mtype", f"::/{name}")

    def write(self, name: str, data: bytes) -> None:
        import tempfile

        with tempfile.NamedTemporaryFile() as tmp:
            tmp.write(data)
            tmp.flush()
            self._mtools("mcopy", "-o", tmp.name, f"::/{name}")
        self._sync()

    def scrub(self, name: str) -> None:
        size = len(self.read(name))
        clusters = self._clusters(name)
        geo = _Geometry.read(self.image, self.offset)
        with open(self.image, "r+b", buffering=0) as f:
            left = size
            for c in clusters:
                if left <= 0:
                    break
                n = min(left, geo.cluster_bytes)
                f.seek(self.offset + geo.cluster_offset(c))
                f.write(b"\0" * n)
                left -= n
            os.fsync(f.fileno())
        if left > 0:
            raise BootError(f"{self.where}: {name}: its clusters hold less than its {size} bytes; not deleted")
        self.delete(name)

    def delete(self, name: str) -> None:
        if self.exists(name):
            self._mtools("mdel", f"::/{name}")
            self._sync()

    def wipe_free(self) -> int:
        """Zero every cluster the FAT marks free, directly in the image (mtools has no such command)."""
        geo = _Geometry.read(self.image, self.offset)
        with open(self.image, "r+b", buffering=0) as f:
            f.seek(self.offset + geo.fat_offset)
            fat = f.read(geo.fat_bytes)
            done = 0
            for first, count in _runs(geo.free_clusters(fat)):
                f.seek(self.offset + geo.cluster_offset(first))
                f.write(b"\0" * (count * geo.cluster_bytes))
                done += count * geo.cluster_bytes
            os.fsync(f.fileno())
        return done

    def _clusters(self, name: str) -> list[int]:
        """The file's clusters in order, from `mshowfat` ("::/koto.toml <3-4><9>")."""
        text = self._mtools("mshowfat", f"::/{name}").decode()
        out: list[int] = []
        for first, last in re.findall(r"<(\d+)(?:-(\d+))?>", text):
            out.extend(range(int(first), int(last or first) + 1))
        return out

    def _sync(self) -> None:
        fd = os.open(self.image, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Geometry:
    """Where cluster N's bytes are, from the FAT boot sector (FAT12, FAT16 and FAT32)."""

    def __init__(self, bytes_per_sector: int, sectors_per_cluster: int, reserved: int, fat_sectors: int,
                 first_data_sector: int, total_sectors: int) -> None:
        self.bps = bytes_per_sector
        self.spc = sectors_per_cluster
        self.first_data_sector = first_data_sector
        self.fat_offset = reserved * bytes_per_sector
        self.fat_bytes = fat_sectors * bytes_per_sector
        self.clusters = (total_sectors - first_data_sector) // sectors_per_cluster
        # The FAT type follows from the number of clusters alone (Microsoft's FAT specification).
        self.bits = 12 if self.clusters < 4085 else 16 if self.clusters < 65525 else 32

    def free_clusters(self, fat: bytes) -> list[int]:
        free: list[int] = []
        for c in range(2, self.clusters + 2):
            if self.bits == 32:
                entry = struct.unpack_from("<I", fat, 4 * c)[0] & 0x0FFFFFFF
            elif self.bits == 16:
                entry = struct.unpack_from("<H", fat, 2 * c)[0]
            else:
                pair = struct.unpack_from("<H", fat, c + c // 2)[0]
                entry = pair >> 4 if c & 1 else pair & 0xFFF
            if entry == 0:
                free.append(c)
        return free

    @property
    def cluster_bytes(self) -> int:
        return self.bps * self.spc

    def cluster_offset(self, cluster: int) -> int:
        return (self.first_data_sector + (cluster - 2) * self.spc) * self.bps

    @classmethod
    def read(cls, image: Path, offset: int) -> _Geometry:
        with open(image, "rb") as f:
            f.seek(offset)
            bs = f.read(64)
        bps, spc, reserved, nfats, root_entries = struct.unpack_from("<HBHBH", bs, 11)
        fat16 = struct.unpack_from("<H", bs, 22)[0]
        fat_sectors = fat16 or struct.unpack_from("<I", bs, 36)[0]
        if bps not in (512, 1024, 2048, 4096) or spc == 0 or nfats == 0:
            raise BootError(f"{image}@{offset}: not a FAT boot sector")
        root_sectors = (root_entries * 32 + bps - 1) // bps
        total = struct.unpack_from("<H", bs, 19)[0] or struct.unpack_from("<I", bs, 32)[0]
        return cls(bps, spc, reserved, fat_sectors, reserved + nfats * fat_sectors + root_sectors, total)


def _runs(clusters: list[int]) -> list[tuple[int, int]]:
    """Consecutive clusters as (first, count), so the wipe writes long runs, not one cluster at a time."""
    runs: list[tuple[int, int]] = []
    for c in clusters:
        if runs and runs[-1][0] + runs[-1][1] == c:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((c, 1))
    return runs


FAT_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}  # MBR partition types of FAT12/16/32 (LBA or CHS)


def fat_offset(image: Path) -> int:
    """Where the FAT file system starts in `image`: 0 for a bare file system, else the first FAT partition of its
    MBR (a whole card: Raspberry Pi OS's boot partition starts at 4 MiB or 8 MiB)."""
    with open(image, "rb") as f:
        head = f.read(512)
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        raise BootError(f"{image}: neither a FAT file system nor a disk image with a partition table")
    bps = struct.unpack_from("<H", head, 11)[0]
    if head[0] in (0xEB, 0xE9) and bps in (512, 1024, 2048, 4096) and (b"FAT" in head[54:62] or b"FAT" in head[82:90]):
        return 0  # a FAT boot sector, not an MBR
    for i in range(4):
        entry = head[446 + 16 * i: 446 + 16 * (i + 1)]
        if entry[4] in FAT_TYPES:
            return int(struct.unpack_from("<I", entry, 8)[0]) * 512
    raise BootError(f"{image}: its partition table has no FAT partition (the boot partition)")


def fs_type(path: Path, mounts: Path = Path("/proc/self/mounts")) -> str:
    """The type of the file system `path` is on (the longest mount point that contains it)."""
    best, kind = "", ""
    target = str(path.resolve())
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def find_boot(candidates: tuple[Path, ...] = (Path("/boot/firmware"), Path("/boot"))) -> MountedBoot:
    """The mounted boot partition: /boot/firmware (Raspberry Pi OS Bookworm and later), else /boot."""
    for c in candidates:
        if (c / "config.txt").exists() or (c / "koto.toml").exists():
            return MountedBoot(c)
    return MountedBoot(candidates[0])
