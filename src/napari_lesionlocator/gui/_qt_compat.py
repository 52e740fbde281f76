"""Work around a reference-counting bug of PySide6 6.12.0 on Python < 3.12.

PySide6/shiboken6 6.12.0 drops one reference to ``None`` on every call of a void Qt method from
Python (``QLabel.setText``, ``QWidget.update``, ``QApplication.processEvents``...) and one to
``True``/``False`` on every Python-side ``Signal.emit``. On Python 3.12+ these objects are
immortal and nothing happens; on 3.11 their count reaches zero after some tens of thousands of
calls (a few napari viewers) and the interpreter aborts with "Fatal Python error: none_dealloc:
deallocating None". Measured here: ``QLabel().setText("x")`` 1000 times lowers ``sys.getrefcount(None)``
by exactly 1000.

The guard gives those three singletons a very large extra count, which makes them effectively
immortal, exactly what Python 3.12 does. It does nothing on other PySide6 versions or on
Python >= 3.12. The proper fix is a PySide6 version without the bug (pin ``PySide6 < 6.12``).
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["guard_pyside_refcount_bug", "pyside_has_refcount_bug"]

_EXTRA_REFS = 1 << 40
_guarded = False


def pyside_has_refcount_bug() -> bool:
    """True for PySide6 6.12.0 on Python < 3.12 (the affected combination)."""
    if sys.version_info >= (3, 12):
        return False
    module = sys.modules.get("PySide6")
    if module is None:
        try:
            import qtpy

            if qtpy.API_NAME != "PySide6":
                return False
            import PySide6 as module
        except ImportError:
            return False
    return str(getattr(module, "__version__", "")).startswith("6.12.0")


def guard_pyside_refcount_bug() -> bool:
    """Make None/True/False effectively immortal when the buggy PySide6 is in use; returns whether it did."""
    global _guarded
    if _guarded or not pyside_has_refcount_bug():
        return _guarded
    for obj in (None, True, False):
        # ob_refcnt is the first field of every CPython object header.
        ctypes.c_ssize_t.from_address(id(obj)).value += _EXTRA_REFS
    _guarded = True
    return True
