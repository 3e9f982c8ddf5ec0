"""Bounded work before trust: a torch file is measured before ``torch.load`` reads it.

A few hundred hostile bytes can ask an unpickler for gigabytes (``bytearray(10**10)``) or for hours (hashing a
tuple whose items share one another 2**40 times), and a small zip record can inflate a thousandfold. So the
zip directory's sizes are checked, then the pickle's opcodes are followed without building anything. A
refusal costs about what the file weighs.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import zipfile
from pathlib import Path

from sslkit.errors import UsageError


# torch.save stores its zip records uncompressed, so a checkpoint's records add up to its own size; the slack
# lets a re-zipped (deflated) file through, since weights compress by 2x at most while zeros compress 1000x
ZIP_INFLATION, ZIP_SLACK = 2, 64 << 20
# values that torch's unpickler may visit through shared (memo) references, hashing keys or filling sets:
# well under a second of work; real checkpoints share a few values per tensor
MAX_PICKLE_WORK = 10_000_000
LEGACY_PICKLES = 5  # the pre-zip format: magic number, protocol, system info, the object, storage keys
_GETS = ("GET", "BINGET", "LONG_BINGET")
_TUPLES = ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE")
_FILLS = ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS")
_CONTAINERS_MADE = ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "LIST", "DICT", "FROZENSET")
# opcodes that push one number, string or constant and take nothing: most of a pickle, the scan's fast path
_PUSHES = frozenset(op.name for op in pickletools.opcodes if not op.stack_before and len(op.stack_after) == 1
                    and op.stack_after[0] is not pickletools.markobject) - {
    "GLOBAL", "EXT1", "EXT2", "EXT4", *_GETS, *_TUPLES, *_CONTAINERS_MADE}


def check_torch_file(path: Path) -> None:
    """Refuse a file that is not a regular file, whose zip records would inflate far beyond its size, or whose
    pickle makes calls that allocate what the file asks or shares values past :data:`MAX_PICKLE_WORK`."""
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file (a pipe, socket or device is never read as a model)")
    with open(path, "rb") as file:
        if file.read(4) != b"PK\x03\x04":  # torch's own test for its zip format
            file.seek(0)
            for _ in range(LEGACY_PICKLES):
                if not file.peek(1):  # fewer pickles: torch refuses the file itself
                    break
                _scan_pickle(path, file)
            return
    _scan_pickle(path, io.BytesIO(_zip_pickle(path)))


def _zip_pickle(path: Path) -> bytes:
    """The pickle of a zip-format torch file, read once the zip directory says that every record together
    inflates to at most ZIP_INFLATION x the file's size + ZIP_SLACK (torch's reader inflates a record at once)."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            inflated, size = sum(r.file_size for r in records), path.stat().st_size
            if inflated > ZIP_INFLATION * size + ZIP_SLACK:
                raise UsageError(f"{path}: its zip records inflate to {inflated:,} bytes from a {size:,}-byte file "
                                 "(a zip bomb?); torch.save stores records uncompressed, so sslkit refuses it unread")
            names = {r.filename.lower() for r in records}  # torch's reader finds names ignoring case
            if len(names) < len(records):
                raise UsageError(f"{path}: its zip holds two records of one name, which readers may resolve "
                                 "differently; sslkit refuses it unread")
            return archive.read(records[0].filename.split("/")[0] + "/data.pkl")  # torch's prefix: the first's
    except UsageError:
        raise
    except Exception as error:  # a broken zip, or one without data.pkl
        raise UsageError(f"cannot read {path} as a weights-only PyTorch file ({error})") from None


class _Shadow:
    """What the pickle scan knows of a value on the unpickler's stack: the global it names, the items of a
    tuple (None for anything else), and its weight: the values that hashing or walking it visits, each shared
    reference counted again."""

    __slots__ = ("name", "items", "weight")

    def __init__(self, name: str | None = None, items: tuple | None = None, weight: int = 1):
        self.name, self.items, self.weight = name, items, weight


_SCALAR = _Shadow()  # every number, string and other value the scan need not tell apart; never changed


def _scan_pickle(path: Path, stream) -> None:
    """Follow the unpickler's stack through one pickle's opcodes (pickletools knows each one's stack effect),
    building nothing: refuse the calls of :func:`_check_call`, and sharing past MAX_PICKLE_WORK."""
    stack, marks, memo, work = [], [], {}, 0
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in _PUSHES:
                stack.append(_SCALAR)
            elif op.name == "MARK":
                marks.append(len(stack))
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if arg is None else arg] = stack[-1]
            elif op.name in _GETS:
                stack.append(memo[arg])
                work += memo[arg].weight
            else:
                _step(path, op, arg, stack, marks)
            if work > MAX_PICKLE_WORK:
                raise UsageError(f"{path}: its pickle shares values so that reading it would visit more than "
                                 f"{MAX_PICKLE_WORK:,} of them (a few bytes can describe 2**40); sslkit refuses "
                                 "it unread")
    except (ValueError, IndexError, KeyError) as error:
        raise UsageError(f"cannot read {path} as a weights-only PyTorch file (a broken pickle: {error})") from None


def _step(path: Path, op, arg, stack: list, marks: list) -> None:
    """One opcode's effect on the scan's stack."""
    before, items = op.stack_before, []
    if pickletools.markobject in before:
        items = stack[marks.pop():]
        del stack[len(stack) - len(items):]
        before = before[:before.index(pickletools.markobject)]
    if len(stack) < len(before):
        raise IndexError(f"{op.name} on a stack of {len(stack)}")
    taken = stack[len(stack) - len(before):] if before else []
    del stack[len(stack) - len(taken):]
    if op.name == "GLOBAL":
        value = _Shadow(name=_global_name(*arg.split(" ", 1)))
    elif op.name in ("REDUCE", "NEWOBJ"):
        _check_call(path, *taken)
        value = _Shadow(weight=taken[1].weight)  # what a call makes is at most as heavy as its arguments
    elif op.name in _TUPLES:
        parts = tuple(items or taken)
        value = _Shadow(items=parts, weight=1 + sum(p.weight for p in parts))
    elif op.name in _FILLS or op.name == "BUILD":
        value = taken[0]
        if op.name != "BUILD" and value is not _SCALAR:
            value.weight += sum(p.weight for p in taken[1:] + items)
    elif op.name in _CONTAINERS_MADE:
        value = _Shadow(weight=1 + sum(p.weight for p in items))
    else:
        value = _SCALAR
    stack.extend([value] * len(op.stack_after))


def _global_name(module: str, name: str) -> str:
    """A pickled global's name as the unpickler resolves it: protocol 2 writes Python 2's (__builtin__...)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _check_call(path: Path, func: _Shadow, args: _Shadow) -> None:
    """Refuse the calls that torch's weights-only unpickler allows by default but that allocate what the file
    asks: tensor and storage classes (``torch.Tensor(10**10)``, or of a nested list sharing 2**30 items),
    ``bytearray`` of a size, ``_rebuild_from_type_v2`` of anything but a tensor rebuild function, and any call
    of computed arguments. torch.save writes none of them."""
    name = func.name or "a computed value"
    if args.items is None:
        refused = f"{name} with computed arguments"
    elif name.endswith(("Tensor", "Storage")) or (name == "builtins.bytearray" and len(args.items) == 1):
        refused = f"{name} of a size or sequence"
    elif name == "torch._tensor._rebuild_from_type_v2":
        inner = (args.items[0].name if args.items else None) or "a value"
        if inner.startswith("torch._utils._rebuild_"):
            return
        refused = f"{name} of {inner}"
    else:
        return
    raise UsageError(f"{path}: its pickle calls {refused}, which can allocate whatever the file asks; torch.save "
                     "never writes such a call, so sslkit refuses the file unread")
