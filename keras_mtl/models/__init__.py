"""Architectures from the papers, built from Keras / keras-cv parts."""

# Paper architectures (issue 7): trunks, heads and gin-configurable factories.
from keras_mtl.models.heads import ConvBNAct
from keras_mtl.models.heads import conv_head
from keras_mtl.models.heads import dense_head
from keras_mtl.models.mtfl_cnn import ConvStackCNN
from keras_mtl.models.mtfl_cnn import mtfl_cnn_multitask
from keras_mtl.models.resnet18 import ResidualBlock
from keras_mtl.models.resnet18 import ResNet
from keras_mtl.models.resnet18 import resnet18_multitask
from keras_mtl.models.segnet import MaxPoolingWithArgmax2D
from keras_mtl.models.segnet import MaxUnpooling2D
from keras_mtl.models.segnet import SegNet
from keras_mtl.models.segnet import segnet_multitask
from keras_mtl.models.thin_resnet import ResNetFCN
from keras_mtl.models.thin_resnet import thin_resnet_multitask
from keras_mtl.models.se_resnet import SEBottleneck
from keras_mtl.models.se_resnet import SEResNetDeepLabEncoder
from keras_mtl.models.se_resnet import astmt_deeplab
from keras_mtl.models.se_resnet import shared_deeplab
from keras_mtl.models.lenet import lenet_encoder
from keras_mtl.models.lenet import lenet_multitask
# Expert-based architectures (issue 14): MMoE, CGC, PLE, DSelect-k.
from keras_mtl.models.experts import DSelectKGate
from keras_mtl.models.experts import DSelectKHead
from keras_mtl.models.experts import GatedExpertHead
from keras_mtl.models.experts import ProgressiveLayeredExtraction
from keras_mtl.models.experts import SharedExperts
from keras_mtl.models.experts import cgc_multitask
from keras_mtl.models.experts import dselect_k_multitask
from keras_mtl.models.experts import mlp_expert
from keras_mtl.models.experts import mmoe_multitask
from keras_mtl.models.experts import ple_multitask
from keras_mtl.models.experts import resnet_expert
# Multi-task architectures (issue 14): MTAN, Cross-stitch, learning to branch.
from keras_mtl.models.mtan import MTANBackbone
from keras_mtl.models.mtan import MTANHead
from keras_mtl.models.mtan import mtan_multitask
from keras_mtl.models.cross_stitch import CrossStitch
from keras_mtl.models.cross_stitch import cross_stitch_multitask
from keras_mtl.models.ltb import LearnToBranch
from keras_mtl.models.ltb import ltb_multitask
# The architecture registry (`--arch`): one name per architecture builder.
from keras_mtl.models.architectures import architecture_names
from keras_mtl.models.architectures import get_architecture
from keras_mtl.models.architectures import register_architecture
