"""
Which flows changed, told by the kernel (Linux inotify), so that the
periodic looks at every flow's flow.yaml (the schedules' rescan, the
flows' limits) cost nothing while nothing changes: a thousand C{stat}
calls a second are what a server with a thousand idle schedules would
otherwise spend most of its time on.

L{FlowsWatch} watches the flows root (entries made, removed, renamed) and
each flow directory in it (its C{flow.yaml} and C{flow.sh} written,
replaced, removed, their mode changed).  Each event that concerns a flow
gives it a new serial number; L{FlowsWatch.changed_since} answers which
flows changed after a serial a caller noted.  Whatever the watch cannot
vouch for is always in the answer: flows whose directory could not be
watched (the kernel's limit of watches) and flows whose flow.yaml is a
symbolic link (its target may change without an event here).  When the
watch cannot tell at all (no inotify, the root itself removed or moved,
events lost by the kernel) the answer is None: look at every flow.

Events are hints read on the reactor, never decisions: callers read
flow.yaml itself (cached by stat) for the flows named.  Nothing here
raises into the reactor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct

from twisted.logger import Logger

from maxq.model import valid_name

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

ENTRIES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB
ROOT_MASK = ENTRIES | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
FLOW_MASK = ENTRIES | IN_MODIFY | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
# The files of a flow directory whose changes concern the server.
FLOW_FILES = (b"flow.yaml", b"flow.sh")
_EVENT = struct.Struct("iIII")


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch, libc.inotify_rm_watch
    except (OSError, AttributeError):
        return None
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


class FlowsWatch:
    """
    The changes of the flows under C{root} since a serial (see the module
    docstring).  L{start} on a reactor; until then, and when it fails,
    L{changed_since} answers None.
    """

    log = Logger()

    def __init__(self, root: str):
        self.root = os.fsencode(root)
        self.serial = 0
        self._fd: int | None = None
        self._libc = None
        self._reactor = None
        self._buffer = b""
        # wd -> flow names it watches (one directory may have two names).
        self._wds: dict[int, set[str]] = {}
        self._names: dict[str, int] = {}
        self._root_wd: int | None = None
        # flow -> serial of its last change
        self._touched: dict[str, int] = {}
        # Answered as changed every time (see the module docstring).
        self._unwatched: set[str] = set()
        self._linked: set[str] = set()
        # Serial before which nothing can be told (events were lost).
        self._lost_before = 0

    @property
    def active(self) -> bool:
        return self._fd is not None

    def start(self, reactor) -> bool:
        """
        Watch the root and each directory in it; False (and the callers
        look at every flow) when inotify cannot be used here.
        """
        libc = _libc()
        if libc is None:
            return False
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            self.log.info("no inotify ({error}): flows are looked at by stat",
                          error=os.strerror(ctypes.get_errno()))
            return False
        self._libc, self._fd, self._reactor = libc, fd, reactor
        wd = libc.inotify_add_watch(fd, self.root, ROOT_MASK)
        if wd < 0:
            self.stop()
            return False
        self._root_wd = wd
        # Serials noted before now tell nothing: what changed before the
        # watch began was not seen.
        self._lost()
        self._watch_all()
        reactor.addReader(self)
        return True

    def stop(self) -> None:
        if self._fd is None:
            return
        if self._reactor is not None:
            self._reactor.removeReader(self)
        os.close(self._fd)
        self._fd = None
        self._wds.clear()
        self._names.clear()

    def changed_since(self, serial: int) -> set[str] | None:
        """
        The flows that may have changed after C{serial} (a value of
        L{serial} noted before), or None: any may have.
        """
        if self._fd is None or serial < self._lost_before:
            return None
        found = set(self._unwatched) | self._linked
        if serial < self.serial:
            found.update(n for n, s in self._touched.items() if s > serial)
        return found

    # --------------------------------------------------------------- watches

    def _watch_all(self) -> None:
        try:
            names = os.listdir(self.root)
        except OSError:
            names = []
        for raw in names:
            self._watch(raw)

    def _watch(self, raw: bytes) -> None:
        name = os.fsdecode(raw)
        if not valid_name(name):
            return
        self._forget(name)
        path = os.path.join(self.root, raw)
        wd = self._libc.inotify_add_watch(self._fd, path, FLOW_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSPC, errno.ENOMEM):
                # Out of watches: this flow is looked at by stat each time.
                self._unwatched.add(name)
            return
        self._wds.setdefault(wd, set()).add(name)
        self._names[name] = wd
        self._check_link(name)

    def _forget(self, name: str) -> None:
        self._unwatched.discard(name)
        self._linked.discard(name)
        wd = self._names.pop(name, None)
        if wd is None:
            return
        names = self._wds.get(wd)
        if names is not None:
            names.discard(name)
            if not names:
                del self._wds[wd]
                self._libc.inotify_rm_watch(self._fd, wd)

    def _check_link(self, name: str) -> None:
        if os.path.islink(os.path.join(self.root, os.fsencode(name), b"flow.yaml")):
            self._linked.add(name)
        else:
            self._linked.discard(name)

    def _touch(self, name: str) -> None:
        self.serial += 1
        self._touched[name] = self.serial

    def _lost(self) -> None:
        self.serial += 1
        self._lost_before = self.serial

    # ---------------------------------------------------- IReadDescriptor

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def logPrefix(self) -> str:
        return "FlowsWatch"

    def connectionLost(self, reason) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def doRead(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            self.log.warn("flows watch stopped ({error}): flows are looked at by stat",
                          error=e)
            self._lost()
            self.stop()
            return
        self._buffer += data
        buffer, at = self._buffer, 0
        while len(buffer) - at >= _EVENT.size:
            wd, mask, _cookie, size = _EVENT.unpack_from(buffer, at)
            if len(buffer) - at < _EVENT.size + size:
                break
            name = buffer[at + _EVENT.size:at + _EVENT.size + size].rstrip(b"\0")
            at += _EVENT.size + size
            try:
                self._event(wd, mask, name)
            except Exception:
                self.log.failure("flows watch event")
                self._lost()
        self._buffer = buffer[at:]

    def _event(self, wd: int, mask: int, name: bytes) -> None:
        if mask & IN_Q_OVERFLOW:
            # The kernel dropped events: nothing can be told of what
            # happened meanwhile; watch every directory afresh.
            self._lost()
            self._watch_all()
            return
        if wd == self._root_wd:
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED):
                self.log.warn("the flows root was removed or moved: flows are looked at "
                              "by stat")
                self._lost()
                self.stop()
                return
            flow = os.fsdecode(name)
            if not valid_name(flow):
                return
            if mask & (IN_DELETE | IN_MOVED_FROM):
                self._forget(flow)
            elif mask & (IN_CREATE | IN_MOVED_TO | IN_ATTRIB):
                self._watch(name)
            self._touch(flow)
            return
        flows = self._wds.get(wd)
        if not flows:
            return
        if mask & IN_IGNORED:
            # The directory is gone (or its watch was removed).
            self._wds.pop(wd, None)
            for flow in flows:
                if self._names.get(flow) == wd:
                    del self._names[flow]
                self._touch(flow)
            return
        if name and name not in FLOW_FILES:
            return
        for flow in list(flows):
            if name == b"flow.yaml":
                self._check_link(flow)
            self._touch(flow)
