"""Synthetic faces in the real datasets' formats: latent attributes, geometry, the renderer and the writers."""
