"""All-or-nothing writing of a set of files: stage them in a hidden folder beside their
destination, then rename them into place; on any failure undo everything."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ._nifti import EPIInputError

__all__ = ["commit", "make_dirs", "staging_folder"]


def make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` (and parents); return the folders created, outermost first."""
    missing = []
    d = directory.absolute()
    while not d.exists():
        missing.append(d)
        d = d.parent
    missing.reverse()
    made: list[Path] = []
    try:
        for m in missing:
            m.mkdir()
            made.append(m)
    except BaseException:  # no empty folder is left behind
        _remove_empty(made)
        raise
    return missing


def _remove_empty(folders: Sequence[Path]) -> None:
    for d in reversed(folders):
        try:
            d.rmdir()
        except OSError:
            pass


@contextmanager
def staging_folder(directory: Path) -> Iterator[Path]:
    """A hidden temporary folder inside ``directory`` (created, with its parents, if needed).

    The folder is removed on the way out; if the block fails, the folders created for it are
    removed as well (when empty), so that a failed run leaves nothing behind.
    """
    created = make_dirs(directory)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".odeflow-tmp-", dir=directory))
        yield tmp
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def commit(
    staged: dict[Path, Path], tmp: Path, *, overwrite: bool, remove: Sequence[Path] = ()
) -> None:
    """Rename every staged file (destination → staged file) into place and move ``remove``
    (stale outputs) away into ``tmp``; on failure undo (restoring replaced and removed files).

    Raises:
        EPIInputError: a destination appeared meanwhile and ``overwrite`` is false.
    """
    done: list[Path] = []
    backups: list[tuple[Path, Path]] = []
    try:
        for stale in remove:
            backup = tmp / f".backup-{len(backups)}-{stale.name}"
            os.replace(stale, backup)
            backups.append((stale, backup))
        for final, temp in staged.items():
            if final.exists() or final.is_symlink():
                if not overwrite:
                    raise EPIInputError(
                        f"output '{final}' appeared while correcting; nothing was written"
                    )
                backup = tmp / f".backup-{len(backups)}-{final.name}"
                os.replace(final, backup)
                backups.append((final, backup))
            os.replace(temp, final)
            done.append(final)
    except BaseException:
        for f in done:
            try:
                f.unlink()
            except OSError:
                pass
        for final, backup in backups:
            os.replace(backup, final)
        raise
