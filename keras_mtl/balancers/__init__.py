"""Balancers: how the T task losses (or gradients) become one update.

`get(identifier)` accepts a `Balancer` instance, a registered name
(`"gradnorm"`, `"equal"`, ...), a config dict `{"class_name": ..., "config": ...}`
or `None` (equal weights).
"""

import keras

from keras_mtl.balancers.base import FEATURE_GRADS
from keras_mtl.balancers.base import LAYER_GRAD_NORMS
from keras_mtl.balancers.base import LOSSES
from keras_mtl.balancers.base import SHARED_GRADS
from keras_mtl.balancers.base import Balancer
from keras_mtl.balancers.base import BalancerWarning
from keras_mtl.balancers.base import GradientBalancer
from keras_mtl.balancers.base import TrackedGradientBalancer
from keras_mtl.balancers.aligned_mtl import AlignedMTL
from keras_mtl.balancers.cagrad import CAGrad
from keras_mtl.balancers.db_mtl import DBMTL
from keras_mtl.balancers.dualproj import DualProj
from keras_mtl.balancers.equal import EqualWeights
from keras_mtl.balancers.dwa import DWA
from keras_mtl.balancers.excess_mtl import ExcessMTL
from keras_mtl.balancers.famo import FAMO
from keras_mtl.balancers.fairgrad import FairGrad
from keras_mtl.balancers.gls import GLS
from keras_mtl.balancers.graddrop import GradDrop
from keras_mtl.balancers.gradnorm import GradNorm
from keras_mtl.balancers.gradvac import GradVac
from keras_mtl.balancers.imtl import IMTL
from keras_mtl.balancers.imtl import IMTLG
from keras_mtl.balancers.imtl import IMTLL
from keras_mtl.balancers.mgda import MGDA
from keras_mtl.balancers.moco import MoCo
from keras_mtl.balancers.nash_mtl import NashMTL
from keras_mtl.balancers.pcgrad import PCGrad
from keras_mtl.balancers.rlw import RLW
from keras_mtl.balancers.static import StaticWeights
from keras_mtl.balancers.stch import STCH
from keras_mtl.balancers.uncertainty import UncertaintyWeighting
from keras_mtl.balancers.upgrad import UPGrad

# Registered names -> classes. Names are lower-case, as users type them.
ALL_BALANCERS = {
    "equal": EqualWeights,
    "equal_weights": EqualWeights,
    "static": StaticWeights,
    "static_weights": StaticWeights,
    "uncertainty": UncertaintyWeighting,
    "uncertainty_weighting": UncertaintyWeighting,
    "gradnorm": GradNorm,
    "imtl": IMTL,
    "imtl_g": IMTLG,
    "imtl_l": IMTLL,
    "mgda": MGDA,
    "mgda_ub": MGDA,
    "pcgrad": PCGrad,
    "dwa": DWA,
    "gls": GLS,
    "rlw": RLW,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "cagrad": CAGrad,
    "nash_mtl": NashMTL,
    "nashmtl": NashMTL,
    "aligned_mtl": AlignedMTL,
    "alignedmtl": AlignedMTL,
    "famo": FAMO,
    "fairgrad": FairGrad,
    "graddrop": GradDrop,
    "gradvac": GradVac,
    "stch": STCH,
    "db_mtl": DBMTL,
    "dbmtl": DBMTL,
    "moco": MoCo,
    "excess_mtl": ExcessMTL,
    "excessmtl": ExcessMTL,
}


def distinct_names():
    """The first registered name of each balancer class, in registry order."""
    names, classes = [], set()
    for name, cls in ALL_BALANCERS.items():
        if cls not in classes:
            classes.add(cls)
            names.append(name)
    return names


def serialize(balancer):
    return keras.saving.serialize_keras_object(balancer)


def deserialize(config):
    name = config.get("class_name")
    cls = ALL_BALANCERS.get(str(name).lower()) or {
        c.__name__: c for c in ALL_BALANCERS.values()
    }.get(name)
    if cls is None:
        return keras.saving.deserialize_keras_object(config)
    return cls.from_config(config.get("config", {}))


def get(identifier):
    """Resolves a balancer from an instance, a name or a config dict.

    Raises:
        ValueError: for an unknown name or an identifier of another type.
    """
    if identifier is None:
        return EqualWeights()
    if isinstance(identifier, Balancer):
        return identifier
    if isinstance(identifier, str):
        cls = ALL_BALANCERS.get(identifier.lower())
        if cls is None:
            raise ValueError(
                f"Unknown balancer name: '{identifier}'. Known names: "
                f"{sorted(ALL_BALANCERS)}."
            )
        return cls()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(
        f"Could not interpret balancer identifier: {identifier!r}. Expected a "
        "Balancer instance, a registered name or a config dict."
    )
