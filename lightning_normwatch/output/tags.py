"""The names NormWatch writes under, in one place: what ``view/`` (``normwatch report``, the TensorBoard
plugin) reads back. Pure constants: importing this module imports neither torch nor Lightning.

Example:
    >>> ALERT_TAG, f"{SCALAR_PREFIX}net.1/std"
    ('normwatch/alerts', 'normwatch/net.1/std')
"""

from __future__ import annotations

__all__ = [
    "SCALAR_PREFIX",
    "ALERT_TAG",
    "WATCHED_TAG",
    "OVERVIEW_TAG",
    "FIGURE_TAG",
    "ALERT_COLUMNS",
    "OLD_ALERT_COLUMNS",
]

#: scalars are ``normwatch/<tensor>/<figure>``, histograms ``normwatch/<tensor>``
SCALAR_PREFIX = "normwatch/"
#: the alert table (Markdown text)
ALERT_TAG = "normwatch/alerts"
#: the watched tensors with their layer types (Markdown text)
WATCHED_TAG = "normwatch/watched"
#: the overview heatmaps (images ``normwatch/overview/<figure>``)
OVERVIEW_TAG = "normwatch/overview"
#: the group figures (images ``normwatch/figures/<group>``)
FIGURE_TAG = "normwatch/figures"
#: the columns of the alert table ("caused by": ``<kind> in <module>`` of the root alert a follower follows,
#: ``-`` for a root alert)
ALERT_COLUMNS = ("step", "module", "kind", "severity", "value", "threshold", "caused by", "message")
#: the columns of alert tables written before root alerts existed (every alert read as a root)
OLD_ALERT_COLUMNS = ("step", "module", "kind", "severity", "value", "threshold", "message")
