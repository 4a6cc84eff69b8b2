"""How a callable travels to a worker (client side).

A function is described by a *descriptor*: a pickled tuple the worker's loader
(pp._worker.load) turns back into a callable. The engine ships each descriptor
once per worker and the worker caches it under the SHA-256 of its bytes, so two
different functions can never be confused, whatever their ids.

Kinds of descriptor:
  ("ref", module, qualname, fallback)             importable function/builtin;
                                                  fallback: a "src" descriptor
                                                  (bytes) for nodes that cannot
                                                  import module, or None
  ("src", name, imports, refs, sources, method)   source code, pp style
  ("cp", cloudpickle_bytes)                       lambdas, closures, no source
"""
import builtins
import importlib
import inspect
import os
import pickle
import sys
import textwrap
import types

from ._errors import SerializationError

try:  # optional, for lambdas and closures
    import cloudpickle as _cloudpickle
except Exception:  # pragma: no cover - depends on the environment
    _cloudpickle = None

_FUNC_TYPES = (types.FunctionType,)


def _importable(obj):
    """Return (module, qualname) if obj can be found again by import, else None."""
    mod = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not mod or not qual or mod == "__main__" or "<" in qual:
        return None
    m = sys.modules.get(mod)
    if m is None:
        try:
            m = importlib.import_module(mod)
        except Exception:
            return None
    target = m
    for part in qual.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    if target is not obj:
        return None
    return mod, qual


def _source_of(obj):
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return None


def _class_hierarchy(cls):
    """Classes of cls's MRO that need shipping by source (bases first)."""
    out = []
    for c in reversed(cls.__mro__):
        if c is object or c.__module__ == "builtins" or _importable(c):
            continue
        out.append(c)
    return out


def _code_names(code):
    """Every global name a code object (and its nested code) may load."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


class _Collector:
    """Builds a "src" descriptor: sources in dependency order, modules to
    import, and names to bind to importable objects."""

    def __init__(self):
        self.imports = []     # statements or module names, as pp's `modules`
        self.refs = {}        # name -> (module, qualname)
        self.sources = []     # source texts, dependencies first
        self.done = set()     # ids of objects already added (held in self.keep)
        self.keep = []
        self.modnames = {}    # bound name -> module name

    def add_module_name(self, spec):
        if spec not in self.imports:
            self.imports.append(spec)

    def add_global(self, name, value):
        if isinstance(value, types.ModuleType):
            if self.modnames.get(name) != value.__name__:
                self.modnames[name] = value.__name__
            return
        if id(value) in self.done:
            return
        if isinstance(value, (types.FunctionType, type, types.BuiltinFunctionType)):
            ref = _importable(value)
            if ref is not None:
                self.refs[name] = ref
                return
            if isinstance(value, type):
                self.add_class(value)
            elif isinstance(value, types.FunctionType):
                self.add_function(value)

    def add_class(self, cls):
        for c in _class_hierarchy(cls):
            if id(c) in self.done:
                continue
            self.done.add(id(c))
            self.keep.append(c)
            src = _source_of(c)
            if src is None:
                raise SerializationError(
                    "cannot find the source of class %r to ship it" % c.__qualname__)
            for attr in vars(c).values():
                fn = getattr(attr, "__func__", attr)
                if isinstance(fn, types.FunctionType):
                    self.scan(fn.__code__, fn.__globals__)
            self.sources.append(src)

    def add_function(self, fn):
        if id(fn) in self.done:
            return
        if fn.__closure__ or "<" in fn.__qualname__:
            raise SerializationError("closure")
        src = _source_of(fn)
        if src is None:
            raise SerializationError("nosource")
        self.done.add(id(fn))
        self.keep.append(fn)
        self.scan(fn.__code__, fn.__globals__)
        self.sources.append(src)

    def scan(self, code, g):
        for name in sorted(_code_names(code)):
            if name in g and not hasattr(builtins, name):
                self.add_global(name, g[name])

    def imports_for_worker(self):
        out = list(self.imports)
        for name, mod in sorted(self.modnames.items()):
            if name == mod:
                out.append(mod)
            else:
                out.append("import %s as %s" % (mod, name))
        return out


def describe(func, depfuncs=(), modules=(), globals=None, extra_classes=()):
    """Return (descriptor_bytes, is_method, cacheable) for func.

    is_method is True for bound methods: the caller prepends func.__self__ to
    the arguments. cacheable is False for cloudpickle descriptors, which
    capture values that may change between submits. Raises
    SerializationError when func cannot be shipped."""
    is_method = isinstance(func, types.MethodType) and not isinstance(
        func.__self__, types.ModuleType)
    target = func.__func__ if is_method else func
    if is_method and isinstance(func.__self__, type):
        return _describe_classmethod(func, depfuncs, modules, globals,
                                     extra_classes)

    simple = not depfuncs and not modules and not globals and not extra_classes
    if simple and not is_method:
        ref = _importable(func)
        if ref is not None:
            return pickle.dumps(("ref",) + ref + (_fallback(func),), 4), False, True
        if isinstance(func, types.BuiltinFunctionType):
            raise SerializationError("cannot ship builtin %r" % (func,))

    if not isinstance(target, types.FunctionType):
        if callable(target):
            ref = _importable(target)
            if ref is not None and not is_method:
                return pickle.dumps(("ref",) + ref, 4), False, True
        return _cloudpickle_desc(func, "it is not a plain function"), False, False

    try:
        c = _Collector()
        for spec in modules:
            c.add_module_name(spec)
        if globals:
            for name, value in list(globals.items()):
                if name.startswith("__") or not name.isidentifier():
                    continue  # e.g. "@py_builtins", which pytest adds
                if isinstance(value, types.ModuleType):
                    c.modnames[name] = value.__name__
                elif isinstance(value, (types.FunctionType, type)):
                    c.add_global(name, value)
        for cls in extra_classes:
            c.add_class(cls)
        for dep in depfuncs:
            if isinstance(dep, type):
                c.add_class(dep)
            elif isinstance(dep, types.FunctionType):
                ref = _importable(dep)
                if ref is not None and dep.__module__ != target.__module__:
                    c.refs[dep.__name__] = ref
                else:
                    c.add_function(dep)
            else:
                raise SerializationError("depfuncs must be functions or classes, not %r"
                                         % (dep,))
        if is_method:
            cls = func.__self__.__class__
            ref = _importable(cls)
            if ref is not None:
                # an importable class comes by reference, as its instance
                # does (add_class ships only the rest of a hierarchy)
                c.refs[cls.__name__] = ref
            else:
                c.add_class(cls)
            method = (cls.__name__, target.__name__)
        else:
            c.add_function(target)
            method = None
    except SerializationError as e:
        if str(e) in ("closure", "nosource"):
            why = ("it is a closure or nested function" if str(e) == "closure"
                   else "its source code is not available")
            return _cloudpickle_desc(func, why), False, False
        raise
    desc = ("src", target.__name__, c.imports_for_worker(),
            sorted(c.refs.items()), c.sources, method)
    return pickle.dumps(desc, 4), is_method, True


def _describe_classmethod(func, depfuncs, modules, globals, extra_classes):
    """describe() for a method bound to a class (a classmethod): the worker
    looks the method up on the class, which comes by reference when it is
    importable, else by source; the class is not an argument. Returns
    (descriptor_bytes, False, cacheable)."""
    cls, name = func.__self__, func.__func__.__name__
    simple = not depfuncs and not modules and not globals and not extra_classes
    ref = _importable(cls)
    if simple and ref is not None:
        return pickle.dumps(("ref", ref[0], ref[1] + "." + name, None), 4), \
            False, True
    c = _Collector()
    for spec in modules:
        c.add_module_name(spec)
    for dep in tuple(depfuncs) + tuple(extra_classes):
        if isinstance(dep, type):
            c.add_class(dep)
        else:
            c.add_function(dep)
    c.add_class(cls)
    desc = ("src", name, c.imports_for_worker(), sorted(c.refs.items()),
            c.sources, (cls.__name__, name))
    return pickle.dumps(desc, 4), False, True


def _installed(modname):
    """Whether a module comes with Python or from site-packages (and so can
    be expected on every node), rather than from the user's own files."""
    m = sys.modules.get(modname.partition(".")[0])
    f = getattr(m, "__file__", None)
    if m is None:
        return False
    if f is None:
        return True  # built into the interpreter
    f = os.path.realpath(f)
    return any(f.startswith(p + os.sep) for p in _install_dirs())


_dirs_cache = []


def _install_dirs():
    if not _dirs_cache:
        import sysconfig
        dirs = set()
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            p = sysconfig.get_paths().get(key)
            if p:
                dirs.add(os.path.realpath(p))
        for p in sys.path:
            if "site-packages" in p or "dist-packages" in p:
                dirs.add(os.path.realpath(p))
        _dirs_cache.extend(sorted(dirs))
    return _dirs_cache


def _fallback(func):
    """For a function of the user's own module: a source descriptor a remote
    worker uses when it cannot import that module (pp ships source). None
    for library functions and when no source descriptor can be made."""
    if not isinstance(func, types.FunctionType) or _installed(func.__module__):
        return None
    try:
        c = _Collector()
        c.add_function(func)
    except Exception:
        return None
    return pickle.dumps(("src", func.__name__, c.imports_for_worker(),
                         sorted(c.refs.items()), c.sources, None), 4)


def _cloudpickle_desc(func, why):
    if _cloudpickle is None:
        raise SerializationError(
            "cannot ship %r: %s and cloudpickle is not installed"
            % (getattr(func, "__qualname__", func), why))
    try:
        return pickle.dumps(("cp", _cloudpickle.dumps(func)), 4)
    except Exception as e:
        raise SerializationError("cannot serialize %r with cloudpickle: %s"
                                 % (getattr(func, "__qualname__", func), e)) from e


def main_classes(args):
    """Classes of top-level arguments defined in __main__ (pp ships them)."""
    out = None
    for a in args:
        t = type(a)
        if t.__module__ == "__main__":
            if out is None:
                out = []
            if t not in out:
                out.append(t)
    return tuple(out) if out else ()
