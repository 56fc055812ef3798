"""Dataset generation: the recipes (:mod:`~offrl.datagen.recipes`), behaviour policies
(:mod:`~offrl.datagen.policies`), rollouts (:mod:`~offrl.datagen.rollout`), the bundled datasets
(:mod:`~offrl.datagen.bundled`), the on-demand MuJoCo datasets (:mod:`~offrl.datagen.on_demand`), actor
export (:mod:`~offrl.datagen.export`) and datasets from training runs (:mod:`~offrl.datagen.from_run`),
all written through :mod:`~offrl.datagen.write`. ``offrl datasets make`` / ``export-actor`` run them.

Import the modules themselves; this package imports nothing, so ``offrl datasets`` stays fast.
"""
