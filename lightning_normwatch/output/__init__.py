"""Writing what was found: console lines and the end-of-fit summary, scalars to any logger, TensorBoard
panels (histograms, custom scalars, alert and watched-tensor text), overview images, figures, and the tag
names (``tags``) that ``view`` reads back. Builds on ``judge``, ``collect`` and ``stats``."""
