"""Compression of trained detectors: pruning (unstructured masks, structured channels) and the
child runs it makes."""
