"""The one place odeflow sets up tqdm progress bars."""

from __future__ import annotations

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(total: int | None = None, *, desc: str, verbose: bool = True, **kwargs) -> tqdm:
    """A tqdm bar for long work: shown when ``verbose``, left off the screen when done.

    ``progress(n, desc="fit", verbose=False)`` is a disabled bar (no output, same methods).
    Extra keyword arguments go to ``tqdm``.
    """
    kwargs.setdefault("leave", False)
    return tqdm(total=total, desc=desc, disable=not verbose, **kwargs)
