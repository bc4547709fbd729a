"""A compiled CRC32C for TensorBoard's event files, where one is installed (the bytes stay the same).

torch's ``SummaryWriter`` (hence Lightning's ``TensorBoardLogger``) writes events through
TensorBoard's ``RecordWriter`` (``tensorboard/summary/writer/record_writer.py``), which frames each
record with two masked CRC32C checksums from ``masked_crc32c`` of
``tensorboard.compat.tensorflow_stub.pywrap_tensorflow``: a loop over every byte in Python, about
0.4 ms per KiB, on TensorBoard's writer thread, holding the GIL the training thread needs (about
30 ms per logging step of a 50-tensor transformer). With ``google-crc32c`` (a requirement; its C
implementation) the same checksums cost microseconds.

TensorBoard offers no setting for this: ``RecordWriter.write`` looks ``masked_crc32c`` up among its
module's globals at every call, and constructs nothing we could pass a checksum to (the
``EventFileWriter`` builds it privately). So ``install()`` replaces that one module attribute by a
function giving the same value for every input (checked on test vectors before installing), and
only while it is still TensorBoard's own function (someone else's replacement is left alone).
Installing twice changes nothing; ``uninstall()`` puts TensorBoard's function back. Without a
compiled CRC32C nothing is replaced. The event files are the same bytes either way
(``tests/test_checksum.py`` writes the same events both ways and compares the files).

Example:
    >>> from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference
    >>> masked_crc32c(b"normwatch") == reference(b"normwatch")
    True
    >>> install() == install()  # idempotent: the same answer, nothing replaced twice
    True
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

__all__ = ["compiled_crc32c", "masked_crc32c", "install", "uninstall", "installed"]

_MASK_DELTA = 0xA282EAD8
#: (data, CRC32C) pairs: RFC 3720's check value, and the empty string
_VECTORS = ((b"123456789", 0xE3069283), (b"", 0))


def _google() -> Callable[[bytes], int] | None:
    try:
        import google_crc32c
    except ImportError:
        return None
    # its pure-Python fallback is no faster than TensorBoard's own
    return google_crc32c.value if getattr(google_crc32c, "implementation", "") == "c" else None


def compiled_crc32c() -> Callable[[bytes], int] | None:
    """A compiled, correct CRC32C function of ``bytes``, or None when none is installed.

    Example:
        >>> crc = compiled_crc32c()
        >>> crc is None or crc(b"123456789") == 0xE3069283
        True
    """
    crc = _google()
    if crc is None or any(crc(data) != value for data, value in _VECTORS):
        return None
    return crc


def _record_writer() -> ModuleType:
    from tensorboard.summary.writer import record_writer

    return record_writer


def _reference() -> Callable[[bytes], int]:
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

    return pywrap_tensorflow.masked_crc32c


def masked_crc32c(data: bytes) -> int:
    """TensorBoard's masked CRC32C of ``data``, computed by the compiled CRC32C when there is one.

    Example:
        >>> hex(masked_crc32c(b"123456789"))
        '0xc78ab0e5'
    """
    if _CRC is None:
        return _reference()(data)
    x = _CRC(data)
    return (((x >> 15) | (x << 17)) + _MASK_DELTA) & 0xFFFFFFFF


_CRC = compiled_crc32c()


def installed() -> bool:
    """Whether TensorBoard's record writer currently uses this module's compiled checksum."""
    return _record_writer().masked_crc32c is masked_crc32c


def install() -> bool:
    """Make TensorBoard's record writer use the compiled CRC32C; True when it does (now or already).

    Returns False, replacing nothing, without a compiled CRC32C or when the record writer's
    checksum is neither TensorBoard's own nor ours (another library replaced it).
    """
    module = _record_writer()
    if module.masked_crc32c is masked_crc32c:
        return True
    if _CRC is None or module.masked_crc32c is not _reference():
        return False
    module.masked_crc32c = masked_crc32c
    return True


def uninstall() -> None:
    """Give TensorBoard's record writer its own checksum back (nothing if ours is not installed)."""
    module = _record_writer()
    if module.masked_crc32c is masked_crc32c:
        module.masked_crc32c = _reference()
