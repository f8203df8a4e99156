"""Callbacks: balancer weight history, GradNorm-static weights, roaming plans, schedules."""

from keras_mtl.callbacks.roaming import MaximumRoaming

from keras_mtl.callbacks.history import BalancerHistory
from keras_mtl.callbacks.history import TaskNormalizedLoss
from keras_mtl.callbacks.history import mean_task_losses
from keras_mtl.callbacks.adversary import ReversalStrengthScheduler
