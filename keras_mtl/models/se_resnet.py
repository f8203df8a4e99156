"""SE-ResNet + DeepLabV3+ for attentive single-tasking, and the shared baseline.

The encoder is one task-conditioned layer: an SE-ResNet backbone (bottleneck
blocks, dilated last stage, output stride 16), keras-cv's ASPP
(`SpatialPyramidPooling`) and the DeepLabV3+ decoder (bilinear x4 upsampling,
concatenation with 48-channel low-level features, two 3x3 convolutions).
Task SE can modulate the backbone ("enc"), the decoder ("dec") or both; with
task modulation the modulated part uses task batch normalisation, and
residual adapters can be added in parallel to every 3x3 convolution of the
backbone. Each head is a 1x1 convolution plus x4 bilinear upsampling, so the
encoder output z (stride 4) is the interface between shared and task
processing, where the gradient discriminator looks at the task gradients.
"""

import gin
import keras
import tensorflow as tf

from keras_mtl.layers.residual_adapter import ResidualAdapter
from keras_mtl.layers.task_batch_norm import TaskBatchNormalization
from keras_mtl.layers.task_conditioned import TaskConditionedLayer
from keras_mtl.layers.task_se import TaskSqueezeExcite

_SE_MODES = (None, "shared", "task")


def _call(layer, x, task, training):
    if getattr(layer, "task_conditioned", False):
        return layer(x, task=task, training=training)
    return layer(x, training=training)


def _norm(task_specific, num_tasks, name):
    if task_specific:
        return TaskBatchNormalization(num_tasks, name=name)
    return keras.layers.BatchNormalization(name=name)


@keras.saving.register_keras_serializable(package="keras_mtl")
class SEBottleneck(TaskConditionedLayer):
    """ResNet bottleneck (1x1, 3x3, 1x1 x4) with shared or task SE.

    The SE block sits after the last batch normalisation, before the
    residual addition. `se="task"` uses `TaskSqueezeExcite` and task batch
    normalisation (when `task_batch_norm`); `residual_adapters` wraps the 3x3
    convolution in a `ResidualAdapter`. Without any task-specific part the
    block is a plain shared layer (its `task_conditioned` is False).

    Args:
        filters: bottleneck width; the block outputs 4 * filters channels.
        num_tasks: number of tasks T.
        strides: stride of the 3x3 convolution. Defaults to `1`.
        dilation_rate: dilation of the 3x3 convolution. Defaults to `1`.
        se: `None`, `"shared"` (keras-cv SE) or `"task"`. Defaults to `"shared"`.
        se_ratio: SE reduction ratio. Defaults to `16`.
        task_batch_norm: task BN when the block is task-modulated. Defaults
            to `True`.
        residual_adapters: add a task residual adapter to the 3x3 conv.
            Defaults to `False`.

    Reference:
        Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR
        2019, Fig. 3; Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018.
    """

    def __init__(self, filters, num_tasks=1, strides=1, dilation_rate=1, se="shared",
                 se_ratio=16, task_batch_norm=True, residual_adapters=False, **kwargs):
        super().__init__(num_tasks=num_tasks, **kwargs)
        if se not in _SE_MODES:
            raise ValueError(
                "Invalid value received for argument `se`. Expected one of "
                f"{_SE_MODES}. Received: se={se!r}"
            )
        self.filters = filters
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.se = se
        self.se_ratio = se_ratio
        self.task_batch_norm = task_batch_norm
        self.residual_adapters = residual_adapters
        modulated = se == "task" or residual_adapters
        self.task_conditioned = bool(modulated)
        tbn = modulated and task_batch_norm
        out = 4 * filters
        self.conv1 = keras.layers.Conv2D(filters, 1, use_bias=False, name="conv1")
        self.bn1 = _norm(tbn, num_tasks, "bn1")
        conv2 = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                                    dilation_rate=dilation_rate, use_bias=False,
                                    name="conv2")
        if residual_adapters:
            conv2 = ResidualAdapter(num_tasks, layer=conv2, name="conv2_adapter")
        self.conv2 = conv2
        self.bn2 = _norm(tbn, num_tasks, "bn2")
        self.conv3 = keras.layers.Conv2D(out, 1, use_bias=False, name="conv3")
        self.bn3 = _norm(tbn, num_tasks, "bn3")
        if se == "task":
            self.se_block = TaskSqueezeExcite(num_tasks, ratio=se_ratio, name="task_se")
        elif se == "shared":
            import keras_cv

            self.se_block = keras_cv.layers.SqueezeAndExcite2D(
                out, bottleneck_filters=max(1, out // se_ratio), name="se")
        else:
            self.se_block = None
        self.shortcut_conv = None
        self.shortcut_bn = None
        self._out = out

    def build(self, input_shape):
        if int(input_shape[-1]) != self._out or self.strides != 1:
            self.shortcut_conv = keras.layers.Conv2D(
                self._out, 1, strides=self.strides, use_bias=False, name="shortcut")
            self.shortcut_bn = _norm(
                self.task_conditioned and self.task_batch_norm, self.num_tasks,
                "shortcut_bn")
        self.built = True

    def call(self, inputs, task=None, training=None):
        x = keras.activations.relu(_call(self.bn1, self.conv1(inputs), task, training))
        x = _call(self.conv2, x, task, training)
        x = keras.activations.relu(_call(self.bn2, x, task, training))
        x = _call(self.bn3, self.conv3(x), task, training)
        if self.se_block is not None:
            x = _call(self.se_block, x, task, training)
        shortcut = inputs
        if self.shortcut_conv is not None:
            shortcut = _call(self.shortcut_bn, self.shortcut_conv(inputs), task, training)
        return keras.activations.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        s = self.strides
        h = None if h is None else -(-h // s)
        w = None if w is None else -(-w // s)
        return (input_shape[0], h, w, self._out)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
            "se": self.se,
            "se_ratio": self.se_ratio,
            "task_batch_norm": self.task_batch_norm,
            "residual_adapters": self.residual_adapters,
        }


@keras.saving.register_keras_serializable(package="keras_mtl")
class SEResNetDeepLabEncoder(TaskConditionedLayer):
    """SE-ResNet backbone + ASPP + DeepLabV3+ decoder, task SE where asked.

    Output: the decoder features z (batch, H/4, W/4, decoder_filters).

    Args:
        num_tasks: number of tasks T.
        stem_filters: channels of the 7x7 stem. Defaults to `64`.
        stage_filters: bottleneck widths of the 4 stages. Defaults to
            `(64, 128, 256, 512)`.
        stage_blocks: blocks per stage; `(2, 2, 2, 2)` is ResNet-26.
        se_encoder: `"task"`, `"shared"` or `None`: SE in the backbone.
            Defaults to `"task"`.
        se_decoder: task SE after each decoder convolution. Defaults to `True`.
        task_batch_norm: task BN in the task-modulated parts. Defaults to `True`.
        residual_adapters: adapters on the backbone's 3x3 convs. Defaults to `False`.
        se_ratio: SE reduction ratio r. Defaults to `16`.
        aspp_filters: ASPP channels. Defaults to `256`.
        aspp_rates: ASPP dilation rates (output stride 16). Defaults to `(6, 12, 18)`.
        low_level_filters: channels of the low-level projection. Defaults to `48`.
        decoder_filters: channels of the decoder convolutions. Defaults to `256`.

    Call arguments:
        inputs: images (batch, H, W, C), H and W divisible by 16.
        task: int tensor (batch,) of task indices (needed when any part is
            task-modulated).

    Reference:
        Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR
        2019; Chen et al., "Encoder-Decoder with Atrous Separable Convolution
        for Semantic Image Segmentation" (DeepLabV3+), ECCV 2018.
    """

    def __init__(self, num_tasks, stem_filters=64, stage_filters=(64, 128, 256, 512),
                 stage_blocks=(2, 2, 2, 2), se_encoder="task", se_decoder=True,
                 task_batch_norm=True, residual_adapters=False, se_ratio=16,
                 aspp_filters=256, aspp_rates=(6, 12, 18), low_level_filters=48,
                 decoder_filters=256, **kwargs):
        super().__init__(num_tasks=num_tasks, **kwargs)
        if se_encoder not in _SE_MODES:
            raise ValueError(
                "Invalid value received for argument `se_encoder`. Expected one "
                f"of {_SE_MODES}. Received: se_encoder={se_encoder!r}"
            )
        if len(stage_filters) != 4 or len(stage_blocks) != 4:
            raise ValueError(
                "Expected 4 stages in `stage_filters` and `stage_blocks`. "
                f"Received: stage_filters={stage_filters}, stage_blocks={stage_blocks}"
            )
        import keras_cv

        self.stem_filters = stem_filters
        self.stage_filters = tuple(stage_filters)
        self.stage_blocks = tuple(stage_blocks)
        self.se_encoder = se_encoder
        self.se_decoder = bool(se_decoder)
        self.task_batch_norm = bool(task_batch_norm)
        self.residual_adapters = bool(residual_adapters)
        self.se_ratio = se_ratio
        self.aspp_filters = aspp_filters
        self.aspp_rates = tuple(aspp_rates)
        self.low_level_filters = low_level_filters
        self.decoder_filters = decoder_filters

        self.stem_conv = keras.layers.Conv2D(stem_filters, 7, strides=2, padding="same",
                                             use_bias=False, name="stem_conv")
        self.stem_bn = keras.layers.BatchNormalization(name="stem_bn")
        self.stem_pool = keras.layers.MaxPooling2D(3, strides=2, padding="same")
        self.blocks = []
        strides, dilations = (1, 2, 2, 1), (1, 1, 1, 2)
        for s, (filters, n) in enumerate(zip(self.stage_filters, self.stage_blocks)):
            for b in range(n):
                self.blocks.append(SEBottleneck(
                    filters, num_tasks=num_tasks,
                    strides=strides[s] if b == 0 else 1,
                    dilation_rate=dilations[s], se=se_encoder, se_ratio=se_ratio,
                    task_batch_norm=task_batch_norm,
                    residual_adapters=residual_adapters,
                    name=f"stage{s + 1}_block{b + 1}"))
        self.low_level_index = self.stage_blocks[0] - 1
        self.aspp = keras_cv.layers.SpatialPyramidPooling(
            dilation_rates=list(self.aspp_rates), num_channels=aspp_filters, name="aspp")
        self.upsample = keras.layers.UpSampling2D(4, interpolation="bilinear")
        dec_tbn = self.se_decoder and self.task_batch_norm
        self.low_conv = keras.layers.Conv2D(low_level_filters, 1, use_bias=False,
                                            name="low_level_conv")
        self.low_bn = _norm(dec_tbn, num_tasks, "low_level_bn")
        self.dec_convs, self.dec_bns, self.dec_se = [], [], []
        for i in range(2):
            self.dec_convs.append(keras.layers.Conv2D(
                decoder_filters, 3, padding="same", use_bias=False, name=f"decoder_conv{i + 1}"))
            self.dec_bns.append(_norm(dec_tbn, num_tasks, f"decoder_bn{i + 1}"))
            if self.se_decoder:
                self.dec_se.append(TaskSqueezeExcite(num_tasks, ratio=se_ratio,
                                                     name=f"decoder_task_se{i + 1}"))
        self.task_conditioned = (
            se_encoder == "task" or self.residual_adapters or self.se_decoder)

    def build(self, input_shape):
        # Creates every sub-layer's variables by one pass on a dummy batch
        # (the variable shapes do not depend on H and W), so that a model
        # rebuilt from its config can load its weights before any real call.
        h = input_shape[1] or 32
        w = input_shape[2] or 32
        dummy = tf.zeros((1, h, w, int(input_shape[-1])))
        self.call(dummy, task=tf.zeros((1,), "int32"), training=False)
        self.built = True

    def call(self, inputs, task=None, training=None):
        if self.task_conditioned and task is None:
            raise ValueError(
                f"'{self.name}' has task-specific layers: call it with `task=` "
                "(an int32 vector with the task index of every example)."
            )
        return self.task_suffix(self._prefix(inputs, task, training), task=task,
                                training=training)

    @property
    def has_shared_prefix(self):
        """True when the backbone and ASPP are task-independent (decoder-only SE).

        Then `task_suffix(fold(shared_prefix(x)))` equals `call(fold(x))`, and
        a model can run the backbone once for all tasks and fold only the
        decoder (the paper's "one forward pass of the encoder").
        """
        return self.se_encoder != "task" and not self.residual_adapters

    def shared_prefix(self, inputs, training=None):
        """Backbone + ASPP, run once: returns (upsampled ASPP, low-level features)."""
        if not self.has_shared_prefix:
            raise ValueError(
                f"'{self.name}' has task-specific layers in its backbone "
                f"(se_encoder={self.se_encoder!r}, residual_adapters="
                f"{self.residual_adapters}): it has no shared prefix."
            )
        return self._prefix(inputs, None, training)

    def _prefix(self, inputs, task, training):
        x = keras.activations.relu(self.stem_bn(self.stem_conv(inputs), training=training))
        x = self.stem_pool(x)
        low = None
        for i, block in enumerate(self.blocks):
            x = _call(block, x, task, training)
            if i == self.low_level_index:
                low = x
        return self.upsample(self.aspp(x, training=training)), low

    def task_suffix(self, features, task=None, training=None):
        """The DeepLabV3+ decoder on `shared_prefix` features (task SE if asked)."""
        x, low = features
        low = keras.activations.relu(_call(self.low_bn, self.low_conv(low), task, training))
        x = keras.ops.concatenate([x, low], axis=-1)
        for i in range(2):
            x = _call(self.dec_bns[i], self.dec_convs[i](x), task, training)
            x = keras.activations.relu(x)
            if self.se_decoder:
                x = self.dec_se[i](x, task=task, training=training)
        return x

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        h = None if h is None else h // 4
        w = None if w is None else w // 4
        return (input_shape[0], h, w, self.decoder_filters)

    def get_config(self):
        return {
            **super().get_config(),
            "stem_filters": self.stem_filters,
            "stage_filters": self.stage_filters,
            "stage_blocks": self.stage_blocks,
            "se_encoder": self.se_encoder,
            "se_decoder": self.se_decoder,
            "task_batch_norm": self.task_batch_norm,
            "residual_adapters": self.residual_adapters,
            "se_ratio": self.se_ratio,
            "aspp_filters": self.aspp_filters,
            "aspp_rates": self.aspp_rates,
            "low_level_filters": self.low_level_filters,
            "decoder_filters": self.decoder_filters,
        }


TINY = dict(stem_filters=8, stage_filters=(4, 8, 8, 8), stage_blocks=(1, 1, 1, 1),
            se_ratio=4, aspp_filters=16, aspp_rates=(1, 2), low_level_filters=8,
            decoder_filters=16)
"""A tiny configuration for tests and benchmarks (inputs of 32 x 32)."""


def _heads(tasks, upsample=4):
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            "Invalid value received for argument `tasks`. Expected a non-empty "
            f"dict {{task name: output channels}}. Received: tasks={tasks!r}"
        )
    return {
        name: keras.Sequential([
            keras.layers.Conv2D(channels, 1, name=f"{name}_classifier"),
            keras.layers.UpSampling2D(upsample, interpolation="bilinear"),
        ], name=f"head_{name}")
        for name, channels in tasks.items()
    }


@gin.configurable
def astmt_deeplab(tasks, se_encoder=True, se_decoder=True, residual_adapters=False,
                  task_batch_norm=True, adversarial=False, discriminator_weight=0.1,
                  discriminator_hidden_units=64, config=None):
    """Attentive single-tasking SE-ResNet DeepLabV3+ multi-task model.

    Args:
        tasks: dict {task name: output channels}, in head order.
        se_encoder: task SE in the backbone (else the backbone keeps shared
            SE, the paper's "decoder only" variant). Defaults to `True`.
        se_decoder: task SE in the decoder. Defaults to `True`.
        residual_adapters: task residual adapters in the backbone. Defaults
            to `False`.
        task_batch_norm: task BN in the modulated parts. Defaults to `True`.
        adversarial: add a `GradientDiscriminator` on the task gradients at
            the decoder output. Defaults to `False`.
        discriminator_weight: w_d; the paper states 0.1, the authors' code
            defaults to 0.01. Defaults to `0.1`.
        discriminator_hidden_units: hidden 1x1 conv channels. Defaults to `64`.
        config: dict of `SEResNetDeepLabEncoder` size arguments (e.g.
            `TINY`); `None` is R-26 with the paper's DeepLabV3+ widths.

    Returns:
        An uncompiled `keras_mtl.MultiTaskModel`.

    Reference:
        Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR 2019.
    """
    from keras_mtl.layers.gradient_discriminator import GradientDiscriminator
    from keras_mtl.model import MultiTaskModel

    heads = _heads(tasks)
    encoder = SEResNetDeepLabEncoder(
        len(tasks), se_encoder="task" if se_encoder else "shared",
        se_decoder=se_decoder, task_batch_norm=task_batch_norm,
        residual_adapters=residual_adapters, name="se_resnet_deeplab",
        **dict(config or {}))
    discriminator = None
    if adversarial:
        discriminator = GradientDiscriminator(
            len(tasks), hidden_units=discriminator_hidden_units, name="discriminator")
    return MultiTaskModel(encoder=encoder, heads=heads, discriminator=discriminator,
                          discriminator_weight=discriminator_weight, name="astmt_deeplab")


@gin.configurable
def shared_deeplab(tasks, adversarial=False, discriminator_weight=0.1,
                   discriminator_hidden_units=64, config=None):
    """The multi-task baseline: everything shared (SE-ResNet with shared SE,
    ASPP, decoder), T 1x1 heads; one encoder pass for all tasks.

    Args:
        tasks: dict {task name: output channels}, in head order.
        adversarial: add a `GradientDiscriminator` (the paper's "A" without
            modulation). Defaults to `False`.
        discriminator_weight: w_d. Defaults to `0.1`.
        discriminator_hidden_units: hidden 1x1 conv channels. Defaults to `64`.
        config: dict of `SEResNetDeepLabEncoder` size arguments.

    Returns:
        An uncompiled `keras_mtl.MultiTaskModel`.

    Reference:
        Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR
        2019, Table 3 (SE-bb multi-task baseline).
    """
    from keras_mtl.layers.gradient_discriminator import GradientDiscriminator
    from keras_mtl.model import MultiTaskModel

    heads = _heads(tasks)
    encoder = SEResNetDeepLabEncoder(
        len(tasks), se_encoder="shared", se_decoder=False, task_batch_norm=False,
        residual_adapters=False, name="se_resnet_deeplab", **dict(config or {}))
    discriminator = None
    if adversarial:
        discriminator = GradientDiscriminator(
            len(tasks), hidden_units=discriminator_hidden_units, name="discriminator")
    return MultiTaskModel(encoder=encoder, heads=heads, discriminator=discriminator,
                          discriminator_weight=discriminator_weight, name="shared_deeplab")
