"""Geometry: rotations, cameras, the translation solve, full-precision products. Pure and jittable;
imports nothing else of the package."""
