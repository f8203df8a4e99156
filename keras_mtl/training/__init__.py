"""The train step's engine: forward, gradients by balancer requirement, transactional commit.

- `step`: `train_step(model, data)`, `StepState`, the transactional `commit`.
- `gradients`: one function per balancer requirement (`LOSSES`,
  `LAYER_GRAD_NORMS`, `FEATURE_GRADS`, `SHARED_GRADS`), one signature.
- `auxiliary`: auxiliary objectives (the adversarial gradient discriminator).
- `fit`: `prepare` (what both fit loops do first) and the `StepGuard` callback.
- `replicas`: the cross-replica reductions.
"""

from keras_mtl.training.auxiliary import AdversarialDiscriminator
from keras_mtl.training.auxiliary import AuxiliaryObjective
from keras_mtl.training.fit import StepGuard
from keras_mtl.training.fit import prepare
from keras_mtl.training.step import StepState
from keras_mtl.training.step import test_step
from keras_mtl.training.step import train_step
