"""Synthetic data with exact ground truth (pure: numpy, scipy, SimpleITK; no Qt, napari or torch).

``sample.synthetic.make_synthetic_study(seed, size)`` renders a deterministic three-timepoint chest
CT study (analytic phantom in :mod:`.anatomy`, lesion models in :mod:`.lesions`, patient poses and
breathing in :mod:`.frames`).
"""
