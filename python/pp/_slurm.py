"""Slurm's node lists for ppservers=: pp.slurm_nodes() expands
SLURM_JOB_NODELIST ("node[01-03,07],gpu5") into host names, optionally as
"host:port" entries, so a batch script can start one ppserver per node with
srun and point the client at them (deploy/slurm/pp.sbatch)."""
import os
import re

__all__ = ["slurm_nodes"]

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_MAX_HOSTS = 1 << 20  # a bound on what one list may expand to


def _split_top(text):
    """Split text at the commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError("nested '[' in Slurm node list %r" % text)
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ']' in Slurm node list %r" % text)
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError("unbalanced '[' in Slurm node list %r" % text)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _expand_ranges(spec, whole):
    """"01-03,07" -> ["01", "02", "03", "07"] (zero padding kept)."""
    out = []
    for item in spec.split(","):
        m = _RANGE.match(item.strip())
        if not m:
            raise ValueError("bad range %r in Slurm node list %r" % (item, whole))
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo) or int(hi) - int(lo) >= _MAX_HOSTS:
            raise ValueError("bad range %r in Slurm node list %r" % (item, whole))
        width = len(lo) if lo.startswith("0") else 0
        out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return out


def _expand_host(pattern, whole):
    """One hostlist item, e.g. "rack[1-2]-n[01-02]", expanded in order."""
    hosts = [""]
    pos = 0
    for m in re.finditer(r"\[([^\]]*)\]", pattern):
        prefix = pattern[pos:m.start()]
        choices = _expand_ranges(m.group(1), whole)
        hosts = [h + prefix + c for h in hosts for c in choices]
        if len(hosts) > _MAX_HOSTS:
            raise ValueError("Slurm node list %r is too long" % whole)
        pos = m.end()
    return [h + pattern[pos:] for h in hosts]


def slurm_nodes(nodelist=None, port=None):
    """The hosts of a Slurm node list, in order, each once.

    nodelist defaults to $SLURM_JOB_NODELIST (then $SLURM_NODELIST), as set
    inside an allocation. With port, each entry is "host:port", ready for
    pp.Server(ppservers=...). Raises ValueError when no list is given or set,
    or when it is malformed."""
    if nodelist is None:
        nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError("no Slurm node list: SLURM_JOB_NODELIST is not set "
                             "(run inside an sbatch or salloc allocation, or "
                             "pass nodelist=)")
    hosts = []
    for item in _split_top(nodelist):
        for h in _expand_host(item, nodelist):
            if h not in hosts:
                hosts.append(h)
    if port is not None:
        return ["%s:%d" % (h, int(port)) for h in hosts]
    return hosts
