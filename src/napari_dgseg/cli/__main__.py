import sys

from napari_dgseg.cli import main

sys.exit(main())
