"""Unpacking an uploaded version: a single ONNX file, or a tar (optionally gzip) or zip archive
of a version folder, told apart by their first bytes.

Nothing an archive holds may leave the folder it is unpacked into: members with absolute paths
or ``..``, symbolic and hard links, devices and FIFOs are refused (400), and so is an archive
whose members add up to more than the upload limit (413, before they are written). Files are
written through an injectable ``write`` so that a full disk can be tested.

>>> kind = sniff(Path("upload.bin"))  # doctest: +SKIP
>>> folder = unpack(Path("upload.bin"), Path("staging/x"), limit=1 << 30)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from .errors import BadRequestError, PayloadTooLargeError
from .received_files import Writer, write_all
from .repository import MODEL_FILENAME

__all__ = [
    "ArchiveKind",
    "Writer",
    "remove_tree",
    "safe_member_path",
    "sniff",
    "unpack",
    "write_all",
]

ArchiveKind = Literal["onnx", "zip", "tar", "tar.gz"]
_CHUNK = 1024 * 1024


def sniff(path: Path) -> ArchiveKind:
    """What an upload is, from its magic bytes: zip, gzip (a .tar.gz), tar, or else ONNX."""
    with path.open("rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[257:262] == b"ustar":
        return "tar"
    return "onnx"


def safe_member_path(name: str) -> PurePosixPath:
    """An archive member's path, refused (400) when it could land outside the folder."""
    if "\x00" in name or "\\" in name:
        raise BadRequestError(f"archive member {name!r}: invalid characters in its path")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise BadRequestError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise BadRequestError(f"archive member {name!r} would leave the version folder ('..')")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise BadRequestError(f"archive member {name!r} has an empty path")
    return PurePosixPath(*parts)


def unpack(upload: Path, into: Path, *, limit: int, write: Writer = write_all) -> Path:
    """Unpack ``upload`` into ``into`` and return the version folder (the folder holding
    ``model.onnx``): the archive's root, or its single top-level folder."""
    kind = sniff(upload)
    into.mkdir(parents=True, exist_ok=True)
    if kind == "onnx":
        os.rename(upload, into / MODEL_FILENAME)
        return into
    if kind == "zip":
        _unzip(upload, into, limit, write)
    else:
        _untar(upload, into, limit, write)
    upload.unlink()
    return _version_folder(into)


def _version_folder(root: Path) -> Path:
    folder = root
    for _ in range(2):
        if (folder / MODEL_FILENAME).is_file():
            return folder
        entries = list(folder.iterdir())
        onnx_files = [p for p in entries if p.is_file() and p.suffix == ".onnx"]
        if len(onnx_files) == 1:
            onnx_files[0].rename(folder / MODEL_FILENAME)
            return folder
        dirs = [p for p in entries if p.is_dir()]
        if len(entries) == 1 and len(dirs) == 1:
            folder = dirs[0]
            continue
        break
    raise BadRequestError(
        f"the archive holds no {MODEL_FILENAME} (nor a single .onnx file) at its root or in "
        "its single top-level folder"
    )


def _target(into: Path, name: str) -> Path:
    return into.joinpath(*safe_member_path(name).parts)


def _check_total(total: int, limit: int) -> None:
    if total > limit:
        raise PayloadTooLargeError(
            f"the archive unpacks to more than the upload limit of {limit} bytes"
        )


def _copy(source: IO[bytes], target: Path, write: Writer, total: int, limit: int) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("xb") as out:
        while chunk := source.read(_CHUNK):
            total += len(chunk)
            _check_total(total, limit)
            write(out, chunk)
    return total


def _untar(upload: Path, into: Path, limit: int, write: Writer) -> None:
    total = 0
    try:
        with tarfile.open(upload, mode="r:*") as tar:
            for member in tar:
                name = member.name
                target = _target(into, name)
                if member.issym() or member.islnk():
                    raise BadRequestError(
                        f"archive member {name!r} is a link; links are not accepted"
                    )
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise BadRequestError(
                        f"archive member {name!r} is not a regular file (device or FIFO)"
                    )
                _check_total(total + member.size, limit)
                source = tar.extractfile(member)
                assert source is not None
                total = _copy(source, target, write, total, limit)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise BadRequestError(f"the upload is not a valid tar archive: {exc}") from None
    except FileExistsError as exc:
        raise BadRequestError(f"the archive holds {exc.filename!r} twice") from None


def _unzip(upload: Path, into: Path, limit: int, write: Writer) -> None:
    try:
        with zipfile.ZipFile(upload) as archive:
            infos = archive.infolist()
            total = 0
            for info in infos:
                safe_member_path(info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise BadRequestError(
                        f"archive member {info.filename!r} is a link; links are not accepted"
                    )
                if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise BadRequestError(f"archive member {info.filename!r} is not a regular file")
                total += info.file_size
            _check_total(total, limit)
            total = 0
            for info in infos:
                target = _target(into, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                with archive.open(info) as source:
                    total = _copy(source, target, write, total, limit)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as exc:
        raise BadRequestError(f"the upload is not a valid zip archive: {exc}") from None
    except NotImplementedError as exc:  # compression methods zipfile does not read
        raise BadRequestError(f"the zip archive cannot be read: {exc}") from None
    except FileExistsError as exc:
        raise BadRequestError(f"the archive holds {exc.filename!r} twice") from None


def remove_tree(path: Path) -> None:
    """Remove a staging folder, whatever is left in it."""
    shutil.rmtree(path, ignore_errors=True)
