"""Pure core: geometry, images and label maps, prompts, measurements. No Qt, napari or torch."""
