"""Judging: the figures of a logging step against thresholds and the reference (``Evaluator``), the rule
families (per tensor, across depth, inputs, model checks, overflow), alerts and their state over training,
and grouping alerts for people. Builds on ``collect`` and ``stats``; writes nothing."""
