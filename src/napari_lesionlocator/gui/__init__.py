"""napari side of the package: the only layer that imports napari and Qt (see the top-level docstring).

Modules: ``_reader``/``_writer``/``_sample_data`` (npe2 contributions), ``prompt_widget``,
``timeline_widget``, ``review_widget`` (dock widgets), ``screenshot`` (headless rendering).
"""

from ._qt_compat import guard_pyside_refcount_bug

# PySide6 6.12.0 on Python 3.11 under-counts references to None/True/False and aborts the
# interpreter after a while; see _qt_compat. A no-op with any other Qt binding or Python version.
guard_pyside_refcount_bug()
