"""Many hosts on one machine: Linux network namespaces on a private bridge.

A ``Lab`` creates one bridge in the root namespace and N namespaces, each joined to the
bridge by a veth pair whose inner end is ``eth0`` with an address in ``10.77.0.0/24``
(only ever configured inside the namespaces). The bridge has no address, IPv6 is off on
every interface the lab creates, and no namespace has a default route, so nothing sent
inside a lab can leave it: traffic stays between the namespaces (or on their own
loopback). Multicast is routed out of ``eth0`` so mDNS works as on a LAN (recipe in
ARCHITECTURE.md, "Testing on one machine as if on many").

Faults the kernel here can make without ``tc netem`` or iptables:

- ``link_down(ns)`` / ``link_up(ns)``: carrier loss on the namespace's cable (the host
  end of its veth goes down), a partition of that namespace from all others. Addresses
  and routes inside the namespace stay, so healing is just ``link_up``.
- ``block_multicast(ns)``: multicast neither leaves nor reaches the namespace while
  unicast still works (a LAN where mDNS is filtered; peers must use ``--join``). Each
  end of its cable drops IPv4 multicast on egress with tc (htb + u32 + a zero-length
  pfifo; this kernel has no tc actions), and the bridge port stops flooding multicast
  to it. Measured here, neither deleting the namespace's 224.0.0.0/4 route nor
  ``ip link set eth0 multicast off`` (nor both) stops anything: a socket that names its
  interface with ``IP_MULTICAST_IF``, as zeroconf's do, skips the route lookup, and the
  flag does not gate sending or receiving on a veth.

Names carry the creating process id (``mt<pid>-<k>b`` for the bridge, ``...v<i>`` for
host veth ends, ``...n<i>`` for namespaces), which keeps concurrent runs apart, fits
the 15-character interface-name limit, and lets a later run recognise and remove what a
crashed run left behind (its pid no longer exists). Teardown runs on ``close()``, on
leaving the ``with`` block, and at interpreter exit, whichever comes first; it never
raises half way, so one stuck interface cannot leave the rest behind.

Use::

    with Lab(3) as lab:
        p = lab[0].popen([sys.executable, "-c", "..."], stdout=subprocess.PIPE)
        lab[1].run(["ping", "-c1", lab[0].ip])
        lab.link_down(lab[2])

or the ``netns_lab`` pytest fixture at the end (``make(n) -> Lab``).
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Self

import pytest

PREFIX = "mt"  # every name a lab creates starts with this
SUBNET = "10.77.0"  # /24 used inside the namespaces only
IFNAME_MAX = 15  # Linux IFNAMSIZ - 1
_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)[bvn]\d*$")

_counter = itertools.count()
_open_labs: set[Lab] = set()
_lock = threading.Lock()


class NetnsError(RuntimeError):
    """A namespace command failed (stderr included)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _sh(["ip", *args], check=check)


def _sh(cmd: list[str], *, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_names() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names() -> list[str]:
    out = _ip("-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        # "12: mt123-0v1@if2: <...>" ; the part after '@' is the peer's index
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _kill_netns_processes(ns: str) -> None:
    """SIGKILL every process still inside namespace ``ns`` (test processes of this lab)."""
    out = _ip("netns", "pids", ns, check=False).stdout
    for tok in out.split():
        try:
            os.kill(int(tok), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def leftovers(*, only_dead: bool = True) -> tuple[list[str], list[str]]:
    """Namespaces and links named like a lab's; with ``only_dead`` only those of runs whose
    creating process no longer exists (so a concurrent run's lab is never touched)."""

    def stale(name: str) -> bool:
        m = _NAME.match(name)
        return bool(m) and (not only_dead or not _pid_alive(int(m.group(1))))

    return [n for n in _netns_names() if stale(n)], [n for n in _link_names() if stale(n)]


def owned_by_this_process() -> tuple[list[str], list[str]]:
    """Namespaces and links named with this process's pid (for "nothing left" asserts)."""
    mine = re.compile(rf"^{PREFIX}{os.getpid()}-\d+[bvn]\d*$")
    return [n for n in _netns_names() if mine.match(n)], [n for n in _link_names() if mine.match(n)]


def clean_leftovers() -> list[str]:
    """Remove what crashed runs left behind; returns the names removed."""
    namespaces, links = leftovers(only_dead=True)
    for ns in namespaces:
        _kill_netns_processes(ns)
        _ip("netns", "del", ns, check=False)
    for link in links:
        _ip("link", "del", link, check=False)
    return namespaces + links


@dataclass
class Namespace:
    """One simulated host: a network namespace with ``eth0`` at ``ip``."""

    name: str  # the netns name
    veth: str  # host end of its cable (a port of the lab's bridge)
    ip: str  # its address on the lab subnet
    index: int
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def argv(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: list[str], *, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
        return _sh(self.argv(cmd), check=check, timeout=timeout)

    def popen(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        """Start ``cmd`` inside the namespace; the lab kills it on teardown if still running."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.argv(cmd), **kwargs)
        self._procs.append(proc)
        return proc

    def call(self, fn, *args, timeout: float = 60):
        """Run ``fn(*args)`` in a new thread that has joined this namespace; return its
        result or raise its exception. Network namespaces are per thread in Linux, so
        sockets made in that thread (and threads it starts) live in the namespace while
        the rest of the process stays where it is. ``ns.call(asyncio.run, main())``
        runs an event loop there: in-process tests of real multi-host networking."""
        box: dict = {}

        def target() -> None:
            try:
                _setns(self.name)
                box["value"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                box["error"] = e

        t = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise TimeoutError(f"{fn!r} still running in {self.name} after {timeout} s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def stop_processes(self, *, grace_s: float = 2.0) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        # anything a child left running in the namespace (grandchildren)
        _kill_netns_processes(self.name)


class Lab:
    """A bridge and namespaces joined to it; see the module docstring."""

    def __init__(self, n: int = 0, *, subnet: str = SUBNET) -> None:
        clean_leftovers()
        k = next(_counter)
        self.tag = f"{PREFIX}{os.getpid()}-{k}"
        self.bridge = f"{self.tag}b"
        self.subnet = subnet
        self.namespaces: list[Namespace] = []
        self._closed = False
        if len(f"{self.tag}v254") > IFNAME_MAX:
            raise NetnsError(f"lab tag {self.tag!r} too long for interface names")
        with _lock:
            _open_labs.add(self)
        try:
            _ip("link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0")
            _no_ipv6(self.bridge)
            _ip("link", "set", self.bridge, "up")
            for _ in range(n):
                self.add()
        except BaseException:
            self.close()
            raise

    def add(self) -> Namespace:
        i = len(self.namespaces) + 1
        if i > 254:
            raise NetnsError("a lab holds at most 254 namespaces")
        ns = Namespace(name=f"{self.tag}n{i}", veth=f"{self.tag}v{i}", ip=f"{self.subnet}.{i}", index=i)
        self.namespaces.append(ns)  # before creating, so close() removes a half-made one
        _ip("netns", "add", ns.name)
        # IPv6 off inside first, so eth0 never gets a link-local address or sends DAD/RS
        ns.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        _ip("link", "add", ns.veth, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        _no_ipv6(ns.veth)
        _ip("link", "set", ns.veth, "master", self.bridge, "up")
        ns.run(["ip", "addr", "add", f"{ns.ip}/24", "dev", "eth0"])
        ns.run(["ip", "link", "set", "eth0", "up"])
        ns.run(["ip", "link", "set", "lo", "up"])
        ns.run(["ip", "route", "add", "224.0.0.0/4", "dev", "eth0"])
        return ns

    def __getitem__(self, i: int) -> Namespace:
        return self.namespaces[i]

    def __len__(self) -> int:
        return len(self.namespaces)

    def __iter__(self):
        return iter(self.namespaces)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- faults ------------------------------------------------------------------------

    def link_down(self, ns: Namespace) -> None:
        """Cut ``ns`` off from every other namespace (its cable is unplugged)."""
        _ip("link", "set", ns.veth, "down")

    def link_up(self, ns: Namespace) -> None:
        _ip("link", "set", ns.veth, "up")

    def block_multicast(self, ns: Namespace) -> None:
        """Drop all IPv4 multicast to and from ``ns``; unicast keeps working."""
        _drop_multicast_on_egress(ns.argv, "eth0")  # what the namespace sends
        _drop_multicast_on_egress(lambda cmd: cmd, ns.veth)  # what the bridge hands it
        _sh(["bridge", "link", "set", "dev", ns.veth, "mcast_flood", "off"])

    def unblock_multicast(self, ns: Namespace) -> None:
        _sh(ns.argv(["tc", "qdisc", "del", "dev", "eth0", "root"]), check=False)
        _sh(["tc", "qdisc", "del", "dev", ns.veth, "root"], check=False)
        _sh(["bridge", "link", "set", "dev", ns.veth, "mcast_flood", "on"], check=False)

    # -- teardown ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the lab's processes and remove every namespace, veth and the bridge.

        Idempotent; each step is attempted even if an earlier one failed."""
        if self._closed:
            return
        self._closed = True
        for ns in self.namespaces:
            try:
                ns.stop_processes()
            except Exception as e:  # noqa: BLE001 - teardown must reach the deletes below
                print(f"netns: stopping processes in {ns.name} failed: {e!r}", file=sys.stderr)
        for ns in self.namespaces:
            _ip("netns", "del", ns.name, check=False)  # takes eth0 and so the veth pair
            _ip("link", "del", ns.veth, check=False)  # in case the namespace never got it
        _ip("link", "del", self.bridge, check=False)
        with _lock:
            _open_labs.discard(self)


_CLONE_NEWNET = 0x40000000


def _setns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (os.setns is 3.12+)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _drop_multicast_on_egress(argv, dev: str) -> None:
    """Send IPv4 multicast leaving ``dev`` to a class whose queue holds nothing.

    This kernel has no tc actions (``action drop`` fails to load) and no prio qdisc, but
    has htb, u32 and pfifo: an htb root (unclassified traffic passes unshaped), a class
    for 224.0.0.0/4 with a ``pfifo limit 0`` leaf drops exactly the multicast."""
    for cmd in (
        ["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb"],
        ["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", "8bit"],
        ["tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "pfifo", "limit", "0"],
        ["tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
         "u32", "match", "ip", "dst", "224.0.0.0/4", "flowid", "1:1"],
    ):
        _sh(argv(cmd))


def _no_ipv6(ifname: str) -> None:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("1")
    except FileNotFoundError:  # kernel without IPv6
        pass


@atexit.register
def _close_all() -> None:
    with _lock:
        labs = list(_open_labs)
    for lab in labs:
        lab.close()


def available() -> str | None:
    """None when labs can be made here, else why not (for a clear failure, not a skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if _sh(["ip", "netns", "list"], check=False).returncode != 0:
        return "`ip netns` does not work here"
    return None


def netns_lab_fixture():
    """Body of a lab fixture: yields ``make(n) -> Lab``; every lab made is closed
    afterwards, pass or fail, and nothing named for this process may remain. Use the
    ``netns_lab`` fixture below, or ``yield from netns_lab_fixture()`` in your own."""
    labs: list[Lab] = []

    def make(n: int = 0) -> Lab:
        lab = Lab(n)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()
    namespaces, links = owned_by_this_process()
    assert not namespaces and not links, f"lab teardown left {namespaces + links}"


@pytest.fixture
def netns_lab():
    """``make(n) -> Lab``, torn down after the test. Fails (never skips) where namespaces
    cannot be made. In a test module: ``netns_lab = netns.netns_lab``."""
    why_not = available()
    assert why_not is None, f"this test needs network namespaces: {why_not}"
    yield from netns_lab_fixture()
