"""``Session``: one watched training run, framework-agnostic; owns the settings, the step protocol
(begin, before backward, end), input discovery, replays, evaluation hand-off, emission and checkpoint
state. The adapters translate their framework's hooks into its calls."""
