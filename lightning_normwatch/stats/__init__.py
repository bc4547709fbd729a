"""Pure math, no hooks and no judgement: moments and their exact merge, normality tests, shared histogram
bins, drift figures against a reference, per-feature drift tests, the packed block layout, and the
figures of one tensor (``TensorStats`` -> ``figures``). Imports nothing else of the package but ``config``."""
