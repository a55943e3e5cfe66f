"""The adapters: :mod:`.optuna` and :mod:`.ray_tune` drive the one trial (:mod:`.trial`) over the
one search space (:mod:`.space`). Importing any of them never needs Optuna or Ray."""
