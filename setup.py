"""Build pp: the pp package (python/pp) and its C extension pp._core, which
links the C core (src/core) with libuv and OpenSSL (libssl, libcrypto). Works offline:
pip install --no-build-isolation ."""
import glob
import os

from setuptools import Extension, setup

# warnings are errors, as in the Makefile's build of the core
extra = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O2"]
san = os.environ.get("PP_SANITIZE")
if san:
    extra += ["-fsanitize=" + san, "-fno-omit-frame-pointer", "-O1", "-g"]

core = Extension(
    "pp._core",
    sources=sorted(glob.glob("src/core/*.c")) + sorted(glob.glob("src/ext/*.c")),
    libraries=["uv", "ssl", "crypto"],
    extra_compile_args=extra,
    extra_link_args=["-fsanitize=" + san] if san else [],
)

setup(
    name="pp",
    version="2.0.0",
    description="Parallel Python with a C engine",
    package_dir={"": "python"},
    packages=["pp", "ppft"],  # ppft: the drop-in for ppft programs and pathos
    package_data={"pp": ["py.typed"]},  # PEP 561: pp ships type hints
    ext_modules=[core],
    python_requires=">=3.10",
)
