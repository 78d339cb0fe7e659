"""odeflow's version, in a module of its own so that any module can read it without importing
the top-level package (which imports every subpackage)."""

__version__ = "0.1.0"
