import sys

from odeflow.cli import main

sys.exit(main())
