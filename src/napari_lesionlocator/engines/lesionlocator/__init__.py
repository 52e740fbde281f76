"""LesionLocator engine (nnU-Net v2 + uniGradICON); torch is imported lazily."""
