"""What else the machine did while a bench step ran: other processes' CPU and hypervisor steal.

Every bench here runs on a shared 2-core VM where other sessions' tests come and go, so a
figure is only worth printing with how quiet the machine was while it was taken. A
:class:`Window` brackets a step: at its end it gives, from ``/proc/stat`` and ``/proc/*/stat``,

* ``other``: CPU time spent by processes that are not the bench's, in % of one core over the
  whole machine. "Ours" is the bench process, everything it started (its descendants, found by
  parent pid, plus the reaped ones through ``RUSAGE_CHILDREN``), any extra pids the caller
  names (a database server's backends for the bench's database) and ``ksoftirqd`` (it carries
  loopback packets, nearly all of them the bench's during a step). The kernel here accounts by
  ticks without IRQ time accounting, so softirq work lands on whatever task was running: the
  figure is busy ticks minus ours, never split finer than that;
* ``steal``: per core, the share of the core's time the hypervisor gave to other guests;
* the busiest other processes by name, to say *what* disturbed a step.

:func:`wait_quiet` waits (bounded) until the machine has been quiet for a few seconds before a
step starts, so that fewer steps need repeating.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")
MAX_OTHER_PCT = 10.0  # default: other processes may use this much of one core, machine-wide
MAX_STEAL_PCT = 5.0  # default: the hypervisor may steal this much of either core


def core_times() -> dict[int, tuple[int, int, int]]:
    """Per core: (busy, steal, total) ticks. Busy = user + nice + system + irq + softirq."""
    out: dict[int, tuple[int, int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals] + [0] * 10
            busy = v[0] + v[1] + v[2] + v[5] + v[6]
            out[int(name[3:])] = (busy, v[7], sum(v[:8]))
    return out


@dataclass(frozen=True)
class Proc:
    comm: str
    ppid: int
    cpu: float  # utime + stime, seconds (all threads)
    start: int  # start time in ticks since boot: tells a reused pid apart


def processes() -> dict[int, Proc]:
    """Every process now: pid -> (comm, ppid, CPU seconds, start time)."""
    out: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read().decode(errors="replace")
        except OSError:
            continue
        lpar, rpar = raw.find("("), raw.rfind(")")
        fields = raw[rpar + 2:].split()
        if len(fields) < 20:
            continue
        out[int(entry.name)] = Proc(raw[lpar + 1:rpar], int(fields[1]),
                                    (int(fields[11]) + int(fields[12])) / CLK, int(fields[19]))
    return out


def proc_cpu(pid: int) -> float:
    """utime + stime of one process (all its threads), seconds; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def pids_matching(needle: str, prefix: str = "postgres") -> list[int]:
    """Pids whose command line starts with ``prefix`` and contains ``needle`` (a PostgreSQL
    backend's title is ``postgres: USER DBNAME HOST(PORT) STATE``; an embedded server's
    processes name its data directory)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            cmd = cmdline(int(entry.name))
            if cmd.startswith(prefix) and needle in cmd:
                out.append(int(entry.name))
    return out


def _descendants(procs: dict[int, Proc], roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, p in procs.items():
        children.setdefault(p.ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return seen


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Load:
    """What the rest of the machine did during a window."""

    seconds: float = 0.0
    other_pct: float = 0.0  # % of one core, machine-wide, spent by processes not ours
    steal_pct: dict[int, float] = field(default_factory=dict)  # per core, % of that core
    ours_pct: float = 0.0  # % of one core spent by the bench and what it started
    top: list[tuple[str, float]] = field(default_factory=list)  # busiest others, % of a core

    @property
    def steal_max(self) -> float:
        return max(self.steal_pct.values(), default=0.0)

    def disturbed(self, max_other: float = MAX_OTHER_PCT,
                  max_steal: float = MAX_STEAL_PCT) -> list[str]:
        """Why this window does not count as quiet (empty: it does)."""
        why = []
        if self.other_pct > max_other:
            names = ", ".join(f"{n} {p:.0f}%" for n, p in self.top[:3])
            why.append(f"other load {self.other_pct:.0f}% > {max_other:g}%"
                       + (f" ({names})" if names else ""))
        if self.steal_max > max_steal:
            cores = ", ".join(f"core {c} {p:.0f}%" for c, p in sorted(self.steal_pct.items()))
            why.append(f"steal {self.steal_max:.0f}% > {max_steal:g}% ({cores})")
        return why

    def brief(self) -> str:
        steal = "/".join(f"{p:.0f}" for _, p in sorted(self.steal_pct.items()))
        return f"other {self.other_pct:.0f}% steal {steal}%"

    def as_dict(self) -> dict[str, object]:
        return {"seconds": round(self.seconds, 3), "other_pct": round(self.other_pct, 1),
                "steal_pct": {str(k): round(v, 1) for k, v in self.steal_pct.items()},
                "ours_pct": round(self.ours_pct, 1),
                "top": [[n, round(p, 1)] for n, p in self.top]}


class Window:
    """Brackets a step: ``w = Window(); ...; load = w.stop()``.

    ``extra`` names processes that count as ours although they are not the bench's
    descendants (called at start and at stop, so that processes started meanwhile count).
    """

    def __init__(self, extra: Callable[[], Iterable[int]] | None = None) -> None:
        self.extra = extra
        self.t0 = time.monotonic()
        self.cores0 = core_times()
        self.procs0 = processes()
        self.ours0 = self._ours(self.procs0)
        self.children0 = _children_cpu()

    def _ours(self, procs: dict[int, Proc]) -> set[int]:
        roots = [os.getpid(), *(self.extra() if self.extra else ())]
        ours = _descendants(procs, roots)
        ours.update(pid for pid, p in procs.items() if p.comm.startswith("ksoftirqd"))
        return ours

    def stop(self) -> Load:
        procs1 = processes()
        cores1 = core_times()
        children1 = _children_cpu()
        seconds = max(time.monotonic() - self.t0, 1e-9)
        ours1 = self._ours(procs1) | {p for p in self.ours0 if p in procs1
                                     and procs1[p].start == self.procs0[p].start}
        ours_cpu = children1 - self.children0  # ours reaped during the window, whole lives
        deltas: dict[int, float] = {}
        for pid, p in procs1.items():
            before = self.procs0.get(pid)
            d = p.cpu - (before.cpu if before is not None and before.start == p.start else 0.0)
            if pid in ours1:
                ours_cpu += d
            else:
                deltas[pid] = d
        me = os.getpid()
        for pid in self.ours0:  # our child reaped meanwhile: RUSAGE_CHILDREN has its whole life
            p0 = self.procs0[pid]
            p1 = procs1.get(pid)
            if p0.ppid == me and (p1 is None or p1.start != p0.start):
                ours_cpu -= p0.cpu
        busy = sum(cores1[c][0] - self.cores0[c][0] for c in cores1 if c in self.cores0) / CLK
        steal = {}
        for c in cores1:
            if c in self.cores0:
                total = cores1[c][2] - self.cores0[c][2]
                steal[c] = 100 * (cores1[c][1] - self.cores0[c][1]) / total if total else 0.0
        by_name: dict[str, float] = {}
        for pid, d in deltas.items():
            if d > 0:
                name = procs1[pid].comm
                by_name[name] = by_name.get(name, 0.0) + d
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:5]
        return Load(seconds=seconds,
                    other_pct=max(0.0, 100 * (busy - ours_cpu) / seconds),
                    steal_pct=steal,
                    ours_pct=100 * ours_cpu / seconds,
                    top=[(n, 100 * d / seconds) for n, d in top if 100 * d / seconds >= 0.5])


def wait_quiet(max_other: float = MAX_OTHER_PCT, max_steal: float = MAX_STEAL_PCT,
               timeout: float = 60.0, window: float = 2.0, needed: int = 2,
               extra: Callable[[], Iterable[int]] | None = None) -> tuple[float, Load]:
    """Wait until ``needed`` windows in a row were quiet, at most ``timeout`` seconds.

    Returns the seconds waited and the last window's load (quiet or not: the caller decides
    whether to run anyway and flag the step).
    """
    t0 = time.monotonic()
    streak = 0
    load = Load()
    while True:
        w = Window(extra)
        time.sleep(window)
        load = w.stop()
        streak = streak + 1 if not load.disturbed(max_other, max_steal) else 0
        if streak >= needed or time.monotonic() - t0 + window > timeout:
            return time.monotonic() - t0, load
