"""``python -m odeflow``: the ``odeflow`` command (also ``torchrun ... -m odeflow``)."""

import sys

from odeflow.cli import main

sys.exit(main())
