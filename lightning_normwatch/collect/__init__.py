"""Collecting on logging steps: which modules and inputs are watched, forward hooks, bounded device-side
sampling, channel layout by module, the batched arithmetic into blocks, the one transfer (or DDP
collective) per logging step, and replaying a forward pass. Builds on ``stats``; knows nothing of alerts."""
