"""The demo model: a small DeepLab-v2-style net trained on procedurally generated scenes (not on real
photographs), so that the whole pipeline can be shown without downloading anything."""
