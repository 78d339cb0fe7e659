"""Private helpers shared by every odeflow package (not public API).

* :mod:`._validate` — argument checks with messages that name the argument and the fix:
  :func:`check_int`, :func:`check_positive_int`, :func:`check_finite_real`, :func:`check_device`.
* :mod:`._warnings` — :func:`outside_stacklevel`, the ``stacklevel`` that makes a warning
  point at the user's line however deep inside odeflow it is raised.
* :mod:`._files` — :func:`atomic_write` (write beside the target, fsync, rename over it) and
  JSON: :func:`jsonable` (plain data; NaN/inf are an error or ``None``), :func:`dumps_json`,
  :func:`write_json` (always ``allow_nan=False``: the file is strict JSON).
* :mod:`._progress` — :func:`progress`, the one place tqdm is set up.
* :mod:`._distributed` — :class:`Comm` (the collectives of data-parallel training:
  gradient averaging, rank-offset seeds, one stop for all ranks) and
  :func:`init_process_group`, shared by ``flows.fit`` and ``control.fit``.

Import from ``odeflow._utils``; the submodules are an implementation detail.
"""

from ._distributed import Comm, init_process_group
from ._files import atomic_write, dumps_json, jsonable, write_json
from ._progress import progress
from ._validate import check_device, check_finite_real, check_int, check_positive_int
from ._warnings import outside_stacklevel

__all__ = [
    "Comm",
    "atomic_write",
    "check_device",
    "check_finite_real",
    "check_int",
    "check_positive_int",
    "dumps_json",
    "init_process_group",
    "jsonable",
    "outside_stacklevel",
    "progress",
    "write_json",
]
