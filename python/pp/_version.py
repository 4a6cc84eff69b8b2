"""pp's version: the one definition. pp.__version__ is this; the Makefile and
the build backend (tools/pp_build.py) read the string from this file for
`ppserver --version` and the package metadata, so they cannot disagree."""
__version__ = "2.0.0"
