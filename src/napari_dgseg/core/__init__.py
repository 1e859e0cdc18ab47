"""Pure compute for napari-dgseg: never imports napari, Qt or magicgui (tests assert it)."""
