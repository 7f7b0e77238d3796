"""Errors of the machine, not of a candidate: they stop a search instead of being recorded as trials.

A full disk, a storage that fails (SQLite I/O, a lost database server), a lost or broken GPU say
nothing about the architecture being tried: recording them as ``failed`` candidates would mark good
points bad and let one broken machine burn through the whole trial budget. The trial runner
re-raises them as :class:`InfrastructureError`; the search stops with :data:`EXIT_INFRASTRUCTURE`
and one line, the trial stays RUNNING in the study, and ``--resume`` (once the cause is fixed)
re-enqueues its point like that of any interrupted trial.

CUDA out of memory is *not* infrastructure: it is a property of the candidate (too large for the
device) and stays a failed trial.
"""

from __future__ import annotations

import errno

#: exit codes of ``repnas`` (docs/design.md, "Exit codes").
EXIT_OK = 0
EXIT_USAGE = 2  # bad input or a refused command; nothing was changed
EXIT_INFRASTRUCTURE = 3  # the machine failed (disk, storage, GPU, a worker died); --resume continues
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; --resume continues

_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE,
                   errno.ENFILE, errno.ESTALE}
_CUDA_WORDS = ("cuda error", "cudnn_status", "cublas_status", "device-side assert", "no cuda gpus",
               "cuda driver", "nccl error", "ecc error", "device not ready", "unspecified launch failure")


_WRITE_WORDS = ("pytorchstreamwriter failed", "file write failed", "inline_container.cc", "unexpected pos")


class InfrastructureError(RuntimeError):
    """The machine failed under a command (disk, storage, GPU); the message says which."""


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failure of the machine rather than of the input."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, InfrastructureError):
            return True
        if isinstance(exc, OSError) and exc.errno in _MACHINE_ERRNOS:
            return True
        if _is_storage_error(exc) or _is_cuda_error(exc) or _is_write_error(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe(exc: BaseException) -> str:
    """One line naming the failure: ``no space left on device: /path``, ``storage error: ...``."""
    if isinstance(exc, InfrastructureError):
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    inner = exc
    if isinstance(inner, OSError) and inner.errno is not None:
        where = f": {inner.filename}" if inner.filename else ""
        return f"{(inner.strerror or errno.errorcode.get(inner.errno, 'I/O error')).lower()}{where}"
    text = str(inner).strip().splitlines()
    message = text[0] if text else type(inner).__name__
    if _is_storage_error(inner):
        root = inner  # Optuna wraps SQLAlchemy wraps the driver: the innermost message says what failed
        for _ in range(10):
            if (root.__cause__ or root.__context__) is None:
                break
            root = root.__cause__ or root.__context__
        detail = (str(root).strip().splitlines() or [type(root).__name__])[0]
        return f"storage error ({type(root).__name__}: {detail[:200]})"
    if _is_write_error(inner):
        return f"no space left on device? torch could not write a file ({message[:160]})"
    if _is_cuda_error(inner):
        return f"GPU error ({message[:200]})"
    return message[:300]


def _is_storage_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    modules = {cls.__module__.split(".")[0] for cls in type(exc).__mro__}
    if "StorageInternalError" in names:
        return True
    return "sqlalchemy" in modules and bool(names & {"OperationalError", "DatabaseError", "InterfaceError"})


def _is_write_error(exc: BaseException) -> bool:
    """``torch.save`` on a full disk raises a RuntimeError from its zip writer, not an OSError
    (``[enforce fail at inline_container.cc] unexpected pos`` / ``PytorchStreamWriter failed``)."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _WRITE_WORDS)


def _is_cuda_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    if "out of memory" in text:
        return False  # a candidate too large for the device: a failed trial, not a broken machine
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "AcceleratorError" in names or (
        isinstance(exc, RuntimeError) and any(word in text for word in _CUDA_WORDS))
