"""Callbacks: balancer weight history, GradNorm-static weights, roaming plans, schedules,
and the records of a run (resumable CSV files, bounded checkpoints, a loss to monitor)."""

from keras_mtl.callbacks.roaming import MaximumRoaming

from keras_mtl.callbacks.history import BalancerHistory
from keras_mtl.callbacks.history import TaskNormalizedLoss
from keras_mtl.callbacks.history import mean_task_losses
from keras_mtl.callbacks.adversary import ReversalStrengthScheduler
from keras_mtl.callbacks.branch_temperature import BranchTemperature
from keras_mtl.callbacks.checkpoints import RotatingCheckpoint
from keras_mtl.callbacks.csv_history import CSVHistory
from keras_mtl.callbacks.normalized_loss import NormalizedLoss
from keras_mtl.callbacks.progress import ProgressLogger
from keras_mtl.callbacks.summaries import TaskWeightSummaries
