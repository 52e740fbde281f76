"""``python -m napari_lesionlocator.cli``: the ``lesionlocator`` command."""

import sys

from . import main

sys.exit(main())
