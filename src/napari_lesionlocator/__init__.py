"""napari-lesionlocator: interactive lesion annotation and longitudinal tracking in CT.

The package is layered (imports go one way only): ``gui`` -> ``api`` -> ``engines`` -> ``io`` -> ``core``.
Importing the package itself stays light: no Qt, napari or torch.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
